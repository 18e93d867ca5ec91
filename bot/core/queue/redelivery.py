"""A complete result reaches Discord once: offered to listeners until one records its delivery,
offered once more after a restart if it never was, and never again once it was."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from bot.core.jobs import Job, Source
from bot.core.queue.state import QueueState
from bot.core.results import ResultWriter
from bot.core.store.base import StoreUnavailable

log = logging.getLogger(__name__)

#: complete jobs older than this are not offered for delivery again after a restart
REDELIVER_WINDOW = timedelta(hours=24)
#: how many recent complete jobs a restart looks through for undelivered ones
REDELIVER_SCAN = 200


class Redelivery:
    """Remembers which results were offered, and offers the undelivered ones again."""

    def __init__(self, state: QueueState, results: ResultWriter) -> None:
        self.state = state
        self.results = results
        #: job id -> when it was offered for delivery (oldest first); only the last
        #: REDELIVER_WINDOW matters, since redeliver_pending skips anything finished before that
        self.offered: dict[str, datetime] = {}

    async def mark_delivered(
        self, job_id: str, message_id: str | None = None, *, url: str | None = None
    ) -> Job | None:
        """Record where a result was posted, so it is never offered again (even after a restart)."""
        changes: dict[str, Any] = {}
        if message_id is not None:
            changes["result_message_id"] = str(message_id)
        if url is not None:
            changes["result_url"] = url
        if not changes:
            raise ValueError("mark_delivered needs a message_id or a url")
        self.mark_offered(job_id)
        return await self.state.store.update_job(job_id, **changes)

    async def redeliver_pending(self) -> int:
        """Offer complete Discord jobs whose result was never recorded as posted; returns how many."""
        cutoff = self.state.clock() - REDELIVER_WINDOW
        try:
            recent = await self.state.store.recent_results(limit=REDELIVER_SCAN)
        except StoreUnavailable:
            log.warning("store unavailable: undelivered results will be offered at the next start")
            return 0
        offered = 0
        for job in reversed(recent):  # oldest first
            if not self._undelivered(job, cutoff):
                continue
            result = await asyncio.to_thread(self.results.result_for, job)
            if result is None:
                continue
            self.mark_offered(job.id)
            log.info("job %s finished before a restart but was not delivered: offering it again", job.id)
            self.state.bus.finished(job, result)
            offered += 1
        return offered

    def _undelivered(self, job: Job, cutoff: datetime) -> bool:
        return (
            job.source is Source.DISCORD
            and job.result_message_id is None
            and job.id not in self.offered
            and job.finished_at is not None
            and job.finished_at >= cutoff
        )

    def mark_offered(self, job_id: str) -> None:
        """Remember that `job_id` was offered. Offers older than REDELIVER_WINDOW are forgotten, so
        this stays bounded: their jobs finished before redeliver_pending's cutoff, which it skips."""
        now = self.state.clock()
        self.offered.pop(job_id, None)
        self.offered[job_id] = now
        cutoff = now - REDELIVER_WINDOW
        while True:
            oldest = next(iter(self.offered))
            if self.offered[oldest] >= cutoff:
                return
            del self.offered[oldest]
