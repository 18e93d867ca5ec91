"""Media: PNGs carry their parameters; MP4s are H.264 yuv420p with faststart and fit the limit."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from generation.media import (
    DoesNotFit,
    EncodeOptions,
    encode_mp4,
    encode_png,
    fit_to_size,
    have_ffprobe,
    is_faststart,
    mp4_top_level_boxes,
    png_metadata,
    poster_frame,
    read_png_metadata,
)
from generation.media_probe import probe
from generation.params import validate_request

log = logging.getLogger(__name__)

needs_ffprobe = pytest.mark.skipif(not have_ffprobe(), reason="ffprobe not installed (apt install ffmpeg)")


def textured_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Moving gradients plus noise: compressible, but not trivially, like real footage."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        base = np.stack([(xs * 3 + i * 8) % 256, (ys * 2 + i * 5) % 256, (xs + ys + i * 3) % 256], axis=-1)
        noise = rng.normal(0, 12, size=base.shape)
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def tiny_video(pipeline_manager, tiny_registry):
    request = validate_request(
        "video",
        {"prompt": "a paper boat", "seed": 3, "steps": 2, "frames": 16, "fps": 8, "width": 64, "height": 64},
        tiny_registry["tiny-video"],
    )
    return request, pipeline_manager.run(request).frames


def test_png_keeps_pixels_and_parameters(pipeline_manager, tiny_registry):
    request = validate_request(
        "image", {"prompt": "ein Fuchs im Schnee ❄", "seed": 11, "steps": 2}, tiny_registry["tiny-image"]
    )
    image = pipeline_manager.run(request).images[0]
    data = encode_png(image, request.to_dict())
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
    text = read_png_metadata(data)
    assert text["prompt"] == "ein Fuchs im Schnee ❄"
    assert text["seed"] == "11" and text["model"] == "tiny-image"
    assert "negative_prompt" not in text
    # the same request renders to the same file, byte for byte
    again = encode_png(pipeline_manager.run(request).images[0], request.to_dict())
    assert again == data


@needs_ffprobe
def test_tiny_video_mp4_is_browser_ready(tiny_video):
    request, frames = tiny_video
    data = encode_mp4(frames, fps=request.fps)
    info = probe(data)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (64, 64)
    assert info["frames"] == 16
    assert info["fps"] == pytest.approx(8.0)
    assert info["duration"] == pytest.approx(2.0, abs=0.01)
    assert info["faststart"], f"moov must precede mdat, got {info['boxes']}"


@needs_ffprobe
@pytest.mark.parametrize(("width", "height"), [(81, 63), (33, 17), (2, 2)])
def test_odd_sizes_are_padded_to_even(width, height):
    data = encode_mp4(textured_frames(5, width, height), fps=10)
    info = probe(data)
    assert (info["width"], info["height"]) == (width + width % 2, height + height % 2)
    assert info["frames"] == 5 and info["pix_fmt"] == "yuv420p"


def test_faststart_is_checked_on_the_boxes_themselves():
    data = encode_mp4(textured_frames(4, 32, 32), fps=4)
    boxes = mp4_top_level_boxes(data)
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")
    assert is_faststart(data)
    moov_last = _move_moov_to_end(data)
    assert not is_faststart(moov_last)


def _move_moov_to_end(data: bytes) -> bytes:
    import struct

    chunks, offset = [], 0
    while offset < len(data):
        size = struct.unpack(">I", data[offset : offset + 4])[0]
        chunks.append(data[offset : offset + size])
        offset += size
    moov = [c for c in chunks if c[4:8] == b"moov"]
    return b"".join([c for c in chunks if c[4:8] != b"moov"] + moov)


def test_lower_crf_means_bigger_file():
    frames = textured_frames(8, 128, 96)
    assert len(encode_mp4(frames, fps=8, crf=18)) > len(encode_mp4(frames, fps=8, crf=30))


@needs_ffprobe
def test_fit_to_size_gets_under_the_limit_and_stays_valid():
    frames = textured_frames(24, 192, 128, seed=1)
    first = encode_mp4(frames, fps=12)
    limit = len(first) // 5
    result = fit_to_size(frames, fps=12, max_bytes=limit, first=first)
    assert result.size <= limit
    assert 1 <= result.passes <= 4
    assert result.crf > 23 or result.scale < 1.0
    info = probe(result.data)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["faststart"]
    assert info["frames"] == 24
    assert (info["width"], info["height"]) == (result.width, result.height)


@needs_ffprobe
def test_fit_to_size_scales_down_when_crf_is_not_enough():
    frames = textured_frames(24, 320, 192, seed=2)
    first = encode_mp4(frames, fps=8)
    limit = len(first) // 30
    result = fit_to_size(frames, fps=8, max_bytes=limit, first=first)
    assert result.size <= limit and result.scale < 1.0 and result.crf == 35
    info = probe(result.data)
    assert info["width"] < 320 and info["width"] % 2 == 0 and info["frames"] == 24


@needs_ffprobe
def test_fit_gives_quality_back_after_an_overshoot():
    """Noise-like content shrinks far faster with CRF than the rule of thumb: the fit backs off."""
    frames = textured_frames(24, 192, 128, seed=1)
    first = encode_mp4(frames, fps=12)
    limit = len(first) // 5
    result = fit_to_size(frames, fps=12, max_bytes=limit, first=first)
    assert limit * 0.4 <= result.size <= limit
    assert result.scale == 1.0 and 23 < result.crf < 35


def test_fit_to_size_that_already_fits_costs_nothing():
    frames = textured_frames(4, 64, 64)
    first = encode_mp4(frames, fps=4)
    result = fit_to_size(frames, fps=4, max_bytes=len(first), first=first)
    assert result.passes == 0 and result.data == first


def test_impossible_fit_raises_with_the_best_attempt():
    frames = textured_frames(8, 128, 128)
    with pytest.raises(DoesNotFit) as info:
        fit_to_size(frames, fps=8, max_bytes=200, max_passes=2)
    assert 1 <= info.value.best.passes <= 2 and info.value.best.size > 200


def test_poster_frame_is_a_jpeg_of_the_middle_frame():
    frames = [np.full((40, 60, 3), value, dtype=np.uint8) for value in (0, 100, 200)]
    data = poster_frame(frames)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (60, 40)
    assert abs(int(np.asarray(image).mean()) - 100) <= 2


@needs_ffprobe
def test_encode_output_for_the_runner(pipeline_manager, tiny_video):
    from generation.runner import encode_output

    request, _ = tiny_video
    output = pipeline_manager.run(request)
    encoded = encode_output(output, EncodeOptions(max_bytes=1_000_000))
    assert (encoded.suffix, encoded.media_type) == (".mp4", "video/mp4")
    assert (encoded.frames, encoded.fps) == (request.frames, request.fps)
    assert encoded.fit is not None and encoded.fit.passes == 0, "a small clip fits at once"
    assert encoded.poster is not None and encoded.poster[:2] == b"\xff\xd8"
    assert output.timings["encode"] == encoded.encode_s > 0
    assert probe(encoded.data)["frames"] == request.frames


def test_encode_output_image_falls_back_to_jpeg_then_gives_up(pipeline_manager, tiny_registry):
    from generation.runner import encode_output

    request = validate_request(
        "image", {"prompt": "dunes", "seed": 4, "steps": 2}, tiny_registry["tiny-image"]
    )
    output = pipeline_manager.run(request)
    meta = png_metadata(request, job_id="j1")
    png = encode_output(output, EncodeOptions(png_metadata=meta))
    assert png.media_type == "image/png" and png.suffix == ".png" and png.poster is None
    text = read_png_metadata(png.data)
    assert (text["prompt"], text["seed"], text["job_id"]) == ("dunes", "4", "j1")
    jpeg = encode_output(output, EncodeOptions(png_metadata=meta, max_bytes=png.size - 1))
    assert jpeg.media_type == "image/jpeg" and jpeg.suffix == ".jpg" and jpeg.size < png.size
    with pytest.raises(DoesNotFit):
        encode_output(output, EncodeOptions(png_metadata=meta, max_bytes=100))
