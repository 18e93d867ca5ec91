"""Finished jobs as files: encode the frames or image and write them under `RESULTS_DIR`.

Everything here blocks (PNG/H.264 encoding, disk): the in-process executor runs it on its
encode thread, so job k is encoded while the GPU thread already runs job k+1. Files are
written to a temporary name and renamed, so a crash never leaves a half file where a
delivery or the web server would find it.

Layout: ``RESULTS_DIR/<yyyy-mm>/<job id>.png`` or ``.mp4`` (plus ``<job id>.poster.jpg`` for
videos). The month folders keep directories small and make manual clean-up easy.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.jobs import Job
from bot.core.moderation import NSFW_SPOILER

log = logging.getLogger(__name__)

MEDIA_TYPES = {".png": "image/png", ".mp4": "video/mp4"}
#: longest side of a progress preview sent to listeners
PREVIEW_MAX_SIDE = 256


@dataclass(frozen=True)
class JobResult:
    """Where a finished job's file is and what it holds (enough to post it or serve it)."""

    path: str
    media_type: str
    size_bytes: int
    poster_path: str | None
    width: int
    height: int
    frames: int
    fps: int | None
    nsfw_detected: bool = False  # the safety checker flagged the picture

    def to_dict(self) -> dict[str, Any]:
        return {
            "nsfw_detected": self.nsfw_detected,
            "path": self.path,
            "media_type": self.media_type,
            "size_bytes": self.size_bytes,
            "poster_path": self.poster_path,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "fps": self.fps,
        }


class ResultWriter:
    """Encodes generation outputs into files under `results_dir` (blocking; not on the loop)."""

    def __init__(self, *, results_dir: str | Path, video_crf: int = 20, video_preset: str = "medium") -> None:
        self.results_dir = Path(results_dir)
        self.video_crf = video_crf
        self.video_preset = video_preset

    def path_for(self, job: Job, suffix: str) -> Path:
        month = job.created_at.strftime("%Y-%m")
        return self.results_dir / month / f"{job.id}{suffix}"

    def write(self, job: Job, output: Any) -> JobResult:
        """Encode `output` (a `generation.pipelines.GenerationOutput`) for `job`."""
        from generation import media

        request = output.request
        if output.frames:
            frames = output.frames
            height, width = frames[0].shape[:2]
            fps = int(getattr(request, "fps", 8) or 8)
            data = media.encode_mp4(frames, fps=fps, crf=self.video_crf, preset=self.video_preset, scale=1)
            path = self.path_for(job, ".mp4")
            poster = self.path_for(job, ".poster.jpg")
            _write_atomic(poster, media.poster_frame(frames))
            _write_atomic(path, data)
            return JobResult(
                path=str(path),
                media_type="video/mp4",
                size_bytes=len(data),
                poster_path=str(poster),
                width=int(width),
                height=int(height),
                frames=len(frames),
                fps=fps,
            )
        if not output.images:
            raise ValueError(f"job {job.id}: the generation produced neither frames nor images")
        image = output.images[0]
        flagged = bool(getattr(output, "nsfw_detected", False))
        if flagged and job.nsfw_action == NSFW_SPOILER and getattr(output, "unfiltered", None):
            image = output.unfiltered[0]  # posted behind a spoiler, in an age-restricted channel only
        data = media.encode_png(image, png_metadata(job, request))
        path = self.path_for(job, ".png")
        _write_atomic(path, data)
        return JobResult(
            path=str(path),
            media_type="image/png",
            size_bytes=len(data),
            poster_path=None,
            width=int(image.width),
            height=int(image.height),
            frames=1,
            fps=None,
            nsfw_detected=flagged,
        )

    def result_for(self, job: Job) -> JobResult | None:
        """Rebuild the result of an already finished job from its record (blocking: stats files)."""
        if not job.result_path:
            return None
        path = Path(job.result_path)
        try:
            size = path.stat().st_size
        except OSError:
            log.warning("job %s: result file %s is gone", job.id, path)
            return None
        params = job.params or {}
        poster = path.with_name(f"{job.id}.poster.jpg")
        video = path.suffix == ".mp4"
        return JobResult(
            path=str(path),
            media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
            size_bytes=size,
            poster_path=str(poster) if video and poster.exists() else None,
            width=int(params.get("width") or 0),
            height=int(params.get("height") or 0),
            frames=int(params.get("frames") or 1) if video else 1,
            fps=int(params.get("fps") or 8) if video else None,
            nsfw_detected=job.nsfw_detected,
        )


def png_metadata(job: Job, request: Any) -> dict[str, str]:
    """Text chunks that let anyone reproduce the image from the file alone."""
    meta = {
        "prompt": job.prompt,
        "model": job.model,
        "job_id": job.id,
    }
    for name in ("negative_prompt", "seed", "steps", "guidance", "width", "height"):
        value = getattr(request, name, None)
        if value is not None:
            meta[name] = str(value)
    return meta


def preview_png(image: Any) -> bytes:
    """A small PNG of a progress preview (a PIL image); blocking, cheap (<= 256 px)."""
    image = image.convert("RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image = image.copy()
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
