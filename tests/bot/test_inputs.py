"""Input pictures: only whole PNG/JPEG/WebP files within the caps are kept, under RESULTS_DIR/inputs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from bot.core.inputs import InputLimits, decode_base64, input_files, keep_input, keep_result_as_input
from generation.errors import InvalidRequest

LIMITS = InputLimits(max_bytes=100_000, max_pixels=128 * 128)


def picture(fmt: str = "PNG", size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 10)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_a_picture_is_kept_under_inputs_with_its_own_suffix(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = picture(fmt)
    path = Path(keep_input(tmp_path, data, LIMITS))
    assert path.parent == tmp_path / "inputs" and path.suffix == suffix
    assert path.read_bytes() == data
    assert input_files([str(path), str(tmp_path / "2026-11" / "x.png"), None]) == [str(path)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"just some text\n", "not a readable"),
        (b"", "empty"),
        (picture()[:60], "not a readable"),  # truncated
        (picture("GIF"), "PNG, JPEG or WebP"),
        (picture(size=(256, 256)), "pixels"),
        (b"\x89PNG" + bytes(200_000), "MB"),
    ],
)
def test_anything_else_is_refused_politely_and_nothing_is_kept(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        keep_input(tmp_path, data, LIMITS)
    assert not (tmp_path / "inputs").exists() or not any((tmp_path / "inputs").iterdir())


def test_base64_with_or_without_a_data_url_prefix_and_garbage_refused() -> None:
    data = picture()
    text = base64.b64encode(data).decode()
    assert decode_base64(text) == data
    assert decode_base64("data:image/png;base64," + text) == data
    with pytest.raises(InvalidRequest, match="base64"):
        decode_base64("not base64 at all!")


def test_a_result_is_copied_so_each_job_owns_its_input(tmp_path: Path) -> None:
    result = tmp_path / "2026-11" / "job.png"
    result.parent.mkdir()
    result.write_bytes(picture())
    copy = Path(keep_result_as_input(tmp_path, result, LIMITS))
    assert copy != result and copy.read_bytes() == result.read_bytes()
    result.unlink()
    with pytest.raises(InvalidRequest, match="no longer kept"):
        keep_result_as_input(tmp_path, result, LIMITS)
