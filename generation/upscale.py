"""Upscaling a finished picture with a diffusion upscaler (`StableDiffusionUpscalePipeline`).

The upscaler denoises a latent the size of the source picture, conditioned on that picture and
a prompt, and its VAE decodes the latent at `factor` times the size. The decode at full output
size is where the memory goes, so the VAE is tiled whenever it can be: the result is the same
up to seams a tiled decode blends away, and a 4x upscale of a 1024px picture fits a small GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from generation.errors import InvalidRequest

log = logging.getLogger(__name__)

#: the real x4 upscaler was trained with noise levels up to 350; 20 keeps the picture's detail
DEFAULT_NOISE_LEVEL = 20
#: the low-resolution picture the upscaler reads; larger sources are refused, not silently shrunk
MAX_SOURCE_PIXELS = 1024 * 1024


def upscale_factor(pipe: Any) -> int:
    """How many times wider (and taller) the pipeline's VAE decodes than its latent."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def prepare_for_upscale(pipe: Any, *, tiled: bool = True) -> None:
    """Tile (and slice) the VAE decode, the step whose memory grows with the output size."""
    vae = pipe.vae
    if tiled and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


def upscale(
    pipe: Any,
    picture: Any,
    *,
    prompt: str = "",
    steps: int = 20,
    seed: int = 0,
    noise_level: int = DEFAULT_NOISE_LEVEL,
    device: str = "cpu",
) -> Any:
    """Return `picture` (a PIL image) upscaled by `upscale_factor(pipe)` in each dimension."""
    import torch

    if picture.width * picture.height > MAX_SOURCE_PIXELS:
        raise InvalidRequest(
            f"That picture is {picture.width}x{picture.height}; the upscaler takes at most "
            f"{MAX_SOURCE_PIXELS // 1_000_000} megapixel. Pick a smaller picture."
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(
        prompt=prompt,
        image=picture.convert("RGB"),
        num_inference_steps=steps,
        noise_level=noise_level,
        generator=generator,
    )
    out = result.images[0]
    log.debug("upscaled %sx%s to %sx%s on %s", picture.width, picture.height, out.width, out.height, device)
    return out
