"""What every part of the queue shares: the fair order, the jobs on workers, the flags, the bus.

One :class:`QueueState` per :class:`bot.core.queue.JobQueue`. The parts (limits, dispatch,
finish, recovery, …) each read and write it, and hold no copy of it, so there is one answer to
"is this job queued, on a worker, or neither". Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot.core.costs import CostModel
from bot.core.executor import Executor, PreviewFn
from bot.core.fair_order import FairOrder
from bot.core.jobs import Job
from bot.core.queue.listeners import ListenerBus
from bot.core.store.base import Store
from bot.settings import Settings
from generation.phases import JobPhase

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """A job handed to (or being handed to) the executor, with what its worker reported."""

    job: Job
    cost: float
    phase: JobPhase = JobPhase.CLAIMING  # CLAIMING, RUNNING, FINISHING
    started_mono: float | None = None
    step: int = 0
    total: int = 0
    worker_id: str | None = None
    cancel: bool = False
    last_progress: float = -1e9
    preview: PreviewFn | None = None


def estimate(costs: CostModel, job: Job) -> float:
    """The cost model's estimate of the job's GPU seconds."""
    params = job.params
    if "kind" not in params or "model" not in params:
        params = {"kind": job.kind, "model": job.model, **params}
    return costs.estimate(params)


class QueueState:
    """The queue's shared, in-memory state; the store holds the durable copy of every job."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        executor: Executor,
        clock: Callable[[], datetime],
        costs: CostModel,
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.clock = clock
        self.costs = costs
        #: names this process in job leases, so a restart can tell its own orphans from others'
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.order = FairOrder(cost=lambda job: estimate(costs, job))
        self.in_flight: dict[str, InFlight] = {}
        self.bus = ListenerBus()
        self.paused = False
        self.started = False
        self.stopping = False
        #: set whenever a job might be able to start: the dispatcher waits on it
        self.wake = asyncio.Event()

    def live_job(self, job_id: str) -> Job | None:
        """The in-memory record of a queued or running job."""
        in_flight = self.in_flight.get(job_id)
        return in_flight.job if in_flight is not None else self.order.get(job_id)
