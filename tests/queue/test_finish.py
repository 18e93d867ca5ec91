"""A job's end that the store refuses is not lost and does not hang: on the raw (unbuffered) store,
`finish_job` failing again and again leaves the job neither stuck as "finishing" nor forgotten."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import Job, JobState
from bot.core.store.base import StoreUnavailable
from bot.core.store.sqlite import SQLiteStore
from generation.models import ModelSpec
from tests.queue.conftest import make_job, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(60)


class RefusingStore(SQLiteStore):
    """The SQLite driver whose `finish_job` answers "unavailable" while `refusing` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refusing = False
        self.refused = 0

    async def finish_job(self, job_id: str, **kwargs: Any) -> Job | None:
        if self.refusing:
            self.refused += 1
            raise StoreUnavailable("the database is locked")
        return await super().finish_job(job_id, **kwargs)


@pytest.fixture
async def refusing_store(tmp_path: Path) -> Any:
    store = RefusingStore(path=tmp_path / "bot.db")
    await store.open()
    yield store
    await store.close()


async def test_a_refused_end_leaves_the_worker_list_and_is_recorded_once_the_store_takes_it(
    refusing_store: RefusingStore, start_queue, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, rec = await start_queue(refusing_store, lease_s=3.0)  # maintenance every second
    queue.finisher.first_retry_s = 0.01
    refusing_store.refusing = True
    job = (await queue.submit(make_job(tiny_registry, "alice", kind="image"))).job

    # every try of the burst refused: the job no longer shows as finishing, nor holds a place
    burst = queue.finisher.burst_tries
    await wait_for(lambda: refusing_store.refused >= burst and not queue.snapshot().running)
    assert queue.position(job.id) is None and job.id in queue.finisher.pending
    held = await refusing_store.get_job(job.id)
    assert held is not None and held.state is JobState.IN_PROGRESS and held.lease_owner == queue.owner_id
    assert job.id not in rec.results  # nothing reported as finished while the store refuses

    # the store answers again: the maintenance loop records the end and listeners get the result
    refusing_store.refusing = False
    done = await rec.finished(job.id, within_s=20)
    assert done.state is JobState.COMPLETE and done.result_path
    (_, result), *more = rec.results[job.id]
    assert result is not None and result.path == done.result_path and not more
    stored = await refusing_store.get_job(job.id)
    assert stored is not None and stored.state is JobState.COMPLETE and stored.attempts == 1
    assert not queue.finisher.pending


async def test_an_end_still_refused_at_shutdown_is_run_again_by_the_next_start(
    refusing_store: RefusingStore, start_queue, tiny_registry: dict[str, ModelSpec]
) -> None:
    queue, _ = await start_queue(refusing_store)
    queue.finisher.first_retry_s = 0.01
    refusing_store.refusing = True
    job = (await queue.submit(make_job(tiny_registry, "bob", kind="image"))).job
    await wait_for(lambda: job.id in queue.finisher.pending)
    await queue.stop(graceful=False, timeout_s=5.0)

    refusing_store.refusing = False
    _, rec = await start_queue(refusing_store)
    done = await rec.finished(job.id, within_s=30)
    assert done.state is JobState.COMPLETE and done.attempts == 2  # its lost run counted as a try
