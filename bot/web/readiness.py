"""Readiness: what /readyz and the status page ask before saying the server can take jobs.

Each check returns None when fine, else a short reason; a check that raises is reported as
failed rather than taking /readyz down.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bot.core.disk import free_space_problem, write_problem

log = logging.getLogger(__name__)

#: a readiness check returns None when fine, else a short reason shown by /readyz
ReadinessCheck = Callable[[], Awaitable[str | None]]

PING_TIMEOUT_S = 2.0
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s()'\",;:]+")


def without_paths(reason: str) -> str:
    """A reason fit for public eyes (the status page, /info): absolute paths replaced by "…"."""
    return _ABSOLUTE_PATH.sub("…", reason)


async def run_checks(checks: Sequence[ReadinessCheck]) -> list[str]:
    """The reasons the server is not ready (empty when it is), all checks run at once."""
    results = await asyncio.gather(*(_run_check(check) for check in checks))
    return [reason for reason in results if reason]


async def _run_check(check: ReadinessCheck) -> str | None:
    try:
        return await check()
    except Exception as exc:  # a broken probe must say so, not take /readyz down
        log.warning("readiness check %r failed", check, exc_info=True)
        return f"readiness check failed: {type(exc).__name__}"


def default_checks(
    *, store: Any, queue: Any, results_dir: str | Path | None = None, min_free_disk_mb: int = 0
) -> list[ReadinessCheck]:
    """Store reachable, queue started, every worker alive, models loaded, results can be kept.

    Asks whatever the queue exposes: `started`, `workers()` (each with `.alive`), and for the
    models a `models_loaded()` method on the queue or its executor when there is one, else
    whether the in-process GPU worker has built its pipeline manager (which happens after the
    preloaded models are resident).
    """

    async def store_check() -> str | None:
        try:
            ok = await asyncio.wait_for(store.ping(), timeout=PING_TIMEOUT_S)
        except TimeoutError:
            return f"store unreachable (no answer to ping within {PING_TIMEOUT_S:g} s)"
        except Exception as exc:
            return f"store unreachable ({type(exc).__name__})"
        return None if ok else "store unreachable (ping failed)"

    async def worker_check() -> str | None:
        if getattr(queue, "started", True) is False:
            return "queue not started"
        workers = getattr(queue, "workers", None)
        if workers is None:
            return None
        found = workers()
        if not found:
            return "no GPU worker is running"
        dead = [w.id for w in found if not getattr(w, "alive", True)]
        return f"GPU worker not alive: {', '.join(dead)}" if dead else None

    async def models_check() -> str | None:
        executor = getattr(queue, "executor", None)
        for owner in (queue, executor):
            probe = getattr(owner, "models_loaded", None) if owner is not None else None
            if probe is not None:
                value = probe() if callable(probe) else probe
                if asyncio.iscoroutine(value):
                    value = await value
                if isinstance(value, str):
                    return value or None
                return None if value else "models not loaded"
        if executor is None or not hasattr(executor, "worker"):
            return None  # remote workers report through workers()
        worker = executor.worker
        if worker is None or getattr(worker, "manager", None) is None:
            return "models not loaded (the GPU worker is still starting)"
        return None

    checks = [store_check, worker_check, models_check]
    if results_dir is not None:
        checks.append(results_check(Path(results_dir), min_free_disk_mb))
    return checks


def results_check(folder: Path, min_free_disk_mb: int) -> ReadinessCheck:
    """The results folder takes a file and its disk has room: else every job would run on the
    GPU and then fail at its very end ("The result could not be saved")."""

    async def check() -> str | None:
        def probe() -> str | None:
            problem = write_problem(folder)
            if problem:
                return f"results folder (RESULTS_DIR) {problem}"
            return free_space_problem(folder, min_free_disk_mb)

        return await asyncio.to_thread(probe)

    return check
