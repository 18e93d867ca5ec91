"""BufferedStore under fault injection: the inner store fails like an unreachable database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.jobs import JobState
from bot.core.store.base import AuditEntry, Store, StoreUnavailable
from bot.core.store.buffer import BufferedStore

from .conftest import Backend
from .test_contract import T0, lease, make_job

log = logging.getLogger(__name__)

# every Store method that touches the database
DB_METHODS = sorted(
    Store.__abstractmethods__ - {"open", "close", "ping"} | {"count_in_states", "schema_version"}
)


class Outage:
    """Makes a real store behave as if its database were unreachable, until `end()`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.attempts: list[str] = []

    def start(self) -> None:
        for name in DB_METHODS:
            setattr(self.store, name, self._failing(name))

        async def ping() -> bool:
            return False

        self.store.ping = ping  # type: ignore[method-assign]

    def end(self) -> None:
        for name in [*DB_METHODS, "ping"]:
            self.store.__dict__.pop(name, None)

    def _failing(self, name: str) -> Callable[..., Any]:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            self.attempts.append(name)
            raise StoreUnavailable(
                "The database is unavailable right now (test outage)."
            ) from ConnectionError("connection refused")

        return fail


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(store_backend: Backend) -> Store:
    """The plain drivers: wrapping the already-buffered variant again would test nothing new."""
    if store_backend.kind == "sqlite-buffered":
        pytest.skip("the buffer is tested around the plain drivers")
    return await store_backend.new_store()


@pytest.fixture
async def buffered(store: Store) -> Any:
    wrapper = BufferedStore(store, max_items=1000, flush_interval_s=0.02)
    await wrapper.open()
    yield wrapper, Outage(store)
    await wrapper.close()


async def test_no_request_log_write_is_lost_across_an_outage(buffered: Any) -> None:
    wrapper, outage = buffered
    inner = wrapper.inner
    job = make_job(user_id="u1")
    await wrapper.insert_job(job)
    await wrapper.claim_job(job.id, owner="w", **lease(T0))

    outage.start()
    assert not await wrapper.ping()
    finished = await wrapper.finish_job(
        job.id, owner="w", state=JobState.COMPLETE, gpu_seconds=4.5, result_path="/tmp/r.png"
    )
    # a best-effort record of what will be written, since the job was seen before
    assert finished is not None and finished.state is JobState.COMPLETE and finished.lease_owner is None
    assert await wrapper.update_job(job.id, result_message_id="m1") is not None
    entries = [
        AuditEntry(actor_id="a", actor_name="A", action=f"act{i}", at=T0 + timedelta(seconds=i))
        for i in range(100)
    ]
    for entry in entries:
        await wrapper.add_audit(entry)
    for _ in range(10):
        await wrapper.add_usage("u1", jobs=1, gpu_seconds=0.5)
    await wrapper.set_meta("costs", {"sd15": 1.0})
    assert wrapper.buffer_size == 113

    # queue operations fail loudly and say what did not happen
    with pytest.raises(StoreUnavailable, match="not queued"):
        await wrapper.insert_job(make_job(prompt="lost?"))
    with pytest.raises(StoreUnavailable, match="stays queued"):
        await wrapper.claim_job("x", owner="w", **lease(T0))
    with pytest.raises(StoreUnavailable, match="not put back"):
        await wrapper.requeue_job(job.id, owner="w")
    with pytest.raises(StoreUnavailable):  # reads fall through
        await wrapper.get_user("u1")

    outage.end()
    await wait_until(lambda: wrapper.buffer_size == 0)

    assert wrapper.dropped == 0 and wrapper.failed == 0 and wrapper.flushed == 113
    got = await inner.get_job(job.id)
    assert got is not None
    assert got.state is JobState.COMPLETE and got.gpu_seconds == 4.5 and got.result_message_id == "m1"
    assert got.finished_at is not None and got.finished_at < datetime.now(UTC)
    assert await inner.list_audit(limit=500) == entries[::-1]  # all of them, in order
    user = await inner.get_user("u1")
    assert user.jobs_total == 10 and user.gpu_seconds_total == pytest.approx(5.0)
    assert await inner.get_meta("costs") == {"sd15": 1.0}
    assert await inner.jobs_in_states([JobState.QUEUED]) == []  # the refused insert left nothing behind


