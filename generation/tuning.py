"""The tuned path: what makes a loaded pipeline fast on its device, chosen by settings.

`PipelineManager` calls :func:`prepare` on a freshly loaded pipeline (before its memory mode
places it, since sequential offload leaves only placeholders to fuse or reformat), then
:func:`compile_and_warm` once it sits on the device. Each choice logs one line: INFO when
applied, WARNING when the pipeline or the device cannot take it and the plain path is kept.

- ``ATTENTION_BACKEND``: ``sdpa`` (PyTorch's fused kernels; diffusers' own default), ``eager``
  (the explicit softmax(QKᵀ)V of diffusers' ``AttnProcessor``, a reference), or one of
  diffusers' dispatch backends (``flash``, ``sage``, ``xformers``, ``_native_cudnn`` …). A
  backend applies to models whose processors dispatch (Wan, LTX); UNet-era processors call
  SDPA directly and keep it, with a warning.
- ``FUSE_QKV``: one matmul for query, key and value. Only where the attention reads the fused
  weights (UNets, the SD VAE, CogVideoX, Wan; LTX's processor ignores them, so it is skipped).
- ``CHANNELS_LAST``: NHWC weights for the 2-D convolutions (cuDNN's fast layout); 3-D kernels
  (UNet3D's temporal convolutions, Wan's causal VAE) keep theirs.
- ``ALLOW_TF32``: TF32 tensor cores for fp32 matmuls on Ampere and later (process-wide).
- ``COMPILE``: ``torch.compile`` of the UNet/transformer at load, warmed up at the model's
  default size and steps' shape so the first member's job does not pay for it. Only in the
  ``full`` memory mode on a GPU (offload hooks move weights inside the call); a later memory
  downgrade drops it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from generation import families
from generation.params import validate_request
from generation.settings import GenerationSettings
from generation.spec import ModelSpec

log = logging.getLogger(__name__)

#: test seam: the torch.compile backend. Production compiles with inductor; the suite may pick
#: "aot_eager" to run the same load-time path without building C++ kernels for minutes.
COMPILE_BACKEND = "inductor"
#: attention values that need a GPU kernel (everything but PyTorch's SDPA and the eager reference)
_PORTABLE_ATTENTION = ("sdpa", "eager")
#: the denoiser and the VAE: the components worth tuning (text encoders run once per job)
_COMPONENTS = ("unet", "transformer", "vae")


@dataclass
class Tuning:
    """What the tuned path did to one loaded pipeline, for the logs and /info."""

    model: str
    attention: str = "sdpa"
    fused_qkv: list[str] = field(default_factory=list)
    channels_last: list[str] = field(default_factory=list)
    #: "off", or the COMPILE mode in effect
    compile: str = "off"
    compile_s: float | None = None
    #: the default size the compiled model was warmed up on, e.g. "64x64x16"
    warmed: str | None = None
    #: one line per option that fell back to the plain path
    fallbacks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attention": self.attention,
            "fused_qkv": ", ".join(self.fused_qkv) or "off",
            "channels_last": ", ".join(self.channels_last) or "off",
            "compile": self.compile,
            "compile_s": self.compile_s,
            "warmed": self.warmed,
            "fallbacks": list(self.fallbacks),
        }

    def summary(self) -> str:
        """One short line for /info: 'sdpa · fused QKV · channels_last · compiled (default)'."""
        parts = [self.attention]
        if self.fused_qkv:
            parts.append("fused QKV")
        if self.channels_last:
            parts.append("channels_last")
        if self.compile != "off":
            parts.append(f"compiled ({self.compile})")
        return " · ".join(parts)

    def _choice(self, text: str, *, fallback: bool) -> None:
        """The one log line of a choice: a warning when the plain path was kept."""
        if fallback:
            self.fallbacks.append(text)
            log.warning("tuning %s: %s", self.model, text)
        else:
            log.info("tuning %s: %s", self.model, text)


# -- process-wide --------------------------------------------------------------------------------


def set_matmul_precision(
    settings: GenerationSettings, device: str, capability: tuple[int, int] | None = None
) -> str:
    """Turn on TF32 for fp32 matmuls and convolutions where the card has it; returns the state.

    `capability` is the card's (major, minor), read from CUDA when not given. The legacy
    switch is used on purpose: mixing it with torch's newer per-backend `fp32_precision`
    makes `torch.get_float32_matmul_precision()` raise, and inductor calls it.
    """
    if not settings.allow_tf32:
        log.info("ALLOW_TF32=false: fp32 matmuls keep full precision")
        return "off"
    if device != "cuda":
        log.info("ALLOW_TF32: skipped on %s (TF32 is a CUDA tensor-core format)", device)
        return f"skipped ({device})"
    if capability is None:
        capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        log.warning("ALLOW_TF32: skipped, compute capability %d.%d has no TF32 (Ampere is 8.0)", *capability)
        return "skipped (pre-Ampere)"
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    log.info("ALLOW_TF32: fp32 matmuls and convolutions use TF32 tensor cores")
    return "on"


# -- per pipeline, before placement --------------------------------------------------------------


def prepare(pipe: Any, spec: ModelSpec, settings: GenerationSettings, device: str) -> Tuning:
    """Attention, fused QKV and channels_last on a pipeline that is not yet on its device."""
    tuning = Tuning(model=spec.id)
    models = {
        name: getattr(pipe, name)
        for name in _COMPONENTS
        if isinstance(getattr(pipe, name, None), torch.nn.Module)
    }
    _set_attention(tuning, models, settings.attention_backend, device)
    if settings.fuse_qkv:
        _fuse_qkv(tuning, models)
    else:
        log.info("tuning %s: FUSE_QKV=false: separate query, key and value projections", spec.id)
    if settings.channels_last:
        _channels_last(tuning, models)
    else:
        log.info("tuning %s: CHANNELS_LAST=false: convolutions keep the contiguous layout", spec.id)
    return tuning


def _attention_modules(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    for module in model.modules():
        if hasattr(module, "processor") and hasattr(module, "set_processor"):
            yield module


def _set_attention(tuning: Tuning, models: dict[str, torch.nn.Module], wanted: str, device: str) -> None:
    """Each model's attention kernel; a model or device that cannot take `wanted` keeps SDPA."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    plain = (AttnProcessor, AttnProcessor2_0)
    if wanted not in _PORTABLE_ATTENTION and device != "cuda":
        tuning._choice(f"ATTENTION_BACKEND={wanted} needs a CUDA GPU: using sdpa on {device}", fallback=True)
        wanted = "sdpa"
    if wanted not in _PORTABLE_ATTENTION and not _backend_available(wanted):
        tuning._choice(f"ATTENTION_BACKEND={wanted} is not installed: using sdpa", fallback=True)
        wanted = "sdpa"
    kept: list[str] = []
    for name, model in models.items():
        for module in _attention_modules(model):
            processor = module.processor
            if hasattr(processor, "_attention_backend"):  # dispatching processors (Wan, LTX)
                backend = {"sdpa": "native", "eager": "_native_math"}.get(wanted, wanted)
                processor._attention_backend = backend
            elif isinstance(processor, plain) and wanted in _PORTABLE_ATTENTION:
                module.set_processor(AttnProcessor() if wanted == "eager" else AttnProcessor2_0())
            elif wanted != "sdpa" and name not in kept:
                kept.append(name)
    tuning.attention = wanted
    if kept:
        tuning._choice(
            f"attention {wanted} on the rest; {', '.join(kept)} keep their own SDPA processors",
            fallback=True,
        )
    else:
        tuning._choice(f"attention {wanted} ({', '.join(models) or 'no attention'})", fallback=False)


