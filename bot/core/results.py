"""Where finished results live for the bot: ``RESULTS_DIR/<yyyy-mm>/<job id>.png`` or ``.mp4``
(plus ``<job id>.poster.jpg`` for videos), and how a result is found again from its record.

Encoding is not done here: the runner (:mod:`generation.runner`) hands both executors an encoded
file, and :meth:`ResultWriter.save` only puts it in place, with the one atomic write and file
layout of :mod:`generation.files`. The month folders keep directories small and make manual
clean-up easy. Everything here blocks (disk): call it off the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.jobs import Job
from generation.files import poster_path, result_path, save_encoded
from generation.media import EncodedMedia

log = logging.getLogger(__name__)

MEDIA_TYPES = {".png": "image/png", ".mp4": "video/mp4"}


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
    """Puts encoded results under `results_dir` and finds them again (blocking; not on the loop)."""

    def __init__(self, *, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)

    def folder_for(self, job: Job) -> Path:
        return self.results_dir / job.created_at.strftime("%Y-%m")

    def path_for(self, job: Job, suffix: str) -> Path:
        return result_path(self.folder_for(job), job.id, suffix)

    def save(self, job: Job, encoded: EncodedMedia) -> JobResult:
        """Write `encoded` (and its poster) for `job`."""
        saved = save_encoded(self.folder_for(job), job.id, encoded)
        return JobResult(
            path=str(saved.path),
            media_type=encoded.media_type,
            size_bytes=encoded.size,
            poster_path=str(saved.poster_path) if saved.poster_path is not None else None,
            width=encoded.width,
            height=encoded.height,
            frames=encoded.frames,
            fps=encoded.fps,
            nsfw_detected=encoded.nsfw_detected,
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
        poster = poster_path(path, job.id)
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
