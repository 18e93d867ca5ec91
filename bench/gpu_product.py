"""The product's own path for `bench/gpu.py`: `PipelineManager` with the production settings.

The bench builds each family's full-size random-weight pipeline once (bench/configs/), saves it
to a local folder and registers that folder through `EXTRA_MODELS`, exactly as an operator
would add a model; from there the product loads it (`from_pretrained`, its dtype, memory mode
and tuned path from generation/tuning.py) and runs each job through `PipelineManager.run`. Only
the seed's recipe (the baseline) is still assembled inside the bench.

Recipes (each a manager of its own, one model resident at a time):

- ``production``: the settings' defaults (the tuned path, ``MEMORY_MODE=auto``, ``COMPILE=off``);
- ``lowmem``: the same with ``MEMORY_MODE=offload``, the product's mode for small cards;
- ``compile``: the same with ``COMPILE=<mode>``, compiled and warmed up at load.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PIPELINES = {"damo": "TextToVideoSDPipeline", "sd15": "StableDiffusionPipeline", "wan": "WanPipeline"}
#: what the catalog says of Wan (frames 4k+1, sizes by 16, bf16 preferred)
FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    "wan": {"frame_rule": "4k+1", "size_multiple": 16, "dtype": "bf16"}
}


@dataclasses.dataclass
class ProductJob:
    """One `PipelineManager.run` as timed (same fields as the baseline's job)."""

    job_s: float
    unet_step_s: float | None
    unet_calls: int
    #: uint8 (frames, height, width, 3)
    frames: Any


def model_id(family: str) -> str:
    return f"bench-{family}"


def save_family(pipe: Any, folder: Path) -> Path:
    """The built pipeline as a local model folder, the way `from_pretrained` reads one."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder


def extra_model(family: str, folder: Path, scenario: Any) -> dict[str, Any]:
    """The `EXTRA_MODELS` entry for a saved family, with the family's first scenario as its
    default size (what COMPILE warms up on)."""
    fields: dict[str, Any] = {
        "repo_id": str(folder),
        "pipeline": PIPELINES[family],
        "kind": "video" if scenario.frames else "image",
        "default_width": scenario.width,
        "default_height": scenario.height,
        "min_width": 64,
        "min_height": 64,
        "max_width": 1024,
        "max_height": 1024,
        "default_guidance": scenario.guidance,
        "variant": None,
        "description": "bench: full-size architecture, random weights",
    }
    if scenario.frames:
        fields.update(default_frames=scenario.frames, min_frames=1, max_frames=129)
    fields.update(FAMILY_FIELDS.get(family, {}))
    return fields


def product_settings(
    models: dict[str, dict[str, Any]],
    *,
    cuda: bool,
    memory_mode: str = "auto",
    compile_mode: str = "off",
    dtype: str = "auto",
) -> Any:
    """The production settings (every tuned-path default), with the bench's local models."""
    from generation.settings import GenerationSettings

    return GenerationSettings(
        _env_file=None,  # type: ignore[call-arg]
        device="cuda" if cuda else "cpu",
        dtype=dtype,
        memory_mode=memory_mode,
        compile=compile_mode,
        extra_models=models,
        hf_offline=True,
        safety_checker=False,
        max_resident_models=1,
    )


class ProductRig:
    """One recipe of the product: a `PipelineManager` over the bench's saved models."""

    def __init__(self, *, recipe: str, settings: Any, cuda: bool) -> None:
        from generation.pipelines import PipelineManager

        self.recipe = recipe
        self.cuda = cuda
        self.manager = PipelineManager(settings)
        self.load_s: dict[str, float] = {}

    def load(self, family: str) -> float:
        """Seconds `PipelineManager.load` took (a compile warm-up included); 0 when resident."""
        model = model_id(family)
        if model in self.manager.loaded_models():
            return 0.0
        t0 = time.perf_counter()
        self.manager.load(model)
        self.load_s[family] = round(time.perf_counter() - t0, 3)
        return self.load_s[family]

    def settings_record(self, family: str) -> dict[str, Any]:
        """What the product chose, as the JSON line reports it (from `device_info()`)."""
        info = self.manager.device_info()
        tuned = info["tuning"]["models"].get(model_id(family), {})
        return {
            "path": "PipelineManager",
            "dtype": _dtype_of(self.manager, family),
            "memory_mode": self.manager.memory_mode(model_id(family)),
            "attention": tuned.get("attention"),
            "fused_qkv": tuned.get("fused_qkv"),
            "channels_last": tuned.get("channels_last"),
            "compile": tuned.get("compile"),
            "compile_s": tuned.get("compile_s"),
            "fallbacks": tuned.get("fallbacks"),
            "tf32": info["tuning"]["tf32"],
            "load_s": self.load_s.get(family),
        }

    def request(self, family: str, scenario: Any, *, steps: int, seed: int, count: int = 1) -> Any:
        from bench.gpu import PROMPT
        from generation.params import validate_request

        spec = self.manager.spec(model_id(family))
        raw: dict[str, Any] = {
            "prompt": PROMPT,
            "seed": seed,
            "steps": steps,
            "guidance": scenario.guidance,
            "width": scenario.width,
            "height": scenario.height,
        }
        if scenario.frames:
            raw["frames"] = scenario.frames
        request = validate_request(spec.kind, raw, spec)
        # batches beyond what a member may ask (4) are the throughput curve's, not a member's
        return dataclasses.replace(request, count=count) if count > 1 else request

    def run_job(self, family: str, scenario: Any, *, steps: int, seed: int, count: int = 1) -> ProductJob:
        """One job through `PipelineManager.run`, with the step times the baseline also records."""
        import numpy as np
        import torch

        marks: list[float] = []

        def on_step(_info: Any) -> None:
            if self.cuda and not marks:  # the manager synchronises at the last step itself
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        request = self.request(family, scenario, steps=steps, seed=seed, count=count)
        self.manager.step_hooks.append(on_step)
        try:
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            output = self.manager.run(request)
            if self.cuda:
                torch.cuda.synchronize()
            job_s = time.perf_counter() - t0
        finally:
            self.manager.step_hooks.remove(on_step)
        step_s = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None
        pictures = (
            output.frames if output.frames is not None else [np.asarray(im) for im in output.images or []]
        )
        return ProductJob(job_s=job_s, unet_step_s=step_s, unet_calls=len(marks), frames=np.stack(pictures))

    def close(self) -> None:
        self.manager.close()


def _dtype_of(manager: Any, family: str) -> str:
    from bench.gpu import dtype_name

    return dtype_name(manager.dtype_for(manager.spec(model_id(family))))


class Products:
    """The product's managers for one run: one per recipe, over the current family's saved model.

    A family's pipeline is saved once (from the baseline's build, so both time the same weights)
    under `root`; switching family closes the managers of the previous one.
    """

    def __init__(
        self,
        *,
        root: Path,
        cuda: bool,
        dtype: str,
        pipe_for: Callable[[str], Any],
        first_scenario: dict[str, Any],
    ) -> None:
        self.root = root
        self.cuda = cuda
        self.dtype = dtype
        self.pipe_for = pipe_for
        self.first_scenario = first_scenario
        self.folders: dict[str, Path] = {}
        self.save_s: dict[str, float] = {}
        self.rigs: dict[str, tuple[str, ProductRig]] = {}

    def folder(self, family: str) -> Path:
        if family not in self.folders:
            t0 = time.perf_counter()
            self.folders[family] = save_family(self.pipe_for(family), self.root / family)
            self.save_s[family] = round(time.perf_counter() - t0, 2)
        return self.folders[family]

    def rig(self, recipe: str, family: str, *, compile_mode: str = "off") -> ProductRig:
        held = self.rigs.get(recipe)
        if held is not None and held[0] == family:
            return held[1]
        self.close(recipe)
        models = {model_id(family): extra_model(family, self.folder(family), self.first_scenario[family])}
        settings = product_settings(
            models,
            cuda=self.cuda,
            memory_mode="offload" if recipe == "lowmem" else "auto",
            compile_mode=compile_mode,
            dtype=self.dtype,
        )
        rig = ProductRig(recipe=recipe, settings=settings, cuda=self.cuda)
        self.rigs[recipe] = (family, rig)
        return rig

    def close(self, recipe: str | None = None) -> None:
        for name in [recipe] if recipe else list(self.rigs):
            held = self.rigs.pop(name, None) if name else None
            if held is not None:
                held[1].close()

    def cleanup(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


def batch_curve(
    rig: ProductRig,
    family: str,
    scenario: Any,
    *,
    sizes: tuple[int, ...],
    steps: int,
    seed: int,
    budget: Any,
) -> dict[str, Any]:
    """Images per second at each batch size: one pipeline call with a prompt and a generator per
    image, through `PipelineManager.run` and the tuned pipeline (a warm-up call per size first)."""
    rows: dict[str, Any] = {}
    for size in sizes:
        if budget.left() <= 0:
            rows[str(size)] = {"status": "skipped_budget"}
            continue
        try:
            rig.run_job(family, scenario, steps=1, seed=seed, count=size)  # new shapes: warm up
            job = rig.run_job(family, scenario, steps=steps, seed=seed, count=size)
        except Exception as exc:  # an OOM at batch 8 must not cost the figures of 1, 2 and 4
            log.warning("batch %d failed: %s", size, exc)
            rows[str(size)] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        assert job.frames.shape[0] == size, job.frames.shape
        rows[str(size)] = {
            "status": "ok",
            "job_s": round(job.job_s, 4),
            "images_per_s": round(size / job.job_s, 3),
            "unet_step_s": round(job.unet_step_s, 5) if job.unet_step_s else None,
        }
    single = rows.get("1", {}).get("images_per_s")
    for row in rows.values():
        if single and row.get("images_per_s"):
            row["speedup_vs_batch_1"] = round(row["images_per_s"] / single, 3)
    return {
        "kind": "batch",
        "scenario": scenario.name,
        "steps": steps,
        "sizes": list(sizes),
        "batches": rows,
        "settings": rig.settings_record(family),
    }
