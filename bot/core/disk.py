"""Can the bot keep what it makes? Write and free-space probes for the results folder.

Used twice: at start-up (an unwritable RESULTS_DIR stops the bot before any model loads, instead
of every job failing at its very end) and by /readyz (a folder that turns read-only or a disk that
fills up while running makes the server "not ready" with the reason).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024 * 1024


def write_problem(folder: Path) -> str | None:
    """Why a file cannot be written in `folder` (created when missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return f"{folder} is not writable ({exc.strerror or type(exc).__name__})"
    return None


def free_space_problem(folder: Path, min_free_mb: int) -> str | None:
    """Less than `min_free_mb` free on the disk holding `folder` (or its nearest existing parent)."""
    if min_free_mb <= 0:
        return None
    probe = folder.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return f"free space of {folder} unknown ({exc.strerror or type(exc).__name__})"
    if free < min_free_mb * MB:
        return f"disk nearly full: {free // MB} MB free for {folder} (MIN_FREE_DISK_MB={min_free_mb})"
    return None
