"""Gauges that mirror the queue count every GPU worker, not just one."""

from __future__ import annotations

import logging

from bot.core import metrics
from bot.core.jobs import Job
from bot.core.queue import QueueSnapshot, RunningEntry
from generation.phases import JobPhase

log = logging.getLogger(__name__)


def entry(phase: JobPhase) -> RunningEntry:
    job = Job(kind="video", model="m", prompt="p", params={}, user_id="u", user_name="U")
    return RunningEntry(job=job, step=1, total=2, elapsed_s=1.0, remaining_s=1.0, worker_id="w", phase=phase)


def test_running_gauge_counts_each_job_on_a_gpu_and_not_the_ones_only_encoding() -> None:
    running = [entry(JobPhase.RUNNING), entry(JobPhase.STARTING), entry(JobPhase.FINISHING)]
    snapshot = QueueSnapshot(running=running, queued=[], paused=False, counts={})
    metrics.refresh_from_state(snapshot=snapshot, store=None, busy=None)
    assert metrics.QUEUE_RUNNING._value.get() == 2
    idle = QueueSnapshot(running=[], queued=[], paused=False, counts={})
    metrics.refresh_from_state(snapshot=idle, store=None, busy=None)
    assert metrics.QUEUE_RUNNING._value.get() == 0