def _backend_available(name: str) -> bool:
    """Whether diffusers can run the dispatch backend `name` here (its package is installed)."""
    from diffusers.models import attention_dispatch as dispatch

    try:
        dispatch._check_attention_backend_requirements(dispatch.AttentionBackendName(name))
    except (ValueError, RuntimeError, ImportError) as exc:
        log.debug("attention backend %s unavailable: %s", name, exc)
        return False
    return True


def _fuse_qkv(tuning: Tuning, models: dict[str, torch.nn.Module]) -> None:
    skipped: list[str] = []
    for name, model in models.items():
        if not hasattr(model, "fuse_qkv_projections") or not any(True for _ in _attention_modules(model)):
            continue
        reason = _fusion_blocker(model, tuning.attention)
        if reason is None:
            try:
                model.fuse_qkv_projections()
            except ValueError as exc:  # diffusers refuses added KV projections
                reason = str(exc)
        if reason is None:
            tuning.fused_qkv.append(name)
        elif name != "vae":  # the VAE's one attention block is not worth a warning
            skipped.append(f"{name} ({reason})")
    if skipped:
        fused = f" on {', '.join(tuning.fused_qkv)}" if tuning.fused_qkv else ""
        tuning._choice(f"fused QKV{fused}; not on {'; '.join(skipped)}", fallback=True)
    else:
        tuning._choice(f"fused QKV on {', '.join(tuning.fused_qkv) or 'nothing'}", fallback=False)


