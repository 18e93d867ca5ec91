"""Image-to-image on the weights already resident: `from_pipe` builds the variant from the loaded
text-to-image pipeline's own components, so starting from a picture costs no extra memory.

diffusers' `AutoPipelineForImage2Image` picks the variant of each family
(`StableDiffusionPipeline` -> `StableDiffusionImg2ImgPipeline`, SDXL -> its img2img twin).
"""

from __future__ import annotations

import logging
from typing import Any

from generation.errors import InvalidRequest

log = logging.getLogger(__name__)


def image_to_image(pipe: Any, model_id: str) -> Any:
    """The image-to-image variant of `pipe`, sharing its modules (and their devices and hooks)."""
    from diffusers import AutoPipelineForImage2Image

    try:
        variant = AutoPipelineForImage2Image.from_pipe(pipe)
    except (ValueError, KeyError, TypeError) as exc:
        log.info("model %s has no image-to-image variant: %s", model_id, exc)
        raise InvalidRequest(
            f"Model {model_id!r} cannot start from a picture; choose another model."
        ) from None
    variant.set_progress_bar_config(disable=True)
    return variant


def pipe_for(resident: Any, request: Any) -> tuple[Any, Any]:
    """The pipeline (and its call signature) that runs `request` on a resident model: the model's
    own, or its image-to-image variant, built on first use and kept beside it."""
    from generation.families import CallSignature

    if getattr(request, "image", None) is None or request.kind != "image":
        return resident.pipe, resident.signature
    if resident.img2img is None:
        variant = image_to_image(resident.pipe, resident.spec.id)
        resident.img2img = (variant, CallSignature.of(variant))
    return resident.img2img
