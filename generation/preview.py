"""Cheap progress previews straight from the latents, for every latent space, without the VAE decoder.

A VAE's latent space maps to RGB almost linearly: a (channels + 1) x 3 matrix gives a
recognisable thumbnail for the cost of one small matmul (the "latent preview" that ComfyUI
and A1111 ship as fixed tables per model family, e.g. ComfyUI's `comfy/latent_formats.py`).
Rather than keep a table per family (SD's 4 channels, SDXL's, Wan 2.1's 16, Wan 2.2's 48,
LTX's 128, CogVideoX's 16, and whatever `EXTRA_MODELS` brings), we fit the matrix for the
VAE actually loaded: once per model load, the VAE encodes one small picture of 64 flat
colours, and a ridge least-squares fit maps each latent pixel to its colour. The fit sees the
latents exactly as the denoising loop does (`families.latent_space`), so the same matrix
applies to the step callback's latents. Measured cost: README, "Previews".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from generation import families
from generation.params import GenerationRequest

log = logging.getLogger(__name__)

#: calibration picture: PATCHES x PATCHES flat colours, each at least one latent pixel wide and
#: at least MIN_PATCH pixels (two latent pixels of an 8x VAE), so most latent pixels see one colour
PATCHES = 8
MIN_PATCH = 16
_LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
_RIDGE = 1e-3


def calibration_colours() -> np.ndarray:
    """The 64 colours (RGB in [0, 1]) of the calibration picture, row by row."""
    return np.array([(r, g, b) for r in _LEVELS for g in _LEVELS for b in _LEVELS], dtype=np.float64)


def calibration_image(patch: int) -> np.ndarray:
    """(3, H, W) float in [0, 1]: the colours as a PATCHES x PATCHES grid of flat `patch`-pixel squares."""
    grid = calibration_colours().reshape(PATCHES, PATCHES, 3)
    pixels = grid.repeat(patch, axis=0).repeat(patch, axis=1)
    return pixels.transpose(2, 0, 1)


def spatial_factor(pipe: Any) -> int:
    """How many pixels one latent pixel covers, under the name each pipeline family uses."""
    for name in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor"):
        value = getattr(pipe, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 8


@dataclass
class LatentPreviewer:
    """Latents -> RGB thumbnail for one loaded pipeline; `factors` is (channels + 1) x 3, bias last."""

    pipeline: str
    factors: torch.Tensor
    fit_s: float = 0.0

    @classmethod
    def fit(cls, pipeline: str, pipe: Any) -> LatentPreviewer | None:
        """Fit the matrix on `pipe`'s VAE; None (no previews) when it has no VAE encoder."""
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "encode"):
            return None
        t0 = time.perf_counter()
        try:
            latents = _encode_calibration(pipeline, pipe, vae)
        except Exception:
            log.warning("%s: no latent previews (calibration encode failed)", pipeline, exc_info=True)
            return None
        factors = _ridge_fit(latents)
        fit_s = time.perf_counter() - t0
        log.info("%s: latent preview fitted on %d channels in %.3fs", pipeline, latents.shape[0], fit_s)
        return cls(pipeline=pipeline, factors=torch.from_numpy(factors).float(), fit_s=fit_s)

    def render(
        self, pipe: Any, latents: torch.Tensor, request: GenerationRequest, *, min_side: int = 128
    ) -> Image.Image:
        """Thumbnail of the first sample's middle frame (nearest-neighbour upscaled to `min_side`)."""
        frame = families.middle_frame(self.pipeline, pipe, latents.detach(), request).float()
        factors = self.factors.to(frame.device)
        rgb = torch.einsum("chw,cd->hwd", frame, factors[:-1]) + factors[-1]
        pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        image = Image.fromarray(pixels)
        short = min(image.size)
        if 0 < short < min_side:
            factor = -(-min_side // short)
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        return image


@torch.no_grad()
def _encode_calibration(pipeline: str, pipe: Any, vae: Any) -> np.ndarray:
    """(channels + 3, N): the latent pixels of the calibration picture, each with its colour."""
    patch = max(MIN_PATCH, spatial_factor(pipe))
    picture = torch.from_numpy(calibration_image(patch)).float() * 2 - 1
    batch = picture.unsqueeze(0)
    if families.family(pipeline) in ("wan", "ltx", "cogvideox"):
        batch = batch.unsqueeze(2)  # one frame of video
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    raw = vae.encode(batch.to(device=device, dtype=vae.dtype)).latent_dist.mode()
    latents = families.latent_space(pipeline, vae, raw.float())
    if latents.ndim == 5:
        latents = latents[:, :, 0]
    channels, h, w = latents.shape[1:]
    colours = calibration_colours().reshape(PATCHES, PATCHES, 3)
    # each latent pixel takes the colour of the patch under its centre
    rows = ((np.arange(h) + 0.5) * PATCHES / h).astype(int)
    cols = ((np.arange(w) + 0.5) * PATCHES / w).astype(int)
    targets = colours[rows][:, cols].reshape(-1, 3).T
    flat = latents[0].reshape(channels, -1).double().cpu().numpy()
    return np.concatenate([flat, targets], axis=0)


def _ridge_fit(samples: np.ndarray) -> np.ndarray:
    """Least squares RGB = [z, 1] @ M with a small ridge (latent channels often outnumber colours)."""
    z, y = samples[:-3].T, samples[-3:].T
    x = np.concatenate([z, np.ones((z.shape[0], 1))], axis=1)
    gram = x.T @ x
    penalty = _RIDGE * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    return np.linalg.solve(gram + penalty, x.T @ y)
