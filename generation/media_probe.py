"""Inspecting finished MP4s with ffprobe (tests and diagnostics; nothing on the serving path)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

from generation.media import FFPROBE, EncodeError, is_faststart, mp4_top_level_boxes

log = logging.getLogger(__name__)


def probe(source: str | Path | bytes) -> dict[str, Any]:
    """Codec, pixel format, size, frame count, fps and box order of an MP4, via ffprobe."""
    exe = FFPROBE if Path(FFPROBE).is_file() else shutil.which("ffprobe")
    if not exe:
        raise FileNotFoundError("ffprobe not found (install ffmpeg, or set FFPROBE)")
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        if isinstance(source, bytes):
            path = Path(tmp) / "in.mp4"
            path.write_bytes(source)
            data = source
        else:
            path = Path(source)
            data = path.read_bytes()
        result = subprocess.run(
            [exe, "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        raise EncodeError(f"ffprobe failed: {result.stderr.strip()[:300]}")
    info = json.loads(result.stdout)
    video = next((s for s in info.get("streams", []) if s.get("codec_type") == "video"), None)
    if video is None:
        raise EncodeError("no video stream")
    frames = video.get("nb_read_frames") or video.get("nb_frames") or 0
    return {
        "codec": video.get("codec_name"),
        "profile": video.get("profile"),
        "pix_fmt": video.get("pix_fmt"),
        "width": int(video.get("width", 0)),
        "height": int(video.get("height", 0)),
        "frames": int(frames),
        "fps": float(Fraction(video.get("avg_frame_rate") or video.get("r_frame_rate") or "0/1")),
        "duration": float(info.get("format", {}).get("duration", 0.0)),
        "format": info.get("format", {}).get("format_name"),
        "size": len(data),
        "boxes": mp4_top_level_boxes(data),
        "faststart": is_faststart(data),
    }
