"""Loading diffusers pipelines and running one request at a time, with progress and cancel.

All methods block; they are meant for the one GPU thread (:mod:`generation.gpu_thread`). Pipelines are
loaded once and stay resident (up to `MAX_RESIDENT_MODELS`); switching models is explicit,
logged, and evicts the least recently used one.

Memory modes, from fastest to leanest (`MEMORY_MODE`, or chosen by free VRAM when `auto`):

- ``full``: the whole pipeline on the GPU;
- ``offload``: model CPU offload (one component on the GPU at a time) + VAE slicing;
- ``sequential``: sequential CPU offload (layer by layer) + VAE slicing and tiling;
- ``sequential_lowvae``: as sequential, with smaller VAE tiles.

After an out-of-memory error the GPU thread calls :meth:`PipelineManager.downgrade_memory` and
retries. On a CPU device every mode keeps the weights in RAM; the VAE slicing/tiling part of
a mode still applies, so the fallback path is exercised by the CPU tests too.

Test seam: :attr:`PipelineManager.step_hooks` are called from inside the step callback with
the :class:`StepInfo`; an exception raised there (e.g. ``torch.cuda.OutOfMemoryError``)
propagates out of :meth:`PipelineManager.run` exactly like one raised by the UNet.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from generation import failures, families, tuning
from generation.components import load_components
from generation.errors import GenerationCancelled, ModelUnavailable
from generation.img2img import pipe_for
from generation.load_errors import unavailable
from generation.media import frames_to_uint8
from generation.models import TINY_REPO_PREFIX, ModelSpec, build_registry, get_spec
from generation.noise import quiet_known_warnings
from generation.outputs import GenerationOutput, StepInfo
from generation.params import GenerationRequest, VideoRequest
from generation.preview import LatentPreviewer
from generation.safety import keep_unfiltered
from generation.settings import GenerationSettings
from generation.tiny import ensure_tiny

log = logging.getLogger(__name__)

quiet_known_warnings()

MEMORY_MODES = ("full", "offload", "sequential", "sequential_lowvae")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: VRAM headroom on top of a spec's estimate before `auto` keeps a pipeline fully on the GPU
_FULL_HEADROOM = 1.1


@dataclass
class _Resident:
    spec: ModelSpec
    pipe: Any
    mode: str
    signature: families.CallSignature
    #: fitted on this pipeline's VAE at load; None when previews are off or it has no encoder
    previewer: LatentPreviewer | None = None
    tuning: tuning.Tuning | None = None
    #: the image-to-image variant on the same weights (see `generation.img2img`), built on first use
    img2img: tuple[Any, families.CallSignature] | None = None

    def preview(self, latents: Any, request: GenerationRequest) -> Image.Image | None:
        if self.previewer is None or not isinstance(latents, torch.Tensor):
            return None
        return self.previewer.render(self.pipe, latents, request)


class PipelineManager:
    """Owns the loaded pipelines of one device; one request runs at a time."""

    def __init__(self, settings: GenerationSettings, registry: dict[str, ModelSpec] | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else build_registry(settings)
        self.device = self._resolve_device(settings.device)
        self.dtype = self._resolve_dtype(settings.dtype, self.device)
        #: test seam: called with every StepInfo inside the step callback (see module doc)
        self.step_hooks: list[Callable[[StepInfo], None]] = []
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        #: lock-free views for other threads (health checks, /admin), replaced under the lock
        self._loaded_view: tuple[str, ...] = ()
        self._mode_view: dict[str, str] = {}
        #: memory modes chosen by downgrade_memory; they stick across reloads
        self._mode_override: dict[str, str] = {}
        self._lock = threading.RLock()
        _quiet_library_progress_bars()
        self.tf32 = tuning.set_matmul_precision(settings, self.device)

    # -- device ----------------------------------------------------------------------------

    @staticmethod
    def _resolve_device(wanted: str) -> str:
        if wanted == "cpu":
            return "cpu"
        available = torch.cuda.is_available()
        if wanted == "cuda" and not available:
            raise ModelUnavailable("DEVICE=cuda but no CUDA GPU is visible to torch; set DEVICE=auto or cpu.")
        return "cuda" if available else "cpu"

    @staticmethod
    def _resolve_dtype(wanted: str, device: str) -> torch.dtype:
        if wanted == "auto":
            return torch.float16 if device == "cuda" else torch.float32
        if wanted == "fp16" and device == "cpu":
            log.warning("DTYPE=fp16 is not supported for CPU inference; using fp32 on the CPU")
            return torch.float32
        return _DTYPES[wanted]

    @property
    def dtype_name(self) -> str:
        return _dtype_name(self.dtype)

    def dtype_for(self, spec: ModelSpec) -> torch.dtype:
        """The manager's dtype, or the model's preferred half precision (bf16 for Wan, LTX, CogVideoX)
        when DTYPE=auto picked half precision on a GPU that supports it."""
        if self.settings.dtype != "auto" or self.dtype == torch.float32:
            return self.dtype
        if spec.dtype == "bf16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return self.dtype

    def device_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype_name,
            "gpu": None,
            "vram_total_gib": None,
            "vram_free_gib": None,
            "torch": torch.__version__,
            "tuning": tuning.describe(self.settings, self.tf32, dict(self._resident)),
        }
        if self.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            info.update(
                gpu=torch.cuda.get_device_name(0),
                vram_total_gib=round(total / 2**30, 2),
                vram_free_gib=round(free / 2**30, 2),
            )
        return info

    # -- loading ---------------------------------------------------------------------------

    def loaded_models(self) -> list[str]:
        """Resident model ids, least recently used first; never waits for a running job."""
        return list(self._loaded_view)

    def _publish(self) -> None:
        self._loaded_view = tuple(self._resident)
        self._mode_view = {model_id: r.mode for model_id, r in self._resident.items()}

    def spec(self, model_id: str) -> ModelSpec:
        return get_spec(self.registry, model_id)

    def load(self, model_id: str) -> None:
        """Make `model_id` resident (no-op when it is); evicts the least recently used if full."""
        with self._lock:
            if model_id in self._resident:
                self._resident.move_to_end(model_id)
                self._publish()
                return
            spec = self.spec(model_id)
            while len(self._resident) >= self.settings.max_resident_models:
                old = next(iter(self._resident))
                log.info("switching models: unloading %s to make room for %s", old, model_id)
                self.unload(old)
            log.info("loading model %s (%s)", model_id, spec.repo_id)
            t0 = time.perf_counter()
            pipe = self._from_pretrained(spec)
            if spec.scheduler or spec.scheduler_options:
                cls = _scheduler_class(spec) if spec.scheduler else type(pipe.scheduler)
                pipe.scheduler = cls.from_config(pipe.scheduler.config, **spec.scheduler_options)
            pipe.set_progress_bar_config(disable=True)
            tuned = tuning.prepare(pipe, spec, self.settings, self.device)  # before offload hooks
            mode = self._mode_override.get(model_id) or self._choose_mode(spec)
            self._apply_mode(pipe, spec, mode)
            tuning.compile_and_warm(pipe, spec, tuned, self.settings, device=self.device, memory_mode=mode)
            resident = _Resident(spec, pipe, mode, families.CallSignature.of(pipe), tuning=tuned)
            if self.settings.preview_every_steps:
                resident.previewer = LatentPreviewer.fit(spec.pipeline, pipe)
            self._resident[model_id] = resident
            self._publish()
            log.info(
                "loaded model %s (%s, %s) on %s, %s, memory mode %s in %.1fs",
                model_id,
                spec.repo_id,
                spec.pipeline,
                self.device,
                _dtype_name(self.dtype_for(spec)),
                mode,
                time.perf_counter() - t0,
            )

    def unload(self, model_id: str) -> None:
        with self._lock:
            resident = self._resident.pop(model_id, None)
            if resident is None:
                return
            self._publish()
            try:
                resident.pipe.remove_all_hooks()
            except Exception:  # pragma: no cover - best effort on teardown
                log.debug("remove_all_hooks failed for %s", model_id, exc_info=True)
            del resident
            _free_memory(self.device)
            log.info("unloaded model %s", model_id)

    def close(self) -> None:
        for model_id in self.loaded_models():
            self.unload(model_id)

    def _from_pretrained(self, spec: ModelSpec) -> Any:
        import diffusers

        cls = getattr(diffusers, spec.pipeline, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ModelUnavailable(
                f"Model {spec.id!r} names pipeline {spec.pipeline!r}, which diffusers "
                f"{diffusers.__version__} does not have; fix its 'pipeline' in EXTRA_MODELS."
            )
        cache_dir = self.settings.model_cache_dir
        twin = spec.repo_id.removeprefix(TINY_REPO_PREFIX)
        source: Any = ensure_tiny(twin, cache_dir) if spec.tiny else spec.repo_id
        token = self.settings.hf_token.get_secret_value() if self.settings.hf_token else None
        dtype = self.dtype_for(spec)
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "cache_dir": str(cache_dir),
            "token": token,
            "local_files_only": self.settings.hf_offline or spec.tiny,
        }
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.has_safety_checker and not self.settings.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        use_variant = spec.variant is not None and self.device == "cuda" and dtype == torch.float16
        try:
            kwargs.update(load_components(spec, {k: v for k, v in kwargs.items() if k != "revision"}))
            try:
                return cls.from_pretrained(source, variant=spec.variant if use_variant else None, **kwargs)
            except (OSError, ValueError) as exc:
                if not use_variant or "variant" not in str(exc):
                    raise
                log.info("%s has no %s weights; loading the default ones", spec.repo_id, spec.variant)
                return cls.from_pretrained(source, **kwargs)
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise unavailable(spec, exc, self.settings) from exc

    # -- memory modes ----------------------------------------------------------------------

    def _choose_mode(self, spec: ModelSpec) -> str:
        if self.settings.memory_mode != "auto":
            return self.settings.memory_mode
        if self.device != "cuda":
            return "full"
        free_gib = torch.cuda.mem_get_info()[0] / 2**30
        scale = 1.0 if self.dtype in (torch.float16, torch.bfloat16) else 2.0
        if free_gib >= spec.vram_full_gib * scale * _FULL_HEADROOM:
            mode = "full"
        elif free_gib >= spec.vram_offload_gib * scale:
            mode = "offload"
        else:
            mode = "sequential"
        log.info("MEMORY_MODE=auto: %.1f GiB free -> %s for %s", free_gib, mode, spec.id)
        return mode

    def memory_mode(self, model_id: str) -> str:
        """The mode `model_id` runs (or would load) in; never waits for a running job."""
        mode = self._mode_view.get(model_id) or self._mode_override.get(model_id)
        return mode or self._choose_mode(self.spec(model_id))

    def downgrade_memory(self, model_id: str) -> str | None:
        """Switch to the next leaner memory mode (after an OOM); None when none is left."""
        with self._lock:
            current = self.memory_mode(model_id)
            index = MEMORY_MODES.index(current)
            if index + 1 >= len(MEMORY_MODES):
                return None
            new = MEMORY_MODES[index + 1]
            self._mode_override[model_id] = new
            resident = self._resident.get(model_id)
            if resident is not None:
                self._apply_mode(resident.pipe, resident.spec, new)
                tuning.after_memory_mode(resident.pipe, resident.tuning, new)
                resident.mode = new
                self._publish()
            log.warning("memory mode of %s lowered from %s to %s", model_id, current, new)
            return new

    def _apply_mode(self, pipe: Any, spec: ModelSpec, mode: str) -> None:
        if self.device == "cuda":
            _free_memory(self.device)
            if mode == "full":
                pipe.to(self.device)
            elif mode == "offload":
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to("cpu")
        vae = getattr(pipe, "vae", None)
        if vae is None:
            return
        # video pipelines decode every frame in one VAE batch: slice it whatever the mode
        if (spec.kind == "video" or mode != "full") and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
        # an upscaler decodes at several times the source size: tile it whatever the mode
        if (mode.startswith("sequential") or spec.kind == "upscale") and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
            if mode == "sequential_lowvae" and hasattr(vae, "tile_sample_min_size"):
                factor = 2 ** (len(vae.config.block_out_channels) - 1)
                vae.tile_sample_min_size = max(factor * 8, vae.tile_sample_min_size // 2)
                vae.tile_latent_min_size = vae.tile_sample_min_size // factor

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationOutput:
        """Generate one request; raises GenerationCancelled when `should_cancel()` turns true."""
        with self._lock:
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(failures.CANCELLED_BEFORE_START)
            resident, load_s = self._resident_for(request)
            steps = _Steps(self, resident, request, on_step, should_cancel)
            pipe, signature = pipe_for(resident, request)
            kwargs = families.call_kwargs(resident.spec.pipeline, signature, request, steps)
            t0 = steps.last = time.perf_counter()
            try:
                with keep_unfiltered(pipe) as verdict:
                    result = pipe(**kwargs)
            except torch.cuda.OutOfMemoryError:
                log.warning("out of GPU memory running %s in mode %s", request.model, resident.mode)
                _reset_after_failure(pipe, self.device)
                raise
            except BaseException:
                _reset_after_failure(pipe, self.device)
                raise
            t_end = time.perf_counter()
        timings = {
            "load": load_s,
            "denoise": steps.last - t0 if steps.count else t_end - t0,
            "decode": t_end - steps.last if steps.count else 0.0,
            "total": load_s + t_end - t0,
            # part of denoise: latent previews (the VAE calibration happens at load)
            "preview": steps.preview_s,
        }
        output = GenerationOutput(
            kind=request.kind,
            request=request,
            images=None,
            frames=None,
            timings=timings,
            device=self.device,
            memory_mode=resident.mode,
        )
        if isinstance(request, VideoRequest):
            output.frames = frames_to_uint8(result.frames)
        else:
            output.images = list(result.images)
            output.nsfw_detected, output.unfiltered = verdict.flagged, verdict.unfiltered
        _log_run(output, request)
        return output

    def _resident_for(self, request: GenerationRequest) -> tuple[_Resident, float]:
        """The loaded pipeline for `request` and the seconds spent loading it (0 when resident)."""
        t_load = time.perf_counter()
        was_resident = request.model in self._resident
        self.load(request.model)
        load_s = 0.0 if was_resident else time.perf_counter() - t_load
        resident = self._resident[request.model]
        if resident.spec.kind != request.kind:
            raise ModelUnavailable(
                failures.WRONG_KIND.format(model=request.model, makes=resident.spec.kind, asked=request.kind)
            )
        return resident, load_s


# -- helpers -----------------------------------------------------------------------------------


class _Steps:
    """The step callback of one run: progress, previews, test hooks and cancel, and when the
    last step ended (denoising ends there; the VAE decode follows)."""

    def __init__(
        self,
        manager: PipelineManager,
        resident: _Resident,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> None:
        self.manager = manager
        self.resident = resident
        self.request = request
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.count = 0
        self.last = 0.0
        self.preview_s = 0.0

    def __call__(self, latents: Any) -> None:
        total = getattr(self.request, "denoise_steps", self.request.steps)
        self.count += 1
        n = min(self.count, total)
        if n == total and self.manager.device == "cuda":
            torch.cuda.synchronize()
        self.last = time.perf_counter()
        every = self.manager.settings.preview_every_steps
        preview = None
        if self.on_step is not None and every and n % every == 0 and n < total and latents is not None:
            preview = self.resident.preview(latents, self.request)
            self.preview_s += time.perf_counter() - self.last
        info = StepInfo(step=n, total=total, preview=preview)
        for hook in list(self.manager.step_hooks):
            hook(info)
        if self.on_step is not None:
            self.on_step(info)
        if self.should_cancel is not None and self.should_cancel():
            log.info("cancelled %s at step %d/%d", self.request.model, n, total)
            raise GenerationCancelled(failures.CANCELLED_AT_STEP.format(step=n, total=total))


def _log_run(output: GenerationOutput, request: GenerationRequest) -> None:
    t = output.timings
    log.info(
        "generated %s %s seed=%d steps=%d %dx%d on %s/%s: load %.2fs denoise %.2fs decode %.2fs",
        request.kind,
        request.model,
        request.seed,
        request.steps,
        request.width,
        request.height,
        output.device,
        output.memory_mode,
        t["load"],
        t["denoise"],
        t["decode"],
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def _scheduler_class(spec: ModelSpec) -> Any:
    import diffusers

    cls = getattr(diffusers, spec.scheduler or "", None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelUnavailable(
            f"Model {spec.id!r} names scheduler {spec.scheduler!r}, which diffusers does not have; "
            "fix its 'scheduler' in EXTRA_MODELS."
        )
    return cls


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _reset_after_failure(pipe: Any, device: str) -> None:
    """Put offloaded components back and release the failed run's memory."""
    try:
        pipe.maybe_free_model_hooks()
    except Exception:  # pragma: no cover - best effort
        log.debug("maybe_free_model_hooks failed", exc_info=True)
    _free_memory(device)


def _quiet_library_progress_bars() -> None:
    """Library tqdm bars would interleave with our logs and the CLI's own bar."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic
        log.debug("could not disable library progress bars", exc_info=True)
