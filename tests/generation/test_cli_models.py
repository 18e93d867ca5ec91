"""`python -m generation` on every transformer-era twin: the MP4 a newcomer gets follows the model's rules."""

from __future__ import annotations

import io
import logging
import subprocess

import pytest
from PIL import Image

from generation.__main__ import main
from generation.media import have_ffprobe, read_png_metadata
from generation.media_probe import probe
from tests.generation.test_cli import run_cli

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(not have_ffprobe(), reason="ffprobe not installed")

SMALL = ["--steps", "2", "--seed", "3", "--width", "64", "--height", "64"]


@pytest.fixture
def cli(tmp_path, tiny_model_cache, monkeypatch, capsys):
    """The CLI's own `main` in this process (the subprocess path is tests/generation/test_cli.py)."""
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in ("HF_TOKEN", "EXTRA_MODELS", "DTYPE", "MEMORY_MODE", "MAX_STEPS", "DEFAULT_STEPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_OFFLINE", "true")

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        code = main([*args, "--device", "cpu", "--cache-dir", str(tiny_model_cache), "--no-progress"])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.mark.parametrize(
    ("model", "asked", "frames", "fps", "note"),
    [
        ("tiny-wan", "10", 9, 16.0, "tiny-wan makes 4k+1 frames: using 9 (asked 10)."),
        ("tiny-ltx", "20", 17, 24.0, "tiny-ltx makes 8k+1 frames: using 17 (asked 20)."),
        ("tiny-cogvideox", "9", 9, 8.0, None),
    ],
)
def test_each_video_twin_gives_an_h264_faststart_mp4_with_frames_by_its_rule(
    tmp_path, cli, model, asked, frames, fps, note
):
    result = cli(["video", "a paper boat", "--model", model, "--frames", asked, *SMALL, "-o", "out.mp4"])
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "out.mp4")
    assert (info["codec"], info["pix_fmt"], info["frames"], info["fps"]) == ("h264", "yuv420p", frames, fps)
    assert info["faststart"] and (info["width"], info["height"]) == (64, 64)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == ([f"note: {note}"] if note else [])
    assert f"64x64x{frames}@{int(fps)}fps" in result.stdout


@pytest.mark.slow
def test_image_to_video_from_a_png_routes_a_text_model_to_its_partner(tmp_path, tiny_model_cache, cli):
    Image.new("RGB", (96, 64), (220, 60, 20)).save(tmp_path / "in.png")
    result = run_cli(
        ["video", "the boat sails off", "--model", "tiny-wan", "--image", "in.png", *SMALL, "-o", "out.mp4"],
        cwd=tmp_path,
        cache_dir=tiny_model_cache,
    )
    assert result.returncode == 0, result.stderr
    assert "model=tiny-wan-i2v" in result.stdout
    info = probe(tmp_path / "out.mp4")
    assert (info["codec"], info["pix_fmt"], info["frames"]) == ("h264", "yuv420p", 9)

    missing = cli(["video", "x", "--model", "tiny-wan", "--image", str(tmp_path / "nope.png")])
    assert missing.returncode == 2 and "nope.png is not a file" in missing.stderr
    refused = cli(["video", "x", "--model", "tiny-video", "--image", str(tmp_path / "in.png")])
    assert refused.returncode == 2 and "cannot animate a picture" in refused.stderr


def test_sdxl_twin_writes_a_png_with_its_parameters(tmp_path, cli):
    result = cli(["image", "a lighthouse", "--model", "tiny-sdxl", *SMALL, "-o", "out.png"])
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "out.png").read_bytes()
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert read_png_metadata(data)["model"] == "tiny-sdxl"
