"""Turning pipeline output into files a browser and Discord accept: PNG, H.264 MP4, posters.

MP4s are H.264 `yuv420p` with `+faststart` (the index before the data, so playback starts
before the download ends), encoded by imageio-ffmpeg's bundled ffmpeg from raw RGB frames
piped in. We do not use diffusers' `export_to_video`: without the `imageio` package it falls
back to OpenCV's `mp4v`, which browsers refuse, and it never writes faststart.

Everything here blocks (ffmpeg, zlib): call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, PngImagePlugin

if TYPE_CHECKING:
    from generation.params import GenerationRequest

log = logging.getLogger(__name__)

DEFAULT_CRF = 23
DEFAULT_PRESET = "medium"
#: fit_to_size never goes past this CRF (beyond it H.264 turns to mush); it scales down instead
MAX_FIT_CRF = 35
#: ... nor below this fraction of the original width and height
MIN_FIT_SCALE = 0.25
#: longest side of a progress preview sent to listeners
PREVIEW_MAX_SIDE = 256
FFPROBE = os.environ.get("FFPROBE", "/usr/bin/ffprobe")


class EncodeError(RuntimeError):
    """ffmpeg failed or was handed frames it cannot encode (a bug, not the member's fault)."""


class DoesNotFit(Exception):
    """No encode within the pass and quality limits fits `max_bytes`; deliver a link instead."""

    def __init__(self, message: str, best: FitResult) -> None:
        super().__init__(message)
        self.best = best


@dataclass(frozen=True)
class FitResult:
    """An encode that fits, and what it took: the CRF and scale used, and ffmpeg passes run."""

    data: bytes
    crf: int
    scale: float
    passes: int
    width: int
    height: int

    @property
    def size(self) -> int:
        return len(self.data)


# -- PNG ---------------------------------------------------------------------------------------


def encode_png(image: Image.Image, metadata: Mapping[str, Any], *, compress_level: int = 6) -> bytes:
    """PNG with every parameter as a UTF-8 text chunk, plus all of them as JSON in `parameters`.

    Anyone holding the file can read back the prompt, seed and settings that made it.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        if value is None:
            continue
        info.add_itxt(str(key), value if isinstance(value, str) else json.dumps(value))
    info.add_itxt("parameters", json.dumps(dict(metadata), default=str, ensure_ascii=False))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def read_png_metadata(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG made by `encode_png` (for rerolls and tests)."""
    with Image.open(io.BytesIO(data)) as image:
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


# -- MP4 ---------------------------------------------------------------------------------------


def _even(value: float) -> int:
    return max(2, round(value / 2.0) * 2)


def output_size(width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
    """The encoded size: scaled, then rounded to even numbers (yuv420p halves chroma)."""
    if scale == 1.0:
        return width + width % 2, height + height % 2
    return _even(width * scale), _even(height * scale)


def to_rgb_uint8(frame: Any) -> np.ndarray:
    """One frame as a contiguous uint8 HxWx3 array: floats in [0, 1] scaled, alpha dropped."""
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def frames_to_uint8(frames: Any) -> list[np.ndarray]:
    """A pipeline's video output (a float [0, 1] batch, or lists of PIL images or arrays) as a list
    of uint8 HxWx3 frames."""
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().float().cpu().numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim == 5:
            frames = frames[0]
        items = list(frames)
    else:
        items = list(frames[0]) if frames and isinstance(frames[0], list | tuple) else list(frames)
    return [to_rgb_uint8(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in items]


def _as_frames(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    items = list(frames)
    if not items:
        raise EncodeError("no frames to encode")
    first = np.asarray(items[0])
    if first.ndim != 3 or first.shape[2] not in (3, 4):
        raise EncodeError(f"frames must be HxWx3 RGB arrays, got shape {first.shape}")
    out = []
    for item in items:
        array = np.asarray(item)
        if array.shape[:2] != first.shape[:2]:
            raise EncodeError(f"frame sizes differ: {array.shape[:2]} vs {first.shape[:2]}")
        out.append(to_rgb_uint8(array))
    return out


def _video_filter(width: int, height: int, scale: float) -> str | None:
    out_w, out_h = output_size(width, height, scale)
    if (out_w, out_h) == (width, height):
        return None
    if scale == 1.0:
        # pad, not scale: odd sizes gain one black row/column and keep every pixel sharp
        return f"pad={out_w}:{out_h}:0:0"
    return f"scale={out_w}:{out_h}:flags=area"


def x264_output_params(*, crf: int, preset: str, vf: str | None) -> list[str]:
    """ffmpeg output flags shared by our encoder and the benchmark's CLI reference."""
    params = ["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"]
    if vf:
        params += ["-vf", vf]
    return params


def encode_mp4(
    frames: Sequence[np.ndarray] | np.ndarray,
    *,
    fps: int | float,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    scale: float = 1.0,
) -> bytes:
    """H.264 yuv420p +faststart MP4 of uint8 HxWx3 frames, any size (odd ones padded to even)."""
    import imageio_ffmpeg

    items = _as_frames(frames)
    height, width = items[0].shape[:2]
    if not 0 < scale <= 1.0:
        raise EncodeError(f"scale must be in (0, 1], got {scale}")
    if not 0 <= crf <= 51:
        raise EncodeError(f"crf must be 0-51, got {crf}")
    with tempfile.TemporaryDirectory(prefix="encode-") as tmp:
        path = Path(tmp) / "out.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=Fraction(fps).limit_denominator(1001),
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=x264_output_params(crf=crf, preset=preset, vf=_video_filter(width, height, scale)),
        )
        try:
            writer.send(None)
            for frame in items:
                writer.send(frame.tobytes())
        except (OSError, RuntimeError) as exc:
            raise EncodeError(f"ffmpeg failed while encoding: {exc}") from exc
        finally:
            try:
                writer.close()
            except RuntimeError as exc:  # ffmpeg exited non-zero
                raise EncodeError(f"ffmpeg failed: {exc}") from exc
        data = path.read_bytes()
    if not data:
        raise EncodeError("ffmpeg produced an empty file")
    return data


def fit_to_size(
    frames: Sequence[np.ndarray] | np.ndarray,
    *,
    fps: int | float,
    max_bytes: int,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    first: bytes | None = None,
    max_passes: int = 4,
) -> FitResult:
    """Encode so the MP4 is at most `max_bytes`: raise the CRF first, then scale down.

    `first` is an encode already made at `crf` (scale 1), so a file that fits costs nothing.
    Each further pass predicts the CRF/scale that should fit from the last size (x264's
    bitrate roughly halves every +6 CRF and follows the pixel count), so it usually takes
    one or two passes and never more than `max_passes`. Raises `DoesNotFit` otherwise.
    """
    items = _as_frames(frames)
    height, width = items[0].shape[:2]
    passes = 0
    if first is None:
        first = encode_mp4(items, fps=fps, crf=crf, preset=preset)
        passes += 1
    tried = [FitResult(data=first, crf=crf, scale=1.0, passes=passes, width=width, height=height)]
    # halvings of the media data per CRF step: 1/6 is x264's rule of thumb, then learned
    slope = 1 / 6
    while passes < max_passes:
        last = tried[-1]
        guess = _next_fit_try(last, max_bytes=max_bytes, crf=crf, slope=slope, tries=len(tried))
        if guess is None:
            break
        new_crf, new_scale = guess
        data = encode_mp4(items, fps=fps, crf=new_crf, preset=preset, scale=new_scale)
        passes += 1
        out_w, out_h = output_size(width, height, new_scale)
        result = FitResult(data=data, crf=new_crf, scale=new_scale, passes=passes, width=out_w, height=out_h)
        log.debug("fit_to_size pass %d: crf %d scale %.2f -> %d bytes", passes, new_crf, new_scale, len(data))
        if new_scale == last.scale and new_crf != last.crf and _payload(result) and _payload(last):
            measured = math.log2(_payload(last) / _payload(result)) / (new_crf - last.crf)
            slope = min(0.6, max(0.05, measured))
        tried.append(result)
    return _best_fit(tried, passes=passes, max_bytes=max_bytes, crf=crf)


def _payload(result: FitResult) -> int:
    """The media data of an encode: the index (moov) barely shrinks with quality."""
    return _mdat_size(result.data) or len(result.data)


def _next_fit_try(
    last: FitResult, *, max_bytes: int, crf: int, slope: float, tries: int
) -> tuple[int, float] | None:
    """The CRF and scale predicted to fit after `last`; None when no further pass is worth it."""
    room = max_bytes * 0.92 - (last.size - _payload(last))
    if room <= 0:
        return None
    if last.size <= max_bytes:
        # far under the limit (an overshoot) with passes to spare: give quality back once
        if last.size >= max_bytes * 0.5 or last.crf <= crf or tries > 2:
            return None
        new_crf = max(crf, last.crf + math.floor(math.log2(room / _payload(last)) / -slope))
        return min(new_crf, last.crf - 1), last.scale
    want = _payload(last) / room
    new_crf = min(MAX_FIT_CRF, last.crf + max(1, math.ceil(math.log2(want) / slope)))
    if new_crf != last.crf:
        return new_crf, last.scale
    # CRF is at its cap: scale down (the bits follow the pixel count ~^0.75)
    if last.scale <= MIN_FIT_SCALE:
        return None
    return new_crf, max(MIN_FIT_SCALE, last.scale / want ** (1 / 1.5))


def _best_fit(tried: list[FitResult], *, passes: int, max_bytes: int, crf: int) -> FitResult:
    """The least degraded encode that fits (largest scale, then lowest CRF); `DoesNotFit` if none."""
    fitting = [r for r in tried if r.size <= max_bytes]
    best = max(fitting, key=lambda r: (r.scale, -r.crf)) if fitting else min(tried, key=lambda r: r.size)
    best = FitResult(
        data=best.data, crf=best.crf, scale=best.scale, passes=passes, width=best.width, height=best.height
    )
    if len(best.data) > max_bytes:
        raise DoesNotFit(
            f"video is {len(best.data)} bytes at crf {best.crf}, scale {best.scale:.2f} "
            f"after {best.passes} passes; the limit is {max_bytes}",
            best,
        )
    if best.crf != crf or best.scale != 1.0:
        log.info(
            "re-encoded video to fit %d bytes: crf %d, scale %.2f, %d passes, %d bytes",
            max_bytes,
            best.crf,
            best.scale,
            best.passes,
            best.size,
        )
    return best


def decode_mp4(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Frames (uint8 HxWx3) and frame rate of an MP4 we wrote, to re-encode it smaller."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = reader.__next__()
        width, height = meta["size"]
        frames = [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
    finally:
        reader.close()
    if not frames:
        raise EncodeError(f"{path} holds no video frames")
    return frames, float(meta.get("fps") or 8)


def fit_file_to_size(path: str | Path, *, max_bytes: int) -> FitResult:
    """`fit_to_size` for a finished MP4 on disk (delivery learns the upload limit only then)."""
    frames, fps = decode_mp4(path)
    return fit_to_size(frames, fps=fps, max_bytes=max_bytes)


def preview_png(image: Image.Image) -> bytes:
    """A small PNG of a progress preview (at most 256 px, fast compression), for Discord edits,
    the REST API and Redis alike; blocking but cheap."""
    image = image.convert("RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image = image.copy()
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def poster_frame(frames: Sequence[np.ndarray] | np.ndarray, *, quality: int = 85) -> bytes:
    """JPEG of the middle frame: a still for embeds and for clients that do not autoplay."""
    items = list(frames)
    if not items:
        raise EncodeError("no frames for a poster")
    frame = _as_frames([items[len(items) // 2]])[0]
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


#: pixels between the tiles of a grid (one gap per row and column: 8 px in all on a 2x2)
GRID_PADDING = 8


def compose_grid(images: Sequence[Image.Image], *, padding: int = GRID_PADDING) -> Image.Image:
    """The tiles at full size, two to a row (1x2, 2x2): the layout members know from other bots."""
    cols = min(2, len(images))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * padding, rows * h + (rows - 1) * padding), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * (w + padding), (i // cols) * (h + padding)))
    return grid


# -- a finished file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode one result: its PNG text chunks, the H.264 quality, an optional size limit."""

    #: text chunks for a PNG (see `png_metadata`)
    png_metadata: Mapping[str, Any] = field(default_factory=dict)
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    #: re-encode (video) or fall back to JPEG (image) until the file fits; None: no limit
    max_bytes: int | None = None
    #: when the safety checker flagged a picture, encode it as generated rather than blacked out
    #: (for a delivery behind a spoiler, where the member's server allows it)
    unfiltered: bool = False


@dataclass(frozen=True)
class EncodedMedia:
    """A finished file ready to store, upload or serve, with what it took to make it."""

    data: bytes
    media_type: str
    suffix: str
    width: int
    height: int
    frames: int
    fps: int | None
    #: JPEG still for embeds (videos only)
    poster: bytes | None = None
    #: how the video was squeezed under `max_bytes` (None when no limit was given)
    fit: FitResult | None = None
    encode_s: float = 0.0
    #: the safety checker flagged the picture
    nsfw_detected: bool = False
    #: for a grid: each image alone, as PNG, in grid order (what U1..U4 post)
    parts: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data)


def png_metadata(request: GenerationRequest, *, job_id: str | None = None) -> dict[str, str]:
    """Text chunks that let anyone reproduce the image from the file alone."""
    meta = {"prompt": request.prompt, "model": request.model}
    if job_id is not None:
        meta["job_id"] = job_id
    for name in ("negative_prompt", "seed", "steps", "guidance", "width", "height"):
        value = getattr(request, name, None)
        if value is not None:
            meta[name] = str(value)
    return meta


# -- inspection (tests, diagnostics) ------------------------------------------------------------


def _top_level_boxes(data: bytes) -> Iterator[tuple[bytes, int]]:
    """(type, size) of each top-level MP4 box in file order; stops at a malformed header."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        if size < 8:
            break
        yield kind, size
        offset += size


def mp4_top_level_boxes(data: bytes) -> list[str]:
    """Top-level MP4 box types in file order; faststart means `moov` comes before `mdat`."""
    return [kind.decode("latin-1") for kind, _ in _top_level_boxes(data)]


def _mdat_size(data: bytes) -> int:
    return sum(size for kind, size in _top_level_boxes(data) if kind == b"mdat")


def is_faststart(data: bytes) -> bool:
    boxes = mp4_top_level_boxes(data)
    return "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")


def have_ffprobe() -> bool:
    return Path(FFPROBE).is_file() or shutil.which("ffprobe") is not None