async def test_the_buffer_is_bounded_keeps_the_oldest_and_counts_the_overflow(store: Store) -> None:
    wrapper = BufferedStore(store, max_items=5, flush_interval_s=0.02)
    await wrapper.open()
    outage = Outage(store)
    try:
        outage.start()
        for i in range(8):
            await wrapper.add_audit(
                AuditEntry(actor_id="a", actor_name="A", action=f"act{i}", at=T0 + timedelta(seconds=i))
            )
        assert wrapper.buffer_size == 5 and wrapper.dropped == 3
        outage.end()
        await wait_until(lambda: wrapper.buffer_size == 0)
        assert [e.action for e in await store.list_audit()] == [f"act{i}" for i in range(4, -1, -1)]
        assert wrapper.dropped == 3
    finally:
        await wrapper.close()


async def test_writes_after_recovery_queue_behind_the_buffered_ones(store: Store) -> None:
    wrapper = BufferedStore(store, max_items=100, flush_interval_s=3600)  # no background flush here
    await wrapper.open()
    outage = Outage(store)
    try:
        job = make_job()
        await wrapper.insert_job(job)
        outage.start()
        await wrapper.update_job(job.id, error="first")
        outage.end()
        await wrapper.update_job(job.id, error="second")  # the store is back, but "first" is not written yet
        assert wrapper.buffer_size == 2
        assert await wrapper.flush()
        got = await store.get_job(job.id)
        assert got is not None and got.error == "second"

        outage.start()
        await wrapper.update_job(job.id, error="third")
        outage.end()
        other = make_job()
        await wrapper.insert_job(other)  # a queue operation drains the buffer first
        assert wrapper.buffer_size == 0
        got = await store.get_job(job.id)
        assert got is not None and got.error == "third"
        assert await store.get_job(other.id) is not None
    finally:
        await wrapper.close()


async def test_a_write_the_database_refuses_on_replay_is_dropped_not_retried_forever(store: Store) -> None:
    wrapper = BufferedStore(store, max_items=100, flush_interval_s=0.02)
    await wrapper.open()
    outage = Outage(store)
    try:
        entry = AuditEntry(actor_id="a", actor_name="A", action="ban", at=T0)
        await wrapper.add_audit(entry)
        outage.start()
        await wrapper.add_audit(entry)  # same id: the database will refuse it
        await wrapper.add_audit(
            AuditEntry(actor_id="a", actor_name="A", action="unban", at=T0 + timedelta(seconds=1))
        )
        outage.end()
        await wait_until(lambda: wrapper.buffer_size == 0)
        assert wrapper.failed == 1 and wrapper.flushed == 1
        assert [e.action for e in await store.list_audit()] == ["unban", "ban"]
    finally:
        await wrapper.close()


async def test_an_unknown_field_is_refused_at_once_not_buffered(buffered: Any) -> None:
    wrapper, outage = buffered
    outage.start()
    with pytest.raises(ValueError, match="unknown Job field"):
        await wrapper.update_job("x", colour="red")
    with pytest.raises(ValueError, match="final state"):
        await wrapper.finish_job("x", owner=None, state=JobState.IN_PROGRESS)
    assert wrapper.buffer_size == 0


async def test_close_writes_what_is_buffered_when_the_store_is_back(store: Store) -> None:
    wrapper = BufferedStore(store, max_items=100, flush_interval_s=3600)
    await wrapper.open()
    outage = Outage(store)
    outage.start()
    await wrapper.set_meta("k", 1)
    outage.end()
    # close() flushes and then closes the inner store: read the result back through a fresh open
    await wrapper.close()
    await store.open()
    assert await store.get_meta("k") == 1
