"""`python -m generation`: end to end in a subprocess, as a newcomer would run it."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.__main__ import main
from generation.media import have_ffprobe, read_png_metadata
from generation.media_probe import probe

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def cli_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_", "DEVICE", "EXTRA_"))}
    env.update(
        PYTHONPATH=str(REPO),
        MODEL_CACHE_DIR=str(cache_dir),
        HF_OFFLINE="true",
        DEVICE="cpu",
        DTYPE="auto",
        OMP_NUM_THREADS="1",
    )
    return env


def run_cli(args: list[str], *, cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "generation", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_image_end_to_end(tmp_path, tiny_model_cache, pipeline_manager):
    args = ["image", "a lighthouse", "--model", "tiny-image", "--steps", "2", "--seed", "1"]
    result = run_cli(
        [*args, "--width", "64", "--height", "64", "-o", "out.png"], cwd=tmp_path, cache_dir=tiny_model_cache
    )
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "out.png").read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.size == (64, 64)
    assert read_png_metadata(data)["seed"] == "1"
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and "seed=1" in summary[0] and "out.png" in summary[0] and "KiB" in summary[0]
    # the CLI and the bot's manager agree pixel for pixel
    from generation.params import validate_request

    request = validate_request(
        "image",
        {"prompt": "a lighthouse", "steps": 2, "seed": 1, "width": 64, "height": 64},
        pipeline_manager.registry["tiny-image"],
    )
    np.testing.assert_array_equal(np.asarray(image), np.asarray(pipeline_manager.run(request).images[0]))


@pytest.mark.slow
@pytest.mark.skipif(not have_ffprobe(), reason="ffprobe not installed")
def test_video_end_to_end_from_an_empty_cache_in_two_processes(tmp_path):
    """Two first runs race to build the twin into one empty cache; both succeed, identically."""
    cache = tmp_path / "cache"
    args = [
        "video",
        "PROMPT",
        "--model",
        "tiny-video",
        "--frames",
        "16",
        "--fps",
        "8",
        "--steps",
        "2",
        "--seed",
        "1",
        "--width",
        "64",
        "--height",
        "64",
    ]
    env = cli_env(cache)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "generation", *args, "-o", f"out{i}.mp4"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "seed=1" in out and "64x64x16@8fps" in out
    first, second = (tmp_path / "out0.mp4").read_bytes(), (tmp_path / "out1.mp4").read_bytes()
    assert first == second, "same seed, same twin, same encoder: same file"
    info = probe(first)
    assert (info["codec"], info["pix_fmt"], info["frames"], info["fps"]) == ("h264", "yuv420p", 16, 8.0)
    assert (info["width"], info["height"]) == (64, 64) and info["faststart"]
    assert [p.name for p in (cache / "tiny").iterdir()] == ["tiny-video-v1"], "no half-built copies left"


@pytest.mark.slow
def test_bad_input_exits_2_with_a_message(tmp_path, tiny_model_cache):
    result = run_cli(
        ["image", "a cat", "--model", "tiny-image", "--width", "4"], cwd=tmp_path, cache_dir=tiny_model_cache
    )
    assert result.returncode == 2
    assert "width must be a whole number from 32 to 512" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["image", "   ", "--model", "tiny-image"], "prompt is empty"),
        (["image", "x", "--model", "tiny-image", "--steps", "many"], "steps must be a whole number"),
        (["image", "x", "--model", "tiny-image", "--seed", "-5"], "seed must be"),
        (["image", "x", "--model", "tiny-video"], "makes videos"),
        (["image", "x", "--model", "nope"], "Unknown model 'nope'"),
        (["video", "x", "--model", "tiny-video", "--frames", "0"], "frames must be"),
        (["video", "x", "--model", "tiny-video", "--fps", "1000"], "fps must be"),
    ],
)
def test_every_bad_flag_is_named(tiny_model_cache, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tiny_model_cache))
    monkeypatch.setenv("HF_OFFLINE", "true")
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["painting", "x"])
    assert info.value.code == 2


def test_a_wrong_setting_is_one_line_naming_it(tiny_model_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tiny_model_cache))
    monkeypatch.setenv("EXTRA_MODELS", "sdxl-turbo")
    monkeypatch.chdir(tmp_path)
    assert main(["image", "x", "--model", "tiny-image"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: EXTRA_MODELS: must be a JSON object, e.g.")
