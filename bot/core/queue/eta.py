"""How long things take: each job's estimated GPU seconds, what a running job has left, and when a
queued job starts. The cost model learns from finished jobs; the estimates follow it."""

from __future__ import annotations

import contextlib
import logging
import time

from bot.core.jobs import Job
from bot.core.queue.state import InFlight, QueueState, estimate
from generation.phases import JobPhase

log = logging.getLogger(__name__)

#: above this many queued jobs, cached costs are refreshed at most every COST_REFRESH_S
COST_REFRESH_EAGER_MAX = 2000
COST_REFRESH_S = 10.0


class Estimates:
    """Reads the cost model for the queue, and feeds it what finished jobs really took."""

    def __init__(self, state: QueueState) -> None:
        self.state = state
        self._cost_version = state.costs.version
        self._cost_refreshed = 0.0
        self._dirty = False

    async def load(self) -> None:
        """Start from what earlier runs learned (the priors if the store has nothing usable)."""
        try:
            await self.state.costs.load(self.state.store)
        except Exception:
            log.exception("could not load the ETA cost model; starting from the priors")
        self._cost_version = self.state.costs.version

    def estimate(self, job: Job) -> float:
        return estimate(self.state.costs, job)

    def observe(self, job: Job, gpu_seconds: float) -> None:
        """Learn from a complete job; saved by :meth:`save_if_learned` (maintenance, stop)."""
        self.state.costs.observe({"kind": job.kind, "model": job.model, **job.params}, gpu_seconds)
        self._dirty = True

    async def save_if_learned(self, *, quiet: bool = False) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if quiet:
            with contextlib.suppress(Exception):
                await self.state.costs.save(self.state.store)
        else:
            await self.state.costs.save(self.state.store)

    def remaining(self, in_flight: InFlight, now: float) -> float:
        """Estimated seconds until the job's GPU work is done (0 once only encoding is left)."""
        if in_flight.phase == JobPhase.FINISHING:
            return 0.0
        if in_flight.started_mono is None:
            return in_flight.cost
        elapsed = now - in_flight.started_mono
        left = in_flight.cost - elapsed
        if left <= 0 and in_flight.step > 0 and in_flight.total > in_flight.step:
            left = elapsed * (in_flight.total - in_flight.step) / in_flight.step  # overran: trust progress
        return max(0.0, left)

    def work_on_workers(self, now: float) -> float:
        """GPU seconds left of every job on a worker."""
        jobs = self.state.in_flight.values()
        return sum(self.remaining(f, now) for f in jobs if f.phase != JobPhase.FINISHING)

    def queued_eta(self, job_id: str) -> float | None:
        """Seconds until a queued job starts; None when it is not queued."""
        self.refresh()
        ahead = self.state.order.work_ahead(job_id)
        if ahead is None:
            return None
        running = self.work_on_workers(time.monotonic())
        return (running + ahead) / max(1, self.state.executor.capacity)

    def refresh(self) -> None:
        """Re-read every cached cost after the model learned something (throttled when huge)."""
        state = self.state
        if state.costs.version == self._cost_version:
            return
        now = time.monotonic()
        if len(state.order) > COST_REFRESH_EAGER_MAX and now - self._cost_refreshed < COST_REFRESH_S:
            return
        state.order.refresh_costs()
        for in_flight in state.in_flight.values():
            in_flight.cost = self.estimate(in_flight.job)
        self._cost_version = state.costs.version
        self._cost_refreshed = now
