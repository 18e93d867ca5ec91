"""When a worker's GPU is about to be free: the signal that lets the bot hand over the next job early.

Between two jobs on one GPU lies the control plane's round trip: the worker reports the GPU free,
the bot picks the fair next job, claims it in its store and enqueues it, and the worker polls it
up. With 2 s jobs that round trip (50-100 ms) alone cost 32 workers 3-5 % of their time. So the
worker says ``gpu_soon`` once per job, when the steps left, at the pace of the steps so far, will
take at most ``WORKER_HANDOFF_LEAD_S``; the bot then counts that GPU as free and the next job waits
in arq's queue, already decided, when the GPU frees. The fair pick happens at most about that lead
(plus the VAE decode) earlier than it would otherwise; a job decided early and then cancelled is
simply taken back from arq's queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class GpuEndForecast:
    """Per run: when it began, and whether its ``gpu_soon`` was said (at most once)."""

    def __init__(self, lead_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lead_s = lead_s
        self._clock = clock
        self._began: dict[str, float] = {}
        self._said: set[str] = set()

    def began(self, key: str) -> None:
        self._began.setdefault(key, self._clock())

    def due(self, key: str, step: int, total: int) -> bool:
        """True once, at the first step after which the rest should take at most the lead."""
        began = self._began.get(key)
        if self.lead_s <= 0 or began is None or key in self._said or step <= 0 or total <= 0:
            return False
        per_step = (self._clock() - began) / step
        if (total - step) * per_step > self.lead_s:
            return False
        self._said.add(key)
        return True

    def forget(self, key: str) -> None:
        self._began.pop(key, None)
        self._said.discard(key)
