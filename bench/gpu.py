"""`python -m bench gpu`: the one prepared benchmark for a lent GPU (see bench/gpu.sh).

A lent card is rare and short (minutes, no hub access, no package registry), so this script
builds the *full-size* SD 1.5, damo text-to-video and Wan architectures from the configs kept in
bench/configs/ with random weights (timing does not depend on the weights) and times, on the
same card in one run:

- the seed's recipe (the baseline): the plain diffusers pipeline, fp16, `enable_model_cpu_offload`,
  the default attention processor, assembled here;
- the product: the same weights saved to a local folder, registered through `EXTRA_MODELS` and
  run by `PipelineManager` (bench/gpu_product.py) with the production settings, i.e. whatever
  generation/tuning.py does by default (SDPA, fused QKV, channels_last, TF32) and the memory
  mode `auto` picks; its `MEMORY_MODE=offload` as the low-memory recipe (peak VRAM); and its
  `COMPILE=<mode>` (compiled and warmed up at load), reported apart with the jobs it takes to
  pay back;
- SD 1.5 images per second at batch 1, 2, 4 and 8 through the product's tuned pipeline.

Each scenario gets one JSON line through `bench.common.emit("gpu", …)`: seconds per job and per
step, speed-up over the seed's recipe, and the ratio to the FLOP floor (UNet FLOPs of one
forward at batch 2, as classifier-free guidance runs it, counted with
`torch.utils.flop_counter` on the meta device, over the card's dense fp16 peak). A final
summary line follows. A `--budget-s` guard skips what no longer fits and always prints what
it has, so one device call of about five minutes returns figures even when the card is slow.

Order, most wanted first: damo 256x256x16 (the bot's default video, and the issue's targets),
its compiled UNet, SD 1.5 512x512, zeroscope 576x320x24, damo 256x256x64, then Wan 2.1 1.3B at
its card's 832x480x81 (a transformer: the "UNet" figures are its denoiser's, the seed's recipe is
the card's, model offload in half precision, and there is no attention processor to swap or QKV to
fuse). The production dtype is chosen on a family's first scenario and reused for its larger ones.

`--dry-run` runs the same code on CPU with scaled-down versions of the same architectures and
2 steps; the test suite runs it so the script never rots between lent cards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.gpu_product import ProductRig, Products, batch_curve

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GIB = 1024**3
PROMPT = "a red panda surfing a wave at sunset, cinematic"

#: dense (no sparsity) fp16/bf16 tensor-core peak, TFLOP/s, by device name (first match wins)
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"h100.*pcie", 756.0),
    (r"h100", 989.0),  # SXM (the name says "80GB HBM3")
    (r"h200", 989.0),
    (r"a100", 312.0),
    (r"\bl4\b", 121.0),
    (r"\bt4\b", 65.0),
    (r"4090", 165.0),  # fp16 with fp32 accumulate
)

TARGET = (
    "damo 256x256x16: production >= 2x the seed's recipe, low-memory peak <= 8 GB; "
    "every scenario: UNet denoising within 2x of the FLOP floor"
)


def peak_tflops_for(device_name: str) -> float | None:
    """The card's dense fp16 peak from the table, or None for a card we have no figure for."""
    name = device_name.lower()
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, name):
            return tflops
    return None


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One timed configuration: a model family at one size."""

    name: str
    #: which folder of bench/configs/ and which pipeline: "damo" (video) or "sd15" (image)
    family: str
    width: int
    height: int
    #: 0 for an image
    frames: int = 0
    guidance: float = 7.5
    #: hard ceiling for the low-memory recipe's peak VRAM, where the issue sets one
    lowmem_limit_gb: float | None = None
    #: the scenario the speed-up target (production >= 2x seed) applies to
    speedup_target: float | None = None
    #: of the encoded clip, as the model's card publishes it
    fps: int = 8


FULL_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="damo-256x256x16", family="damo", width=256, height=256, frames=16, guidance=9.0,
        lowmem_limit_gb=8.0, speedup_target=2.0,
    ),
    Scenario(name="sd15-512x512", family="sd15", width=512, height=512, guidance=7.5),
    Scenario(name="zeroscope-576x320x24", family="damo", width=576, height=320, frames=24, guidance=9.0),
    Scenario(name="damo-256x256x64", family="damo", width=256, height=256, frames=64, guidance=9.0),
    Scenario(name="wan-832x480x81", family="wan", width=832, height=480, frames=81, guidance=5.0, fps=16),
)

#: the same scenarios scaled down for --dry-run on CPU (same names, so the logic is the same)
TINY_SIZES: dict[str, tuple[int, int, int]] = {
    "damo-256x256x16": (64, 64, 2),
    "sd15-512x512": (64, 64, 0),
    "zeroscope-576x320x24": (128, 64, 3),
    "damo-256x256x64": (64, 64, 4),
    "wan-832x480x81": (64, 64, 5),
}

#: scaled-down versions of the same architectures (same classes and block types)
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [32, 32, 32, 32],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "sample_size": 8,
    },
    "vae": {
        "block_out_channels": [8, 8, 16, 16],
        "norm_num_groups": 8,
        "layers_per_block": 1,
        "sample_size": 64,
    },
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
        "vocab_size": 1000,
    },
}

#: Wan's components take other keys: the same classes, scaled down
WAN_TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 32, "num_layers": 2,
                    "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 32},
    "vae": {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1},
    "text_encoder": {"d_model": 32, "d_ff": 37, "d_kv": 8, "num_heads": 4, "num_layers": 2,
                     "relative_attention_num_buckets": 8, "vocab_size": 1000},
}

UNET_CLASS = {"damo": "UNet3DConditionModel", "sd15": "UNet2DConditionModel"}
#: the denoiser of each family: (pipeline attribute, diffusers class)
DENOISER = {**{family: ("unet", cls) for family, cls in UNET_CLASS.items()},
            "wan": ("transformer", "WanTransformer3DModel")}


def scenarios_for(*, dry_run: bool, names: list[str] | None) -> list[Scenario]:
    chosen = [s for s in FULL_SCENARIOS if not names or s.name in names]
    if not dry_run:
        return chosen
    tiny = []
    for s in chosen:
        w, h, f = TINY_SIZES[s.name]
        tiny.append(Scenario(
            name=s.name, family=s.family, width=w, height=h, frames=f, guidance=s.guidance,
            lowmem_limit_gb=s.lowmem_limit_gb, speedup_target=s.speedup_target,
        ))
    return tiny


def load_config(family: str, component: str, *, tiny: bool) -> dict[str, Any]:
    """A published component config from bench/configs/, scaled down when `tiny`."""
    config = json.loads((CONFIG_DIR / family / f"{component}.json").read_text(encoding="utf-8"))
    if tiny:
        config.update((WAN_TINY_OVERRIDES if family == "wan" else TINY_OVERRIDES).get(component, {}))
    return config


# --------------------------------------------------------------------------- building


def clip_tokenizer() -> Any:
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges, built in memory.

    The real CLIP vocab is 49408 entries fetched from the hub, which the lent card cannot
    reach. Prompt content does not change the timing (sequences are padded to 77 tokens), so
    a vocabulary of the 256 byte symbols (plain and word-final) and the two specials is enough.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    except TypeError:  # transformers 4.x takes files, not objects
        folder = Path(tempfile.mkdtemp(prefix="bench-clip-tok-"))
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(
            vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), model_max_length=77
        )


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-unicode table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_pipeline(family: str, *, tiny: bool, device: str, dtype: Any) -> Any:
    """The real diffusers pipeline around random-weight components, initialised on `device`.

    Parameters are created directly on the target device (the GPU initialises 1.4 B
    parameters in well under a second, where the CPU would take minutes).
    """
    import diffusers
    import torch
    import transformers

    if family == "wan":
        return _build_wan(tiny=tiny, device=device, dtype=dtype)
    unet_cls = getattr(diffusers, UNET_CLASS[family])
    with torch.device(device):
        torch.manual_seed(0)
        unet = unet_cls.from_config(load_config(family, "unet", tiny=tiny))
        vae = diffusers.AutoencoderKL.from_config(load_config(family, "vae", tiny=tiny))
        text_config = transformers.CLIPTextConfig.from_dict(load_config(family, "text_encoder", tiny=tiny))
        text_encoder = transformers.CLIPTextModel(text_config)
    for model in (unet, vae, text_encoder):
        model.to(dtype=dtype).eval().requires_grad_(False)
    scheduler_config = load_config(family, "scheduler", tiny=tiny)
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "unet": unet,
        "scheduler": scheduler,
    }
    if family == "damo":
        pipe = diffusers.TextToVideoSDPipeline(**components)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build_wan(*, tiny: bool, device: str, dtype: Any) -> Any:
    """WanPipeline around a random-weight transformer, Wan VAE and UMT5 encoder (the 1.3B config)."""
    import diffusers
    import torch
    import transformers

    from generation.tiny_families import t5_tokenizer

    with torch.device(device):
        torch.manual_seed(0)
        config = load_config("wan", "transformer", tiny=tiny)
        transformer = diffusers.WanTransformer3DModel.from_config(config)
        vae = diffusers.AutoencoderKLWan.from_config(load_config("wan", "vae", tiny=tiny))
        text_config = transformers.UMT5Config.from_dict(load_config("wan", "text_encoder", tiny=tiny))
        text_encoder = transformers.UMT5EncoderModel(text_config)
    for model in (transformer, vae, text_encoder):
        model.to(dtype=dtype).eval().requires_grad_(False)
    scheduler = diffusers.UniPCMultistepScheduler.from_config(load_config("wan", "scheduler", tiny=tiny))
    pipe = diffusers.WanPipeline(
        tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_flops(family: str, scenario: Scenario, *, tiny: bool) -> int:
    """FLOPs of one UNet forward at batch 2 (classifier-free guidance), counted on meta tensors.

    Counting on the meta device costs well under a second for the full-size models and does
    not depend on which attention kernel the card picks; the plain attention processor makes
    the attention matmuls explicit, which count the same as SDPA's.
    """
    import diffusers
    import torch
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    if family == "wan":
        return _transformer_flops(scenario, tiny=tiny)
    config = load_config(family, "unet", tiny=tiny)
    with torch.device("meta"):
        unet = getattr(diffusers, UNET_CLASS[family]).from_config(config)
    unet.set_attn_processor(AttnProcessor())
    h, w = scenario.height // 8, scenario.width // 8
    shape = (2, 4, scenario.frames, h, w) if scenario.frames else (2, 4, h, w)
    sample = torch.empty(shape, device="meta")
    context = torch.empty(2, 77, config["cross_attention_dim"], device="meta")
    timestep = torch.full((2,), 999, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=context)
    return int(counter.get_total_flops())


def _transformer_flops(scenario: Scenario, *, tiny: bool) -> int:
    """Wan's transformer at batch 2 on meta tensors: latents 1/8 in space, 1/4 (+1) in time."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = load_config("wan", "transformer", tiny=tiny)
    with torch.device("meta"):
        transformer = diffusers.WanTransformer3DModel.from_config(config)
    frames = (scenario.frames - 1) // 4 + 1
    latent_size = (frames, scenario.height // 8, scenario.width // 8)
    sample = torch.empty(2, config["in_channels"], *latent_size, device="meta")
    context = torch.empty(2, 512, config["text_dim"], device="meta")
    timestep = torch.full((2,), 999, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(sample, timestep, encoder_hidden_states=context)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- recipes


class Rig:
    """One pipeline moved between the recipes without rebuilding it."""

    def __init__(self, *, pipe: Any, cuda: bool, build_s: float | None = None) -> None:
        self.pipe = pipe
        self.cuda = cuda
        self.build_s = build_s
        self.offloaded = False
        self.device = "cuda" if cuda else "cpu"

    @property
    def denoiser(self) -> Any:
        """The UNet, or the transformer of a transformer-era pipeline (Wan)."""
        return getattr(self.pipe, "unet", None) or self.pipe.transformer

    @property
    def has_unet(self) -> bool:
        return getattr(self.pipe, "unet", None) is not None

    def models(self) -> list[Any]:
        return [self.denoiser, self.pipe.vae, self.pipe.text_encoder]

    def _reset(self) -> None:
        import torch

        if self.offloaded:
            self.pipe.remove_all_hooks()
            self.offloaded = False
        self.pipe.vae.disable_slicing()
        if self.cuda:
            torch.backends.cudnn.benchmark = False

    def park(self) -> None:
        """Everything back on the CPU, so another pipeline has the card to itself."""
        self._reset()
        for model in self.models():
            model.to("cpu")
        _free_memory(self.cuda)

    def apply(self, recipe: str, dtype: Any, scenario: Scenario) -> dict[str, Any]:
        """Put the pipeline into `recipe`; returns the settings, as the JSON line reports them."""
        self._reset()
        if recipe != "seed":  # production and low-memory are the product's (bench/gpu_product.py)
            raise ValueError(f"unknown recipe {recipe!r}")
        settings = self._apply_offloaded(recipe, dtype)
        _free_memory(self.cuda)
        return settings

    def _apply_offloaded(self, recipe: str, dtype: Any) -> dict[str, Any]:
        """The seed's recipe (default attention) or our low-memory one (SDPA, VAE slicing), offloaded."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        pipe = self.pipe
        settings: dict[str, Any] = {"dtype": dtype_name(dtype)}
        for model in self.models():
            model.to(dtype=dtype)
        if self.has_unet:
            processor = AttnProcessor() if recipe == "seed" else AttnProcessor2_0()
            pipe.unet.set_attn_processor(processor)
            pipe.vae.set_attn_processor(processor)
        settings["attention"] = _attention_name(self.denoiser)
        if recipe == "lowmem":
            pipe.vae.enable_slicing()
        settings["vae_slicing"] = recipe == "lowmem"
        if self.cuda:
            pipe.enable_model_cpu_offload()
            self.offloaded = True
        else:
            for model in self.models():
                model.to("cpu")
        settings["model_cpu_offload"] = self.offloaded
        return settings

def _attention_name(model: Any) -> str:
    return type(next(iter(model.attn_processors.values()))).__name__


def _free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def dtype_name(dtype: Any) -> str:
    names = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}
    return names.get(str(dtype), str(dtype))


# --------------------------------------------------------------------------- timing


@dataclass
class Job:
    """One pipeline call as timed."""

    job_s: float
    #: mean seconds per denoising step (UNet at batch 2 + guidance + scheduler), from the step
    #: callbacks; excludes the text encoder, the VAE decode and offload transfers
    unet_step_s: float | None
    unet_calls: int
    #: uint8 (frames, height, width, 3)
    frames: Any


def run_job(rig: Rig, scenario: Scenario, *, steps: int, seed: int) -> Job:
    import numpy as np
    import torch

    pipe = rig.pipe
    marks: dict[int, float] = {}

    def on_step(i: int) -> None:
        last = len(pipe.scheduler.timesteps) - 1
        if i in (0, last):
            if rig.cuda:
                torch.cuda.synchronize()
            marks[i] = time.perf_counter()

    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "height": scenario.height,
        "width": scenario.width,
        "num_inference_steps": steps,
        "guidance_scale": scenario.guidance,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if scenario.frames:
        kwargs["num_frames"] = scenario.frames
    if scenario.family == "damo":  # TextToVideoSDPipeline has only the old-style callback
        kwargs.update(callback=lambda i, _t, _latents: on_step(i), callback_steps=1)
    else:

        def on_step_end(_pipe: Any, i: int, _t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(i)
            return callback_kwargs

        kwargs["callback_on_step_end"] = on_step_end
    if rig.cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = pipe(**kwargs)
    if rig.cuda:
        torch.cuda.synchronize()
    job_s = time.perf_counter() - t0
    calls = len(pipe.scheduler.timesteps)
    step_s = None
    if calls > 1 and len(marks) == 2:
        step_s = (marks[calls - 1] - marks[0]) / (calls - 1)
    pixels = out.frames[0] if scenario.frames else out.images
    unit = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0).clip(0, 1)
    frames = (unit * 255).round().astype(np.uint8)
    return Job(job_s=job_s, unet_step_s=step_s, unet_calls=calls, frames=frames)


class Budget:
    """Wall-clock guard: skip what no longer fits, keep a reserve to print the summary."""

    def __init__(self, *, seconds: float, reserve_s: float = 5.0) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds
        self.reserve_s = reserve_s

    def left(self) -> float:
        return self.end - time.monotonic() - self.reserve_s

    def used(self) -> float:
        return time.monotonic() - self.start

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


@dataclass
class Settings:
    """The run's knobs, from the command line."""

    steps: int
    warm_steps: int
    repeats: int
    seed: int
    dry_run: bool
    cuda: bool
    peak_tflops: float | None
    #: stop repeating a recipe once its timed jobs would pass this many seconds (>= 1 job)
    recipe_cap_s: float = 30.0


def measure(
    label: str, prepare: Callable[[], dict[str, Any]], job: Callable[[int, int], Any], *, cuda: bool,
    flops: int, opts: Settings, budget: Budget, own_peak: bool = False,
) -> tuple[dict[str, Any], Any | None]:
    """Prepare the recipe, warm once (few steps), then time up to `repeats` full jobs as the budget
    allows. `job(steps, seed)` runs one; with `own_peak`, the peak VRAM excludes what was already
    allocated (the production manager's resident weights while the low-memory one runs)."""
    import torch

    record: dict[str, Any] = {"recipe": label, "status": "ok"}
    last: Any | None = None
    if budget.left() <= 0:
        record["status"] = "skipped_budget"
        return record, None
    try:
        record["settings"] = prepare()
        t0 = time.perf_counter()
        warm = job(opts.warm_steps, opts.seed)
        record["warm_s"] = round(time.perf_counter() - t0, 4)
        record["warm_steps"] = opts.warm_steps
        per_step = warm.unet_step_s or warm.job_s / max(warm.unet_calls, 1)
        estimate = warm.job_s + max(opts.steps - opts.warm_steps, 0) * per_step
        record["estimate_job_s"] = round(estimate, 4)
        if not budget.fits(estimate):
            record["status"] = "skipped_budget"
            return record, None
        base = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if own_peak else 0
        repeats = max(1, min(opts.repeats, int(opts.recipe_cap_s // max(estimate, 1e-9))))
        jobs: list[Any] = []
        for k in range(repeats):
            if k and not budget.fits(estimate):
                break
            last = job(opts.steps, opts.seed + k)
            jobs.append(last)
            estimate = last.job_s
        record.update(summarise(jobs, steps=opts.steps, flops=flops, peak_tflops=opts.peak_tflops))
        if cuda:
            record["peak_vram_gb"] = round((torch.cuda.max_memory_allocated() - base) / GIB, 3)
            record["peak_vram_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    except torch.cuda.OutOfMemoryError as exc:
        record["status"] = "oom"
        record["error"] = str(exc).splitlines()[0][:300]
        _say(f"  {label}: out of memory")
        last = None
    except Exception as exc:  # one broken recipe must not cost the rest of a scarce GPU run
        log.exception("%s failed", label)
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        last = None
    finally:
        _free_memory(cuda)
    return record, last


def summarise(jobs: list[Job], *, steps: int, flops: int, peak_tflops: float | None) -> dict[str, Any]:
    job_s = statistics.median(j.job_s for j in jobs)
    step_times = [j.unet_step_s for j in jobs if j.unet_step_s is not None]
    unet_step_s = statistics.median(step_times) if step_times else None
    figures: dict[str, Any] = {
        "repeats": len(jobs),
        "job_s": round(job_s, 4),
        "job_s_all": [round(j.job_s, 4) for j in jobs],
        "s_per_step": round(job_s / steps, 5),
        "unet_calls": jobs[0].unet_calls,
        "unet_step_s": round(unet_step_s, 5) if unet_step_s is not None else None,
        "denoise_s": round(unet_step_s * jobs[0].unet_calls, 4) if unet_step_s is not None else None,
    }
    if unet_step_s and peak_tflops:
        floor_step_s = flops / (peak_tflops * 1e12)
        figures["floor_ratio"] = round(unet_step_s / floor_step_s, 3)
        figures["fraction_of_peak"] = round(floor_step_s / unet_step_s, 4)
    else:
        figures["floor_ratio"] = None
        figures["fraction_of_peak"] = None
    return figures


# --------------------------------------------------------------------------- encode


def _fallback_encode(frames: Any, path: Path, fps: int) -> None:
    """H.264 yuv420p +faststart through imageio-ffmpeg, as generation.media is specified to do."""
    import imageio_ffmpeg

    _n, h, w, _c = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-movflags", "+faststart", "-crf", "23", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()


def _project_encoder() -> tuple[str, Callable[[Any, Path, int], None]] | None:
    """`generation.media.encode_mp4`, adapted to (frames, path, fps), if the project has it."""
    try:
        from generation.media import encode_mp4
    except Exception as exc:  # absent, or its dependencies are not on the lent machine
        log.info("generation.media.encode_mp4 unavailable (%s); using the bench encoder", exc)
        return None
    params = inspect.signature(encode_mp4).parameters
    names = ("path", "out", "output", "out_path", "output_path", "dest")
    path_name = next((p for p in names if p in params), None)

    def call(frames: Any, path: Path, fps: int) -> None:
        kwargs: dict[str, Any] = {"fps": fps} if "fps" in params else {}
        if path_name:
            kwargs[path_name] = path
        result = encode_mp4(list(frames), **kwargs)
        if not path_name:
            if isinstance(result, bytes | bytearray):
                path.write_bytes(result)
            elif isinstance(result, str | os.PathLike) and Path(result) != path:
                Path(result).replace(path)

    return "generation.media.encode_mp4", call


def time_encode(frames: Any, *, fps: int, gpu_job_s: float | None, repeats: int = 3) -> dict[str, Any]:
    """Our MP4 encode of the frames a job produced, against that job's GPU time."""
    encoders = [e for e in (_project_encoder(),) if e]
    encoders.append(("bench imageio-ffmpeg (fallback)", _fallback_encode))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-encode-") as tmp:
        for label, encode in encoders:
            path = Path(tmp) / "clip.mp4"
            try:
                times = []
                for _ in range(repeats):
                    path.unlink(missing_ok=True)
                    t0 = time.perf_counter()
                    encode(frames, path, fps)
                    times.append(time.perf_counter() - t0)
            except Exception as exc:
                log.warning("encoder %s failed: %s", label, exc)
                continue
            encode_s = statistics.median(times)
            return {
                "status": "ok",
                "encoder": label,
                "frames": int(frames.shape[0]),
                "size": [int(frames.shape[2]), int(frames.shape[1])],
                "encode_s": round(encode_s, 4),
                "bytes": path.stat().st_size,
                "ratio_to_gpu_job": round(encode_s / gpu_job_s, 4) if gpu_job_s else None,
                "hides_behind_gpu": (encode_s < gpu_job_s) if gpu_job_s else None,
            }
    return {"status": "unavailable", "encoder": None}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--dry-run", action="store_true", help="tiny configs on CPU, 2 steps (tests the logic)")
    add("--quick", action="store_true", help="10 steps, damo 256x256x16 and SD 1.5 only, no compile")
    add("--steps", type=int, default=None, help="denoising steps per job (default 25; 2 dry-run)")
    add("--warm-steps", type=int, default=None, help="steps of the one warm-up job (default 3)")
    add("--repeats", type=int, default=None, help="timed jobs per recipe (default 3)")
    add("--budget-s", type=float, default=None, help="wall-clock budget (default 270; 120 quick)")
    parser.add_argument("--scenarios", nargs="+", default=None, help="subset, by name: " + " ".join(
        s.name for s in FULL_SCENARIOS))
    parser.add_argument("--recipes", nargs="+", default=["seed", "production", "lowmem", "compile", "batch"],
                        choices=["seed", "production", "lowmem", "compile", "batch"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16"],
                        help="the product's DTYPE for its recipes (auto: the model's half precision)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8],
                        help="SD 1.5 images per pipeline call for the batch curve")
    parser.add_argument("--compile-mode", default="default",
                        help='torch.compile mode for the UNet ("default", "max-autotune-no-cudagraphs", …)')
    parser.add_argument("--compile-scenarios", nargs="+", default=["damo-256x256x16"],
                        help="scenarios whose UNet is also compiled (a minute or more each)")
    parser.add_argument("--recipe-cap-s", type=float, default=30.0,
                        help="fewer timed repeats (>= 1) for a recipe whose jobs would take longer than this")
    parser.add_argument("--compile-reserve-s", type=float, default=90.0,
                        help="start a compile only with this much budget left")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense fp16 TFLOP/s, for cards not in the table")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=None,
                        help="also append the JSON lines here (default $OUT/gpu.jsonl when OUT is set)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where emit() appends (default bench/results; a temporary folder in --dry-run)")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.steps is None:
        args.steps = 2 if args.dry_run else (10 if quick else 25)
    if args.warm_steps is None:
        args.warm_steps = 1 if args.dry_run else 3
    args.warm_steps = max(1, min(args.warm_steps, args.steps))
    if args.repeats is None:
        args.repeats = 2 if args.dry_run else 3
    if args.budget_s is None:
        args.budget_s = 120.0 if (quick or args.dry_run) else 270.0
    if quick and args.scenarios is None:
        args.scenarios = ["damo-256x256x16", "sd15-512x512"]
    if (quick or args.dry_run) and "--recipes" not in argv:
        args.recipes = [r for r in args.recipes if r != "compile"]
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "gpu.jsonl"
    return args


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # progress of a benchmark CLI


@contextlib.contextmanager
def _results_dir(path: Path | None) -> Iterator[None]:
    """Point `common.emit` at another results folder for the run (dry runs never touch bench/results)."""
    if path is None:
        yield
        return
    saved = common.RESULTS_DIR
    common.RESULTS_DIR = path
    try:
        yield
    finally:
        common.RESULTS_DIR = saved


class Emitter:
    """emit() each line, and append it to --out as it goes so a killed run still returns figures."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.lines: list[dict[str, Any]] = []
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, figures: dict[str, Any], *, passed: bool | None) -> dict[str, Any]:
        line = common.emit("gpu", figures, passed=passed, target=TARGET)
        self.lines.append(line)
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, default=str) + "\n")
        return line


def main(argv: list[str]) -> bool | None:
    args = parse_args(argv)
    budget = Budget(seconds=args.budget_s)
    tmp_results = None
    if args.results_dir is None and args.dry_run:
        tmp_results = tempfile.TemporaryDirectory(prefix="bench-gpu-dry-")
        args.results_dir = Path(tmp_results.name)
    try:
        with _results_dir(args.results_dir), _quiet_libraries(), _cpu_threads(1 if args.dry_run else None):
            return _run(args, budget)
    finally:
        if tmp_results is not None:
            tmp_results.cleanup()


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    """One intra-op thread for the dry run: its ops are tiny, and on a shared, busy machine
    OpenMP threads spinning for each other made them 100x slower than a single thread."""
    if count is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers and transformers warn about every config key a newer release dropped: hush them."""
    import diffusers
    import transformers

    saved = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" as the bench saves a family
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(saved[0])
        transformers.utils.logging.set_verbosity(saved[1])


def _run(args: argparse.Namespace, budget: Budget) -> bool | None:
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        _say("no CUDA device: run with --dry-run for the CPU check, or on a lent GPU via bench/gpu.sh")
        return False
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    peak = args.peak_tflops or (peak_tflops_for(device_name) if cuda else None)
    if peak is None:
        _say(f"no dense fp16 peak known for {device_name!r}: pass --peak-tflops for FLOP-floor ratios")
    facts = _device_facts(cuda=cuda, device_name=device_name, peak=peak)
    opts = Settings(steps=args.steps, warm_steps=args.warm_steps, repeats=args.repeats, seed=args.seed,
                    dry_run=args.dry_run, cuda=cuda, peak_tflops=peak, recipe_cap_s=args.recipe_cap_s)
    half = torch.float16 if cuda else torch.float32  # CPU has no fast fp16: fp32 stands in
    emit = Emitter(args.out)
    scenarios = scenarios_for(dry_run=args.dry_run, names=args.scenarios)
    _say(f"bench gpu: {device_name}, peak {peak} TFLOP/s, {len(scenarios)} scenarios, {opts.steps} steps, "
         f"budget {args.budget_s:.0f} s")

    rigs: dict[str, Rig] = {}
    first = {}
    for scenario in scenarios:
        first.setdefault(scenario.family, scenario)
    products = Products(root=Path(tempfile.mkdtemp(prefix="bench-gpu-models-")), cuda=cuda, dtype=args.dtype,
                        pipe_for=lambda family: _rig_for(family, rigs, args=args, cuda=cuda, half=half).pipe,
                        first_scenario=first)
    try:
        results, compiled, extras = _scenarios(scenarios, rigs, products, args=args, opts=opts, budget=budget,
                                               facts=facts, half=half, cuda=cuda, emit=emit)
    finally:
        products.cleanup()
    summary, passed = summarise_run(results, compiled, facts=facts, budget=budget, args=args)
    summary.update(extras, save_s=products.save_s, product_settings=_product_defaults())
    emit(summary, passed=None if args.dry_run else passed)
    _say(format_table(results, compiled))
    return None if args.dry_run else passed


def _product_defaults() -> dict[str, Any]:
    """The tuned-path settings the product ran with (its defaults: the production settings)."""
    from generation.settings import GenerationSettings

    defaults = GenerationSettings(_env_file=None)  # type: ignore[call-arg]
    names = ("attention_backend", "fuse_qkv", "channels_last", "allow_tf32", "compile", "memory_mode")
    return {name: getattr(defaults, name) for name in names}


def _scenarios(
    scenarios: list[Scenario], rigs: dict[str, Rig], products: Products, *, args: argparse.Namespace,
    opts: Settings, budget: Budget, facts: dict[str, Any], half: Any, cuda: bool, emit: Emitter,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Each scenario's line (and its compile and batch lines), most wanted first, as the budget allows."""
    results: dict[str, dict[str, Any]] = {}
    compiled: dict[str, dict[str, Any]] = {}
    extras: dict[str, Any] = {}
    for scenario in scenarios:
        if budget.left() <= 0:
            results[scenario.name] = {"status": "skipped_budget"}
            continue
        rig = _rig_for(scenario.family, rigs, args=args, cuda=cuda, half=half)
        flops = unet_flops(scenario.family, scenario, tiny=args.dry_run)
        figures, eager = run_scenario(rig, products, scenario, half=half, recipes=args.recipes, opts=opts,
                                      budget=budget, facts=facts, flops=flops)
        results[scenario.name] = figures
        emit(figures, passed=None if args.dry_run else figures["checks_passed"])
        if eager is None or eager.get("status") != "ok":
            continue
        if "batch" in args.recipes and scenario.family == "sd15" and not scenario.frames:
            _say(f"{scenario.name}: images per second at batch {args.batch_sizes}")
            production = products.rig("production", "sd15")
            line = batch_curve(production, "sd15", scenario, sizes=tuple(args.batch_sizes), steps=opts.steps,
                               seed=opts.seed, budget=budget)
            emit({**line, "dry_run": opts.dry_run, **facts}, passed=None)
            extras["batch"] = {k: v.get("images_per_s") for k, v in line["batches"].items()}
        if "compile" in args.recipes and scenario.name in args.compile_scenarios:
            if budget.fits(args.compile_reserve_s):
                figures = run_compile(products, scenario, eager=eager, mode=args.compile_mode, opts=opts,
                                      budget=budget, facts=facts, flops=flops)
                emit(figures, passed=None)
            else:
                figures = {"kind": "compile", "scenario": scenario.name, "status": "skipped_budget"}
            compiled[scenario.name] = figures
    return results, compiled, extras


def _rig_for(family: str, rigs: dict[str, Rig], *, args: argparse.Namespace, cuda: bool, half: Any) -> Rig:
    """The family's pipeline, built once; other families are parked on the CPU meanwhile."""
    for name, other in list(rigs.items()):
        if name != family:
            other.park()
    if family not in rigs:
        t0 = time.perf_counter()
        pipe = build_pipeline(family, tiny=args.dry_run, device="cuda" if cuda else "cpu", dtype=half)
        rigs[family] = Rig(pipe=pipe, cuda=cuda, build_s=round(time.perf_counter() - t0, 3))
        _say(f"built {family} in {rigs[family].build_s:.1f} s")
    return rigs[family]


def _device_facts(*, cuda: bool, device_name: str, peak: float | None) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    facts: dict[str, Any] = {
        "device": device_name,
        "peak_tflops": peak,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(cuda=torch.version.cuda, vram_gb=round(props.total_memory / GIB, 1),
                     capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
    return facts


def run_scenario(
    rig: Rig, products: Products, scenario: Scenario, *, half: Any, recipes: list[str], opts: Settings,
    budget: Budget, facts: dict[str, Any], flops: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Production (each dtype), then the seed's recipe, then low-memory, for one scenario.

    Returns the scenario's figures and the production dtype and record kept (None if none ran).
    """
    steps = opts.steps
    figures: dict[str, Any] = {
        "kind": "scenario",
        "scenario": scenario.name,
        "dry_run": opts.dry_run,
        **facts,
        "size": {"width": scenario.width, "height": scenario.height, "frames": scenario.frames},
        "steps": steps,
        "unet_flops_per_step": flops,
        "unet_tflop_per_step": round(flops / 1e12, 4),
        "unet_tflop_per_sample": round(flops / 2e12, 4),
        "build_s": rig.build_s,
        "recipes": {},
    }
    family = scenario.family
    if "production" in recipes:
        _say(f"{scenario.name}: production (PipelineManager)")
        product = products.rig("production", family)
        record, job = measure(f"{scenario.name} production", lambda: _product_prepare(product, family),
                              _product_job(product, family, scenario), cuda=opts.cuda, flops=flops, opts=opts,
                              budget=budget)
        figures["recipes"]["production"] = record
        if job is not None:
            figures["production"] = {"dtype": record["settings"]["dtype"], **{k: record.get(k) for k in (
                "job_s", "s_per_step", "unet_step_s", "floor_ratio", "fraction_of_peak", "peak_vram_gb")}}
            if scenario.frames:
                figures["encode"] = time_encode(job.frames, fps=scenario.fps, gpu_job_s=record["job_s"])
    if "seed" in recipes:
        _say(f"{scenario.name}: seed")
        record, _job = measure(f"{scenario.name} seed", lambda: rig.apply("seed", half, scenario),
                               lambda steps, seed: run_job(rig, scenario, steps=steps, seed=seed),
                               cuda=opts.cuda, flops=flops, opts=opts, budget=budget)
        figures["recipes"]["seed"] = record
    if "lowmem" in recipes:
        _say(f"{scenario.name}: lowmem (PipelineManager, MEMORY_MODE=offload)")
        product = products.rig("lowmem", family)
        record, _job = measure(f"{scenario.name} lowmem", lambda: _product_prepare(product, family),
                               _product_job(product, family, scenario), cuda=opts.cuda, flops=flops,
                               opts=opts, budget=budget, own_peak=True)
        figures["recipes"]["lowmem"] = record
    seed = figures["recipes"].get("seed", {})
    lowmem = figures["recipes"].get("lowmem", {})
    production = figures.get("production", {})
    figures["speedup_vs_seed"] = _ratio(seed.get("job_s"), production.get("job_s"))
    figures["lowmem_speedup_vs_seed"] = _ratio(seed.get("job_s"), lowmem.get("job_s"))
    figures["lowmem_peak_vram_gb"] = lowmem.get("peak_vram_gb")
    calls = next((r["unet_calls"] for r in figures["recipes"].values() if r.get("unet_calls")), None)
    figures["unet_calls"] = calls
    figures["floor_job_s"] = (
        round(flops * calls / (opts.peak_tflops * 1e12), 6) if calls and opts.peak_tflops else None
    )
    checks = _scenario_checks(scenario, figures, production)
    figures["checks"] = checks
    figures["checks_passed"] = _all_checks(checks)
    figures["elapsed_s"] = round(budget.used(), 1)
    return figures, figures["recipes"].get("production") if "production" in figures else None




def _product_prepare(product: ProductRig, family: str) -> dict[str, Any]:
    product.load(family)
    return product.settings_record(family)


def _product_job(product: ProductRig, family: str, scenario: Scenario) -> Callable[[int, int], Any]:
    return lambda steps, seed: product.run_job(family, scenario, steps=steps, seed=seed)


def _scenario_checks(
    scenario: Scenario, figures: dict[str, Any], production: dict[str, Any]
) -> dict[str, bool | None]:
    """Pass/fail/unknown for each target that applies to the scenario."""
    checks: dict[str, bool | None] = {
        "production_within_2x_floor": (production["floor_ratio"] <= 2.0)
        if production.get("floor_ratio") is not None else None,
    }
    if scenario.speedup_target is not None:
        checks["production_speedup_ge_2x"] = (
            figures["speedup_vs_seed"] >= scenario.speedup_target if figures["speedup_vs_seed"] else None
        )
    if scenario.lowmem_limit_gb is not None:
        checks["lowmem_peak_le_8gb"] = (
            figures["lowmem_peak_vram_gb"] <= scenario.lowmem_limit_gb
            if figures["lowmem_peak_vram_gb"] is not None else None
        )
    return checks


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def _all_checks(checks: dict[str, bool | None]) -> bool | None:
    values = list(checks.values())
    if any(v is False for v in values):
        return False
    if values and all(v is True for v in values):
        return True
    return None


def run_compile(
    products: Products, scenario: Scenario, *, eager: dict[str, Any], mode: str, opts: Settings,
    budget: Budget, facts: dict[str, Any], flops: int,
) -> dict[str, Any]:
    """The product with COMPILE=<mode>: compiled and warmed up at load (its `compile_s`), then timed;
    steady-state gain over the eager production manager and the jobs it takes to pay back."""
    _say(f"{scenario.name}: PipelineManager with COMPILE={mode}")
    family = scenario.family
    product = products.rig("compile", family, compile_mode=mode)
    record, _job = measure(f"{scenario.name} compile", lambda: _product_prepare(product, family),
                           _product_job(product, family, scenario), cuda=opts.cuda, flops=flops, opts=opts,
                           budget=budget)
    products.close("compile")
    figures: dict[str, Any] = {"kind": "compile", "scenario": scenario.name, "dry_run": opts.dry_run, **facts,
                               "mode": mode, "record": record}
    settings = record.get("settings") or {}
    figures["compile_s"] = settings.get("compile_s")
    figures["compiled"] = settings.get("compile") == mode
    if record.get("job_s") and figures["compile_s"] is not None:
        gain = eager["job_s"] - record["job_s"]
        figures.update(
            job_s=record["job_s"],
            eager_job_s=eager["job_s"],
            speedup_vs_eager=round(eager["job_s"] / record["job_s"], 3),
            payback_jobs=math.ceil(figures["compile_s"] / gain) if gain > 0 else None,
            unet_step_s=record.get("unet_step_s"),
            floor_ratio=record.get("floor_ratio"),
            fraction_of_peak=record.get("fraction_of_peak"),
        )
    return figures


def summarise_run(
    results: dict[str, dict[str, Any]], compiled: dict[str, dict[str, Any]], *, facts: dict[str, Any],
    budget: Budget, args: argparse.Namespace,
) -> tuple[dict[str, Any], bool | None]:
    scenarios: dict[str, Any] = {}
    for name, fig in results.items():
        recipes = fig.get("recipes", {})
        scenarios[name] = {
            "seed_job_s": recipes.get("seed", {}).get("job_s"),
            "seed_status": recipes.get("seed", {}).get("status", "not run"),
            "production_job_s": fig.get("production", {}).get("job_s"),
            "production_dtype": fig.get("production", {}).get("dtype"),
            "lowmem_job_s": recipes.get("lowmem", {}).get("job_s"),
            "lowmem_peak_vram_gb": fig.get("lowmem_peak_vram_gb"),
            "speedup_vs_seed": fig.get("speedup_vs_seed"),
            "floor_ratio": fig.get("production", {}).get("floor_ratio"),
            "checks_passed": fig.get("checks_passed"),
            "status": fig.get("status", "ran"),
        }
        if name in compiled:
            comp = compiled[name]
            scenarios[name]["compiled_job_s"] = comp.get("job_s")
            scenarios[name]["compile_s"] = comp.get("compile_s")
            scenarios[name]["payback_jobs"] = comp.get("payback_jobs")
            scenarios[name]["compiled_floor_ratio"] = comp.get("floor_ratio")
            seed_s = scenarios[name]["seed_job_s"]
            if seed_s and comp.get("job_s"):
                scenarios[name]["speedup_vs_seed_compiled"] = round(seed_s / comp["job_s"], 3)
    verdicts = [s["checks_passed"] for s in scenarios.values()]
    passed = _all_checks(dict(enumerate(verdicts)))
    summary = {
        "kind": "summary",
        "dry_run": args.dry_run,
        **facts,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "elapsed_s": round(budget.used(), 1),
        "scenarios": scenarios,
    }
    return summary, passed


def format_table(results: dict[str, dict[str, Any]], compiled: dict[str, dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str = ".2f") -> str:
        return format(value, spec) if isinstance(value, int | float) else "-"

    head = f"{'scenario':24} {'seed s':>8} {'prod s':>8} {'dtype':>5} {'x seed':>7} {'floor x':>8} " \
           f"{'lowmem s':>9} {'low GB':>7} {'compiled s':>10}"
    rows = [head, "-" * len(head)]
    for name, fig in results.items():
        recipes = fig.get("recipes", {})
        seed = recipes.get("seed", {})
        prod = fig.get("production", {})
        low = recipes.get("lowmem", {})
        seed_cell = fmt(seed.get("job_s")) if seed.get("status") == "ok" else seed.get("status", "-")
        rows.append(
            f"{name:24} {seed_cell:>8} {fmt(prod.get('job_s')):>8} {prod.get('dtype') or '-':>5} "
            f"{fmt(fig.get('speedup_vs_seed')):>7} {fmt(prod.get('floor_ratio')):>8} "
            f"{fmt(low.get('job_s')):>9} {fmt(low.get('peak_vram_gb')):>7} "
            f"{fmt(compiled.get(name, {}).get('job_s')):>10}"
        )
    return "\n".join(rows)
