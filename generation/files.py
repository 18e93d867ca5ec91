"""Finished files on disk: the one atomic write and the one layout, for the bot's results folder
and for the workers' shared folder alike.

Layout inside a folder: ``<job id><suffix>`` (``.png``, ``.mp4``) plus ``<job id>.poster.jpg`` for
videos. Files are written under a temporary name that carries the writer's pid and renamed, so a
crash never leaves a half file where a delivery or the web server would find it, and two
processes writing the same name never share a temporary file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from generation.media import EncodedMedia

log = logging.getLogger(__name__)

POSTER_SUFFIX = ".poster.jpg"


@dataclass(frozen=True)
class SavedFiles:
    """Where `save_encoded` put a result and its poster."""

    path: Path
    poster_path: Path | None


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so no reader ever sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def result_path(folder: Path, job_id: str, suffix: str) -> Path:
    return folder / f"{job_id}{suffix}"


def poster_path(result: Path, job_id: str) -> Path:
    """The poster beside a video result."""
    return result.with_name(f"{job_id}{POSTER_SUFFIX}")


def part_path(result: Path, job_id: str, number: int) -> Path:
    """Image `number` (1-based) of a grid, beside the grid: what U1..U4 post."""
    return result.with_name(f"{job_id}.{number}.png")


def part_paths(result: Path, job_id: str) -> list[Path]:
    """The kept images of a grid that are still on disk, in grid order (none for one image)."""
    found = []
    for number in range(1, 10):
        path = part_path(result, job_id, number)
        if not path.exists():
            break
        found.append(path)
    return found


def save_encoded(folder: Path, job_id: str, encoded: EncodedMedia) -> SavedFiles:
    """Blocking: poster and a grid's images first, then the file, so a visible file has them all."""
    path = result_path(folder, job_id, encoded.suffix)
    for number, data in enumerate(encoded.parts, start=1):
        write_atomic(part_path(path, job_id, number), data)
    poster: Path | None = None
    if encoded.poster is not None:
        poster = poster_path(path, job_id)
        write_atomic(poster, encoded.poster)
    write_atomic(path, encoded.data)
    return SavedFiles(path=path, poster_path=poster)
