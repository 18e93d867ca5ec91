"""The queue at one moment, as /queue, /info, the REST API, the status page and /metrics read it:
every job on a worker with its phase and progress, then the queued jobs in fair order with
positions and ETAs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from bot.core.executor import WorkerInfo
from bot.core.jobs import Job
from bot.core.queue.eta import Estimates
from bot.core.queue.state import InFlight, QueueState
from generation.phases import JobPhase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """A job accepted and persisted: its place in line and the estimated wait before it starts."""

    job: Job
    position: int
    eta_s: float
    #: estimated GPU seconds of the job itself (so "starts in ~eta_s, takes ~run_s")
    run_s: float = 0.0


@dataclass(frozen=True)
class QueueEntry:
    """A queued job: 1 is the next to start."""

    job: Job
    position: int
    eta_s: float  # seconds until it starts
    run_s: float  # its own estimated GPU seconds


@dataclass(frozen=True)
class RunningEntry:
    """A job a worker holds, with how far it got."""

    job: Job
    step: int
    total: int
    elapsed_s: float
    remaining_s: float
    worker_id: str | None
    #: STARTING (claimed, handed to a worker, waiting for its device), RUNNING, or
    #: FINISHING (the GPU is done; encoding and delivery remain)
    phase: JobPhase = JobPhase.RUNNING


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue at one moment; see the module docstring."""

    #: every job a worker holds (one per busy GPU, whatever its phase), the longest-running first
    running: list[RunningEntry]
    queued: list[QueueEntry]
    paused: bool
    #: jobs per phase (starting, running, finishing), "queued", and "users_waiting"
    counts: dict[str, int]
    workers: list[WorkerInfo] = field(default_factory=list)

    def running_entry(self, job_id: str) -> RunningEntry | None:
        """The entry of `job_id` if a worker holds it."""
        return next((e for e in self.running if e.job.id == job_id), None)


def running_phase(in_flight: InFlight) -> JobPhase:
    if in_flight.phase == JobPhase.FINISHING:
        return JobPhase.FINISHING
    if in_flight.started_mono is None:
        return JobPhase.STARTING  # claimed and handed over, waiting for the device
    return JobPhase.RUNNING


def take_snapshot(state: QueueState, estimates: Estimates, *, limit: int | None = None) -> QueueSnapshot:
    estimates.refresh()
    now = time.monotonic()
    running = [
        RunningEntry(
            job=f.job,
            step=f.step,
            total=f.total,
            elapsed_s=now - f.started_mono if f.started_mono is not None else 0.0,
            remaining_s=estimates.remaining(f, now),
            worker_id=f.worker_id,
            phase=running_phase(f),
        )
        for f in state.in_flight.values()
    ]
    running.sort(key=lambda e: -e.elapsed_s)
    ahead0 = sum(e.remaining_s for e in running if e.phase != JobPhase.FINISHING)
    slots = max(1, state.executor.capacity)
    queued = [
        QueueEntry(job=job, position=i + 1, eta_s=(ahead0 + ahead) / slots, run_s=cost)
        for i, (job, ahead, cost) in enumerate(state.order.ordered_with_work(limit))
    ]
    phases = (JobPhase.STARTING, JobPhase.RUNNING, JobPhase.FINISHING)
    counts: dict[str, int] = {phase: sum(1 for e in running if e.phase == phase) for phase in phases}
    return QueueSnapshot(
        running=running,
        queued=queued,
        paused=state.paused,
        counts={**counts, "queued": len(state.order), "users_waiting": state.order.users()},
        workers=state.executor.workers(),
    )
