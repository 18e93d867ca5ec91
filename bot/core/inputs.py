"""Input pictures (for image-to-image and image-to-video): checked, then kept under ``RESULTS_DIR/inputs``.

Every way in (a Discord attachment, a REST base64 field, the Animate button's result file) ends
here, so the caps and the content check are written once. The picture is kept on disk beside
the results and its path goes into the request's ``image`` parameter: a job recovered after a
crash runs again from the same file, and ``/admin forget`` deletes it with the member's results
(:func:`input_files`). Everything here blocks (PIL, disk): call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from generation.errors import InvalidRequest
from generation.files import part_path, write_atomic

if TYPE_CHECKING:
    from bot.core.jobs import Job

log = logging.getLogger(__name__)

#: what PIL calls the formats we take, and the suffix the kept file gets
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
INPUTS_FOLDER = "inputs"
#: the upscaler is conditioned on a prompt; a picture that comes without one gets this
DEFAULT_UPSCALE_PROMPT = "a sharp, detailed picture"


@dataclass(frozen=True)
class InputLimits:
    """The caps on one input picture (`INPUT_IMAGE_MAX_BYTES`, `INPUT_IMAGE_MAX_PIXELS`)."""

    max_bytes: int
    max_pixels: int


def inputs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / INPUTS_FOLDER


def check_image(data: bytes, limits: InputLimits, *, name: str = "image") -> str:
    """The kept file's suffix, once `data` is a whole PNG, JPEG or WebP within the caps.

    The header's size is checked before any pixel is decoded, so a decompression bomb costs
    nothing; then the picture is decoded in full, so a truncated file is refused here and not
    in the GPU worker.
    """
    if not data:
        raise InvalidRequest(f"{name} is empty: attach a PNG, JPEG or WebP picture.")
    if len(data) > limits.max_bytes:
        raise InvalidRequest(
            f"{name} is {len(data) / 1e6:.1f} MB; the most this bot takes is {limits.max_bytes / 1e6:.1f} MB."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                fmt, (width, height) = picture.format, picture.size
                if fmt not in FORMATS:
                    raise InvalidRequest(
                        f"{name} must be a PNG, JPEG or WebP picture, not {fmt or 'unknown'}."
                    )
                _check_pixels(width, height, limits, name)
                picture.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"{name} is not a readable PNG, JPEG or WebP picture.") from None
    return FORMATS[fmt]


def _check_pixels(width: int, height: int, limits: InputLimits, name: str) -> None:
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{name} is {width}x{height} pixels; the most this bot takes is {limits.max_pixels:,} pixels."
        )


def keep_input(results_dir: str | Path, data: bytes, limits: InputLimits, *, name: str = "image") -> str:
    """Check `data` and keep it under the inputs folder; returns its path for the request."""
    suffix = check_image(data, limits, name=name)
    path = inputs_dir(results_dir) / f"{uuid.uuid4().hex}{suffix}"
    write_atomic(path, data)
    log.info("kept an input picture of %d bytes as %s", len(data), path.name)
    return str(path)


def keep_result_as_input(results_dir: str | Path, result: str | Path, limits: InputLimits) -> str:
    """A copy of a finished result as an input: the new job then owns its picture, so deleting
    either job's files never takes the other's."""
    try:
        data = Path(result).read_bytes()
    except OSError:
        raise InvalidRequest("That picture is no longer kept, so it cannot be used again.") from None
    return keep_input(results_dir, data, limits)


def keep_result_picture(results_dir: str | Path, job: Job, n: int, limits: InputLimits, *, use: str) -> str:
    """A copy of image `n` of a finished image job kept as an input, so that a new job keeps its
    picture even if that result is deleted; `use` ("animated", "upscaled") words the refusal."""
    if job.kind != "image" or not job.result_path or not 1 <= n <= job.units:
        raise InvalidRequest(f"That picture is gone, so it cannot be {use}.")
    source = Path(job.result_path)
    if job.units > 1:
        source = part_path(source, job.id, n)
    return keep_result_as_input(results_dir, source, limits)


def picture_size(path: str | Path) -> tuple[int, int]:
    """Width and height of a kept (already checked) input picture."""
    with Image.open(path) as picture:
        return picture.size


def upscale_params(image: str, prompt: str) -> dict[str, Any]:
    """The request to upscale a kept input picture: at its own size, so the result is the
    upscaler's factor times it (Discord's Upscale and the REST API ask the same way)."""
    width, height = picture_size(image)
    return {"prompt": prompt, "image": image, "width": width, "height": height}


def decode_base64(text: str, *, name: str = "image") -> bytes:
    """A picture sent as base64 text (a `data:image/...;base64,` prefix is allowed)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"{name} must be base64 (standard alphabet) of a PNG, JPEG or WebP file."
        ) from None


def input_files(paths: Iterable[str | None]) -> list[str]:
    """The paths among `paths` that are kept inputs: only those are deleted with a request (an
    input path always comes from :func:`keep_input`, never from a member)."""
    return [p for p in paths if p and Path(p).parent.name == INPUTS_FOLDER]
