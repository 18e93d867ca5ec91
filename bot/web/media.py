"""Result files as the web server serves them: content types and video poster frames.

The worker hands each finished job's poster path to queue listeners (`JobResult.poster_path`);
the job record itself keeps only the result file. :class:`PosterIndex` listens and remembers
recent posters, and after a restart (or for a result without one) finds a poster beside the
video or extracts the first frame once with ffmpeg, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

from bot.core.queue import BaseJobListener

log = logging.getLogger(__name__)

MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}
POSTER_SUFFIXES = (".poster.png", ".poster.jpg", "_poster.png", "_poster.jpg", "-poster.png", "-poster.jpg")
MAX_REMEMBERED = 512
FFMPEG_TIMEOUT_S = 30.0


def media_type(path: str | Path) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def sniff_image_type(path: Path) -> str:
    """The image type from the file's first bytes (blocking; call it in a thread).

    Posters are named by convention (`<id>.poster.png`) but may hold JPEG data, and we send
    `nosniff`, so the header has to be right.
    """
    with path.open("rb") as f:
        head = f.read(12)
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return media_type(path)


def is_video(path: str | Path) -> bool:
    return media_type(path).startswith("video/")


class PosterIndex(BaseJobListener):
    """Poster frame of each video result; also a queue listener (only `on_finished` matters)."""

    def __init__(self, *, results_dir: str | Path) -> None:
        self._dir = Path(results_dir) / "posters"
        self._known: OrderedDict[str, Path] = OrderedDict()
        # one extraction at a time: they are rare (once per video) and CPU-heavy
        self._lock = asyncio.Lock()

    # queue listener ------------------------------------------------------------------------
    async def on_finished(self, job: Any, result: Any) -> None:
        poster = getattr(result, "poster_path", None) if result is not None else None
        if poster:
            self.remember(job.id, Path(poster))

    # lookup --------------------------------------------------------------------------------
    def remember(self, job_id: str, poster: Path) -> None:
        self._known[job_id] = poster
        self._known.move_to_end(job_id)
        while len(self._known) > MAX_REMEMBERED:
            self._known.popitem(last=False)

    async def poster_for(self, job_id: str, video: Path) -> Path | None:
        """An existing poster image for `video`, extracting one if needed; None if impossible."""
        known = self._known.get(job_id)
        if known is not None and await asyncio.to_thread(known.is_file):
            return known
        async with self._lock:
            found = await asyncio.to_thread(self._find_or_extract, job_id, video)
        if found is not None:
            self.remember(job_id, found)
        return found

    def _find_or_extract(self, job_id: str, video: Path) -> Path | None:
        stem = video.with_suffix("")
        for suffix in POSTER_SUFFIXES:
            candidate = Path(f"{stem}{suffix}")
            if candidate.is_file():
                return candidate
        target = self._dir / f"{job_id}.jpg"
        if target.is_file():
            return target
        if not video.is_file():
            return None
        return extract_first_frame(video, target)


def extract_first_frame(video: Path, target: Path) -> Path | None:
    """Write the video's first frame as a JPEG (blocking: call it in a thread)."""
    import imageio_ffmpeg

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp.jpg")
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(video),
        "-frames:v",
        "1",
        "-q:v",
        "3",
        str(tmp),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
        tmp.replace(target)
    except (subprocess.SubprocessError, OSError):
        log.warning("could not extract a poster frame from %s", video, exc_info=True)
        tmp.unlink(missing_ok=True)
        return None
    return target
