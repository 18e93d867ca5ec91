"""What differs between pipeline families: call arguments, input images, and where the latents are.

`generation.pipelines` loads and runs every model the same way; the few things a family does
its own way live here, keyed by the diffusers pipeline class name:

- call arguments: LTX takes the clip's `frame_rate`; image-to-video pipelines take `image`
  (the member's picture, fitted to the requested size); video comes back as numpy frames;
- the step callback: `callback_on_step_end` where the pipeline has it, else the deprecated
  `callback(step, t, latents)` of `TextToVideoSDPipeline`;
- latents for previews: SD and Wan keep (batch, channels, [frames,] h, w), CogVideoX
  (batch, frames, channels, h, w), LTX packs them into (batch, tokens, channels); and each
  family scales the VAE's latents its own way before denoising (`latent_space`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps

from generation.errors import InvalidRequest
from generation.params import GenerationRequest, ImageRequest, Sample, VideoRequest

log = logging.getLogger(__name__)


def family(pipeline: str) -> str:
    """ "wan", "ltx", "cogvideox", "sdxl", "sd" or "t2v-sd" (damo, zeroscope) from a pipeline class name."""
    for prefix, name in (
        ("Wan", "wan"),
        ("LTX", "ltx"),
        ("CogVideoX", "cogvideox"),
        ("StableDiffusionXL", "sdxl"),
    ):
        if pipeline.startswith(prefix):
            return name
    return "t2v-sd" if pipeline.startswith("TextToVideo") else "sd"


@dataclass(frozen=True)
class CallSignature:
    """What a loaded pipeline's `__call__` accepts (read once, at load time)."""

    accepts: frozenset[str]
    var_kwargs: bool

    @classmethod
    def of(cls, pipe: Any) -> CallSignature:
        params = inspect.signature(pipe.__call__).parameters
        var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        return cls(accepts=frozenset(params), var_kwargs=var_kwargs)


def call_kwargs(
    pipeline: str, signature: CallSignature, request: GenerationRequest, step: Callable[[Any], None]
) -> dict[str, Any]:
    """Keyword arguments for one run of `pipeline`; `step(latents)` is called after every step."""
    kwargs: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "width": request.width,
        "height": request.height,
        "generator": torch.Generator(device="cpu").manual_seed(request.seed),
        "output_type": "pil",
    }
    if isinstance(request, ImageRequest) and request.count > 1:
        kwargs.update(batch_kwargs(request.samples()))
    if isinstance(request, ImageRequest) and request.image is not None:
        picture = load_input_image(request.image, request.width, request.height)
        kwargs.update(image=[picture] * request.count if request.count > 1 else picture)
        kwargs["strength"] = request.strength
    if isinstance(request, VideoRequest):
        kwargs.update(num_frames=request.frames, output_type="np")
        if family(pipeline) == "ltx":
            kwargs["frame_rate"] = request.fps  # LTX conditions its motion on the clip's frame rate
        if request.image is not None:
            kwargs["image"] = load_input_image(request.image, request.width, request.height)
    kwargs.update(_callback_kwargs(pipeline, signature, step))
    if not signature.var_kwargs:
        dropped = sorted(k for k in kwargs if k not in signature.accepts)
        if dropped:
            log.debug("%s does not take %s", pipeline, ", ".join(dropped))
        kwargs = {k: v for k, v in kwargs.items() if k in signature.accepts}
    return kwargs


def batch_kwargs(samples: Sequence[Sample]) -> dict[str, Any]:
    """One pipeline call for several images: lists of prompts and negatives, one generator each
    (diffusers draws each sample's noise from its own generator, so each seed stands alone)."""
    negatives = [s.negative_prompt or "" for s in samples]
    return {
        "prompt": [s.prompt for s in samples],
        "negative_prompt": negatives if any(negatives) else None,
        "generator": [torch.Generator(device="cpu").manual_seed(s.seed) for s in samples],
    }


def _callback_kwargs(pipeline: str, signature: CallSignature, step: Callable[[Any], None]) -> dict[str, Any]:
    if "callback_on_step_end" in signature.accepts:

        def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            step(callback_kwargs.get("latents"))
            return callback_kwargs

        return {"callback_on_step_end": on_step_end}
    if "callback" in signature.accepts:
        # TextToVideoSDPipeline (deprecated) only has the old-style callback
        return {"callback": lambda i, t, latents: step(latents), "callback_steps": 1}
    log.debug("%s has no step callback: no progress or cancel", pipeline)
    return {}


def load_input_image(path: str, width: int, height: int) -> Image.Image:
    """The member's picture as the clip's first frame: RGB, centre-cropped and resized to the clip.

    Raises InvalidRequest when the file is gone or is not a picture, so the member hears why.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError) as exc:
        log.warning("input image %s unreadable: %s", path, exc)
        raise InvalidRequest("The input image could not be read as a picture (PNG, JPEG or WebP).") from None
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


# -- latents --------------------------------------------------------------------------------------


def middle_frame(pipeline: str, pipe: Any, latents: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
    """(channels, h, w) latents of the first sample's middle frame, in the pipeline's own layout."""
    kind = family(pipeline)
    if kind == "ltx" and latents.ndim == 3:
        latents = _unpack_ltx(pipe, latents, request)
    if latents.ndim == 4:
        return latents[0]
    if kind == "cogvideox":
        return latents[0, latents.shape[1] // 2]
    return latents[0, :, latents.shape[2] // 2]


def _unpack_ltx(pipe: Any, latents: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
    frames = request.frames if isinstance(request, VideoRequest) else 1
    latent_frames = (frames - 1) // pipe.vae_temporal_compression_ratio + 1
    return pipe._unpack_latents(
        latents,
        latent_frames,
        request.height // pipe.vae_spatial_compression_ratio,
        request.width // pipe.vae_spatial_compression_ratio,
        pipe.transformer_spatial_patch_size,
        pipe.transformer_temporal_patch_size,
    )


def latent_space(pipeline: str, vae: Any, raw: torch.Tensor) -> torch.Tensor:
    """The VAE's latents (batch, channels, ...) scaled as the pipeline's denoising loop sees them."""
    kind = family(pipeline)
    shape = (1, -1) + (1,) * (raw.ndim - 2)
    config = vae.config
    if kind == "wan":
        mean = torch.tensor(config.latents_mean, dtype=raw.dtype, device=raw.device).view(shape)
        std = torch.tensor(config.latents_std, dtype=raw.dtype, device=raw.device).view(shape)
        return (raw - mean) / std
    if kind == "ltx":
        mean = vae.latents_mean.to(raw.device, raw.dtype).view(shape)
        std = vae.latents_std.to(raw.device, raw.dtype).view(shape)
        return (raw - mean) * config.scaling_factor / std
    return raw * getattr(config, "scaling_factor", 1.0)