def _fusion_blocker(model: torch.nn.Module, attention: str) -> str | None:
    """Why fusing `model`'s projections would not help, or None when it would."""
    from diffusers.models.attention import AttentionModuleMixin

    for module in _attention_modules(model):
        if isinstance(module, AttentionModuleMixin):
            if not _reads_fused(type(module.processor)):
                return f"{type(module.processor).__name__} ignores fused projections"
        elif attention == "eager":
            return "UNet-era fusion installs the SDPA processor, and ATTENTION_BACKEND=eager"
    return None


@functools.cache
def _reads_fused(processor: type) -> bool:
    """Whether a dispatching processor (or its module's helpers) reads `fused_projections`."""
    module = sys.modules.get(processor.__module__)
    try:
        return "fused_projections" in inspect.getsource(module) if module is not None else False
    except (OSError, TypeError):
        return False


def _channels_last(tuning: Tuning, models: dict[str, torch.nn.Module]) -> None:
    for name, model in models.items():
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convs:
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        if convs:
            tuning.channels_last.append(f"{name} ({len(convs)})")
    if tuning.channels_last:
        done = ", ".join(tuning.channels_last)
        tuning._choice(f"channels_last on 2-D convolutions: {done}", fallback=False)
    else:
        tuning._choice("channels_last: no 2-D convolutions in this pipeline", fallback=True)


# -- per pipeline, on the device -----------------------------------------------------------------


def denoiser(pipe: Any) -> torch.nn.Module | None:
    """The UNet or transformer: what runs once (or twice, with guidance) per step."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return model
    return None


def compile_and_warm(
    pipe: Any, spec: ModelSpec, tuning: Tuning, settings: GenerationSettings, *, device: str, memory_mode: str
) -> None:
    """Compile the denoiser and run one short job at the model's default size (COMPILE != off)."""
    mode = settings.compile
    if mode == "off":
        log.info("tuning %s: COMPILE=off", spec.id)
        return
    model = denoiser(pipe)
    blocker = _compile_blocker(model, device, memory_mode)
    if blocker is not None:
        tuning._choice(f"COMPILE={mode} skipped: {blocker}; running eager", fallback=True)
        return
    assert model is not None
    t0 = time.perf_counter()
    options: dict[str, Any] = {"backend": COMPILE_BACKEND}
    if COMPILE_BACKEND == "inductor" and mode != "default":
        options["mode"] = mode
    model.compile(**options)
    try:
        tuning.warmed = warm_up(pipe, spec)
    except Exception as exc:  # a compiler failure must not take the model down with it
        decompile(pipe)
        tuning._choice(
            f"COMPILE={mode} failed while warming up ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running eager",
            fallback=True,
        )
        return
    tuning.compile = mode
    tuning.compile_s = round(time.perf_counter() - t0, 2)
    tuning._choice(
        f"COMPILE={mode}: {type(model).__name__} compiled and warmed up at {tuning.warmed} "
        f"in {tuning.compile_s:.1f}s",
        fallback=False,
    )


