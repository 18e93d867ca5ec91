"""Failed and cancelled jobs on the status page come from the store, so a restart keeps them.

An admin opens the status page after something went wrong, often after restarting the bot: the
jobs that failed or were cancelled before the restart must still be listed, with their reason
and time, whichever process ran them, and with no more about their owner than before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bot.core.jobs import Job, JobState
from bot.core.store import Store, create_store
from bot.settings import Settings
from bot.web.status_page import RecentTrouble
from tests.web.conftest import StubQueue, make_job
from tests.web.test_api_real import gate  # noqa: F401  (gate is a fixture)
from tests.web.test_status import fail_one_cancel_one

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def other_store(web_settings: Settings) -> AsyncIterator[Store]:
    """A second store on the same SQLite file: another process, or this one after a restart."""
    s = create_store(web_settings)
    await s.open()
    yield s
    await s.close()


async def failed_job(store: Store, error: str) -> Job:
    job = make_job(state=JobState.FAILED, prompt="a private prompt")
    job.error = error
    await store.insert_job(job)
    return job


async def test_trouble_before_a_restart_is_listed_by_the_new_app(
    make_client,
    real_queue,
    web_settings,
    other_store,
    gate,  # noqa: F811
) -> None:
    first = await make_client(real_queue)
    failed, cancelled = await fail_one_cancel_one(first, web_settings, gate)
    await first.close()

    restarted = await make_client(StubQueue(store=other_store), store=other_store)
    state = await (await restarted.get("/status.json")).json()
    assert [(t["state"], t["reason"]) for t in state["trouble"]] == [
        ("failed", failed["error"]),
        ("cancelled", cancelled["error"]),
    ]
    for item, job_id in zip(state["trouble"], (failed["id"], cancelled["id"]), strict=True):
        job = await other_store.get_job(job_id)
        assert job is not None and job.finished_at is not None
        assert item["at"] == job.finished_at.strftime("%Y-%m-%d %H:%M:%S")
        assert item["prompt"] is None  # alice's API key is not public
    shown = json.dumps(state)
    assert "held boat" not in shown and "alice" not in shown  # neither the prompt nor its owner
    page = await (await restarted.get("/")).text()
    assert failed["error"] in page and cancelled["error"] in page and "held boat" not in page


async def test_one_read_answers_every_poll_until_a_job_fails_here(store, other_store) -> None:
    trouble = RecentTrouble(store, ttl_s=3600)
    assert await trouble.jobs() == []
    job = await failed_job(other_store, "The GPU ran out of memory.")
    assert await trouble.jobs() == []  # the read taken above still answers: no query per poll

    await trouble.on_finished(job, None)  # this process's queue saw it fail
    [listed] = await trouble.jobs()
    assert (listed.id, listed.error) == (job.id, "The GPU ran out of memory.")


async def test_a_job_another_process_failed_shows_once_the_read_expires(store, other_store) -> None:
    trouble = RecentTrouble(store, ttl_s=0)
    assert await trouble.jobs() == []
    job = await failed_job(other_store, "Timed out.")
    assert [j.id for j in await trouble.jobs()] == [job.id]


async def test_the_last_list_read_stays_while_the_store_is_unreachable(other_store, web_settings) -> None:
    reader = create_store(web_settings)
    await reader.open()
    trouble = RecentTrouble(reader, ttl_s=0)
    job = await failed_job(other_store, "Timed out.")
    assert [j.id for j in await trouble.jobs()] == [job.id]
    await reader.close()
    assert [j.id for j in await trouble.jobs()] == [job.id]
