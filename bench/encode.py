"""`python -m bench encode`: our MP4 encoder against the bundled ffmpeg CLI on the same frames.

Both sides run the same ffmpeg binary (imageio-ffmpeg's) with the same x264 settings (CRF 23,
preset medium, yuv420p, +faststart), so the ratio measures only what our path adds: piping
frames from Python instead of reading a raw file, and the temporary-file round trip. The two
run alternately (interleaved medians) so drift on the shared machine hits both alike.

Cases: 16 frames at 256x256 (a damo default clip) and 64 frames at 576x320 (a long zeroscope
clip). Target: ours / CLI <= 1.2 for each.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.common import emit, interleaved_medians
from generation.media import DEFAULT_CRF, DEFAULT_PRESET, encode_mp4, is_faststart, x264_output_params

log = logging.getLogger(__name__)

CASES = ((16, 256, 256), (64, 576, 320))
FPS = 8
TARGET_RATIO = 1.2


def synthetic_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Moving smooth shapes plus mild grain: compresses like generated footage, not like noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        r = 128 + 100 * np.sin(xs / 23.0 + 6.0 * t)
        g = 128 + 100 * np.sin(ys / 17.0 - 4.0 * t)
        b = 128 + 100 * np.sin((xs + ys) / 31.0 + 2.0 * t)
        image = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, size=(height, width, 3))
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


def cli_encode(raw: Path, out: Path, *, width: int, height: int, fps: int) -> int:
    """The reference: the bundled ffmpeg reading the raw RGB file, same settings as ours."""
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-v",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        str(raw),
        "-vcodec",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        *x264_output_params(crf=DEFAULT_CRF, preset=DEFAULT_PRESET, vf=None),
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.stat().st_size


def main(args: list[str]) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench encode")
    parser.add_argument("--repeats", type=int, default=7, help="runs per side per case (median)")
    opts = parser.parse_args(args)

    figures: dict[str, dict[str, float | int | bool]] = {}
    passed = True
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        for count, width, height in CASES:
            name = f"{count}x{width}x{height}"
            frames = synthetic_frames(count, width, height)
            raw = Path(tmp) / f"{name}.rgb"
            raw.write_bytes(b"".join(f.tobytes() for f in frames))
            out = Path(tmp) / f"{name}.mp4"
            ours = encode_mp4(frames, fps=FPS)  # warm-up, and the file size for the record
            assert is_faststart(ours)
            cli_size = cli_encode(raw, out, width=width, height=height, fps=FPS)
            reference = out.read_bytes()
            medians = interleaved_medians(
                {
                    "ours": lambda frames=frames: encode_mp4(frames, fps=FPS),
                    "cli": lambda raw=raw, out=out, w=width, h=height: cli_encode(
                        raw, out, width=w, height=h, fps=FPS
                    ),
                },
                repeats=opts.repeats,
            )
            ratio = medians["ours"] / medians["cli"]
            passed = passed and ratio <= TARGET_RATIO
            figures[name] = {
                "ours_s": round(medians["ours"], 4),
                "cli_s": round(medians["cli"], 4),
                "ratio": round(ratio, 3),
                "ours_bytes": len(ours),
                "cli_bytes": cli_size,
                # same binary, same flags, same frames: the files should be identical
                "identical": ours == reference,
                "repeats": opts.repeats,
            }
    emit("encode", figures, passed=passed, target=f"ours/cli <= {TARGET_RATIO} for every case")
    return passed