def _compile_blocker(model: torch.nn.Module | None, device: str, memory_mode: str) -> str | None:
    if model is None:
        return "the pipeline has no UNet or transformer"
    if device == "cuda" and memory_mode != "full":
        return f"memory mode {memory_mode} moves weights inside the call (compile needs 'full')"
    if COMPILE_BACKEND != "inductor":
        return None
    if device == "cuda":
        import importlib.util

        return None if importlib.util.find_spec("triton") else "inductor needs triton for CUDA kernels"
    compiler = os.environ.get("CXX", "g++")
    return None if shutil.which(compiler) else f"inductor on CPU needs a C++ compiler ({compiler} not found)"


def warm_up(pipe: Any, spec: ModelSpec) -> str:
    """One short job at the model's default size, guidance and frames; returns the size run."""
    steps = min(max(spec.min_steps, 2), spec.max_steps)
    with _input_image(spec) as image:
        raw: dict[str, Any] = {"prompt": "warm-up", "seed": 0, "steps": steps}
        if image is not None:
            raw["image"] = image
        request = validate_request(spec.kind, raw, spec)
        signature = families.CallSignature.of(pipe)
        pipe(**families.call_kwargs(spec.pipeline, signature, request, lambda _latents: None))
    size = f"{request.width}x{request.height}"
    return f"{size}x{request.frames}" if spec.kind == "video" else size  # type: ignore[union-attr]


@contextlib.contextmanager
def _input_image(spec: ModelSpec) -> Iterator[str | None]:
    """A grey first frame for an image-to-video model's warm-up, deleted afterwards."""
    if not spec.takes_image:
        yield None
        return
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="warm-up-") as folder:
        path = Path(folder) / "frame.png"
        Image.new("RGB", (spec.default_width, spec.default_height), (128, 128, 128)).save(path)
        yield str(path)


def decompile(pipe: Any) -> bool:
    """Back to the eager denoiser (after a memory downgrade or a failed compile)."""
    model = denoiser(pipe)
    if model is None or getattr(model, "_compiled_call_impl", None) is None:
        return False
    model._compiled_call_impl = None
    return True


def after_memory_mode(pipe: Any, tuning: Tuning | None, mode: str) -> None:
    """A downgrade out of `full` puts offload hooks around the weights: drop the compiled call."""
    if tuning is None or tuning.compile == "off" or mode == "full":
        return
    decompile(pipe)
    tuning._choice(
        f"COMPILE={tuning.compile} dropped: memory mode {mode} moves weights inside the call", fallback=True
    )
    tuning.compile = "off"


def describe(settings: GenerationSettings, tf32: str, residents: dict[str, Any]) -> dict[str, Any]:
    """The tuned path as /info shows it: the settings, and what each resident model (whose
    `tuning` attribute holds its :class:`Tuning`) got."""
    tunings = {m: r.tuning for m, r in residents.items() if getattr(r, "tuning", None) is not None}
    return {
        "attention_backend": settings.attention_backend,
        "fuse_qkv": settings.fuse_qkv,
        "channels_last": settings.channels_last,
        "tf32": tf32,
        "compile": settings.compile,
        "models": {model_id: t.as_dict() for model_id, t in tunings.items()},
        "summary": "; ".join(f"{model_id}: {t.summary()}" for model_id, t in tunings.items()),
    }
