"""The job queue: what the bot, the REST API and the admin commands call (:class:`JobQueue`).

The queue keeps the fair order (:mod:`bot.core.fair_order`) in memory and every state change in
the store, hands the fair next job to an executor (:mod:`bot.core.executor`) whenever it has
room, and tells listeners what happens (:class:`JobListener`). The store is the queue's memory,
so a restart resumes exactly where the last process stopped:

- a job is persisted before :meth:`JobQueue.submit` returns, so a member never sees "queued"
  for a job a crash could lose;
- a running job holds a lease (owner + expiry) renewed while it runs; at start-up, and by a
  periodic sweep, a job whose lease expired or whose owner process is gone goes back to the
  front of the queue with its attempt counted, or fails with a message after ``MAX_TRIES``;
- a complete job is offered to listeners until one records its delivery
  (:meth:`JobQueue.mark_delivered`); after a restart, complete-but-undelivered jobs are offered
  once more, and delivered ones never are, so a result is not posted twice.

All methods run on the event loop and never block it: store calls are awaited, encoding and
generation live on the executor's threads. Each part lives in its own module (see
:mod:`bot.core.queue.job_queue`); everything callers use is importable from here.
"""

from __future__ import annotations

import logging

from bot.core.queue.control import PAUSED_KEY
from bot.core.queue.errors import (
    AlreadyFinished,
    Banned,
    JobNotFound,
    NotAllowed,
    QueueFull,
    QueuePaused,
    QuotaExceeded,
    TooManyQueued,
)
from bot.core.queue.job_queue import JobQueue
from bot.core.queue.listeners import BaseJobListener, JobListener
from bot.core.queue.redelivery import REDELIVER_SCAN, REDELIVER_WINDOW
from bot.core.queue.snapshot import QueueEntry, QueueSnapshot, RunningEntry, Submitted
from bot.core.results import JobResult

log = logging.getLogger(__name__)

__all__ = [
    "PAUSED_KEY",
    "REDELIVER_SCAN",
    "REDELIVER_WINDOW",
    "AlreadyFinished",
    "Banned",
    "BaseJobListener",
    "JobListener",
    "JobNotFound",
    "JobQueue",
    "JobResult",
    "NotAllowed",
    "QueueEntry",
    "QueueFull",
    "QueuePaused",
    "QueueSnapshot",
    "QuotaExceeded",
    "RunningEntry",
    "Submitted",
    "TooManyQueued",
]
