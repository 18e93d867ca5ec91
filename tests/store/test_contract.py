"""The store contract, run against every driver through the parametrized `store` fixture."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import Job, JobState
from bot.core.store.base import (
    AuditEntry,
    GuildSettings,
    Store,
    Usage,
    UserRecord,
    UserUsage,
    normalise_job,
    to_store_time,
)

from .conftest import Backend

log = logging.getLogger(__name__)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_job(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "kind": "image",
        "model": "sd15",
        "prompt": "a lighthouse at dusk",
        "params": {"steps": 20, "width": 512, "height": 512, "guidance": 7.5},
        "user_id": "100",
        "user_name": "ada",
        "guild_id": "900",
        "channel_id": "901",
        "seed": 1234,
    }
    values.update(overrides)
    return Job(**values)


def lease(now: datetime, seconds: float = 60.0) -> dict[str, Any]:
    return {"now": now, "lease_expires_at": now + timedelta(seconds=seconds)}


# --------------------------------------------------------------------------- round trips


async def test_insert_and_get_round_trips_every_field(store: Store) -> None:
    job = make_job(
        negative_prompt="blurry",
        priority=3,
        parent_id="abc",
        timings={"load_s": 0.5},
        created_at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        result_url="https://example.invalid/x.png",
        upload_limit_bytes=10 * 1024 * 1024,
    )
    await store.insert_job(job)
    got = await store.get_job(job.id)
    assert got == normalise_job(job)
    assert got is not None
    assert got.created_at == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)  # kept to the ms
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert await store.get_job("no-such-job") is None


async def test_inserting_the_same_id_twice_is_refused(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    with pytest.raises(ValueError, match="already exists"):
        await store.insert_job(replace(job, prompt="other"))
    got = await store.get_job(job.id)
    assert got is not None and got.prompt == job.prompt


def hostile_prompt() -> str:
    pieces = [
        'He said "don\'t" — \'quoted\' `back` \\backslash\\ {"json": [1, 2]} ',
        "'); DROP TABLE jobs; -- ",
        "emoji 🎨🖌️👩🏽‍🚀🏳️‍🌈 ",
        "שלום עולם مرحبا بالعالم ",
        "\u202eRTL override\u202c \u200f\u200e ",
        "combining é̃ ̈ zero\u200bwidth \ufeffBOM ",
        "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠜎 ",
        "nonchar \uffff \ufffe tab\tnewline\n$.key json_set('$.x') ",
    ]
    text = "".join(pieces)
    text = (text * (1000 // len(text) + 1))[:1000]
    return text


async def test_a_hostile_1000_character_prompt_round_trips_exactly(store: Store) -> None:
    prompt = hostile_prompt()
    assert len(prompt) == 1000
    job = make_job(
        prompt=prompt,
        negative_prompt=prompt[::-1],
        user_name="Zoë 🌸 ‏مستخدم",
        params={"steps": 20, "note": prompt[:50], "ключ": "значение"},
    )
    await store.insert_job(job)
    got = await store.get_job(job.id)
    assert got is not None
    assert got.prompt == prompt
    assert got.negative_prompt == prompt[::-1]
    assert got.user_name == job.user_name
    assert got.params == job.params
    # and through a partial update of the JSON-held fields
    updated = await store.update_job(job.id, error=prompt, timings={"é": 1.5})
    assert updated is not None and updated.error == prompt and updated.timings == {"é": 1.5}
    assert (await store.user_history("100"))[0].prompt == prompt


async def test_lone_surrogates_are_replaced_instead_of_failing_the_write(store: Store) -> None:
    job = make_job(prompt="broken \ud800 half")
    await store.insert_job(job)
    got = await store.get_job(job.id)
    assert got is not None and got.prompt == "broken \ufffd half"


async def test_a_nul_that_slipped_past_validation_does_not_break_anything(store: Store) -> None:
    job = make_job(prompt="before\x00after", params={"note": "a\x00b"})
    await store.insert_job(job)
    got = await store.get_job(job.id)
    assert got is not None and got.prompt == "before\x00after" and got.params == {"note": "a\x00b"}


# --------------------------------------------------------------------------- updates and leases


async def test_update_job_changes_only_the_named_fields(store: Store) -> None:
    job = make_job(timings={"a": 1.0, "b": 2.0})
    await store.insert_job(job)
    got = await store.update_job(
        job.id, status_message_id="555", timings={"c": 3.0}, cancel_requested=True, gpu_seconds=2.5
    )
    assert got is not None
    assert got.status_message_id == "555"
    assert got.timings == {"c": 3.0}  # a dict field is replaced whole, not merged
    assert got.cancel_requested is True and got.gpu_seconds == 2.5
    assert got.prompt == job.prompt and got.params == job.params and got.state is JobState.QUEUED
    assert await store.get_job(job.id) == got
    cleared = await store.update_job(job.id, status_message_id=None)
    assert cleared is not None and cleared.status_message_id is None
    assert await store.update_job("missing", error="x") is None
    with pytest.raises(ValueError, match="unknown Job field"):
        await store.update_job(job.id, colour="red")
    with pytest.raises(ValueError, match="id"):
        await store.update_job(job.id, id="other")


async def test_claim_is_a_compare_and_set(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    claimed = await store.claim_job(job.id, owner="w1", **lease(T0))
    assert claimed is not None
    assert claimed.state is JobState.IN_PROGRESS
    assert claimed.attempts == 1
    assert claimed.started_at == T0
    assert claimed.lease_owner == "w1" and claimed.lease_expires_at == T0 + timedelta(seconds=60)
    assert await store.claim_job(job.id, owner="w2", **lease(T0)) is None
    assert await store.claim_job("missing", owner="w2", **lease(T0)) is None

    cancelled = make_job()
    await store.insert_job(cancelled)
    await store.update_job(cancelled.id, cancel_requested=True)
    assert await store.claim_job(cancelled.id, owner="w1", **lease(T0)) is None
    still = await store.get_job(cancelled.id)
    assert still is not None and still.state is JobState.QUEUED and still.attempts == 0


async def test_lease_renewal_belongs_to_the_owner(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    assert not await store.renew_lease(job.id, owner="w1", lease_expires_at=T0)  # not claimed yet
    await store.claim_job(job.id, owner="w1", **lease(T0))
    later = T0 + timedelta(minutes=5)
    assert await store.renew_lease(job.id, owner="w1", lease_expires_at=later)
    assert not await store.renew_lease(job.id, owner="w2", lease_expires_at=T0)
    got = await store.get_job(job.id)
    assert got is not None and got.lease_expires_at == later


async def test_finish_needs_the_lease_and_happens_once(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    await store.claim_job(job.id, owner="w1", **lease(T0))
    assert await store.finish_job(job.id, owner="w2", state=JobState.COMPLETE) is None
    done_at = T0 + timedelta(seconds=30)
    done = await store.finish_job(
        job.id,
        owner="w1",
        state=JobState.COMPLETE,
        finished_at=done_at,
        gpu_seconds=12.5,
        result_path="/tmp/x.png",
        result_bytes=1234,
        timings={"denoise_s": 11.0},
    )
    assert done is not None
    assert done.state is JobState.COMPLETE and done.finished_at == done_at
    assert done.lease_owner is None and done.lease_expires_at is None
    assert done.gpu_seconds == 12.5 and done.result_bytes == 1234 and done.timings == {"denoise_s": 11.0}
    assert await store.finish_job(job.id, owner="w1", state=JobState.FAILED) is None
    assert await store.finish_job(job.id, owner=None, state=JobState.CANCELLED) is None
    got = await store.get_job(job.id)
    assert got is not None and got.state is JobState.COMPLETE
    with pytest.raises(ValueError, match="final state"):
        await store.finish_job(job.id, owner=None, state=JobState.QUEUED)


async def test_finish_without_owner_cancels_a_queued_job_and_stamps_the_time(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    before = to_store_time(datetime.now(UTC))
    got = await store.finish_job(job.id, owner=None, state=JobState.CANCELLED, error="cancelled by owner")
    assert got is not None and got.state is JobState.CANCELLED and got.error == "cancelled by owner"
    assert got.finished_at is not None and before <= got.finished_at <= datetime.now(UTC)


async def test_requeue_keeps_attempts_and_clears_the_lease(store: Store) -> None:
    job = make_job()
    await store.insert_job(job)
    assert await store.requeue_job(job.id, owner=None) is None  # only in_progress jobs
    await store.claim_job(job.id, owner="w1", **lease(T0))
    assert await store.requeue_job(job.id, owner="w2") is None
    back = await store.requeue_job(job.id, owner="w1")
    assert back is not None and back.state is JobState.QUEUED and back.attempts == 1
    assert back.lease_owner is None and back.lease_expires_at is None
    again = await store.claim_job(job.id, owner="w2", **lease(T0))
    assert again is not None and again.attempts == 2
    assert await store.requeue_job(job.id, owner=None) is not None


async def test_expired_leases(store: Store) -> None:
    a, b, c = make_job(), make_job(), make_job()
    for job in (a, b, c):
        await store.insert_job(job)
    await store.claim_job(a.id, owner="w", now=T0, lease_expires_at=T0 + timedelta(seconds=10))
    await store.claim_job(b.id, owner="w", now=T0, lease_expires_at=T0 + timedelta(seconds=100))
    expired = await store.expired_leases(T0 + timedelta(seconds=50))
    assert [j.id for j in expired] == [a.id]
    assert await store.expired_leases(T0) == []
    assert {j.id for j in await store.expired_leases(T0 + timedelta(hours=1))} == {a.id, b.id}


async def test_jobs_in_states_oldest_first_with_ties_in_insertion_order(store: Store) -> None:
    same_time = [make_job(created_at=T0, prompt=f"tie {i}") for i in range(5)]
    older = make_job(created_at=T0 - timedelta(seconds=1))
    newer = make_job(created_at=T0 + timedelta(seconds=1))
    for job in (newer, *same_time, older):
        await store.insert_job(job)
    running = make_job(created_at=T0 - timedelta(hours=1))
    await store.insert_job(running)
    await store.claim_job(running.id, owner="w", **lease(T0))

    queued = await store.jobs_in_states([JobState.QUEUED])
    assert [j.id for j in queued] == [older.id, *(j.id for j in same_time), newer.id]
    assert [j.id for j in await store.jobs_in_states([JobState.QUEUED], limit=2)] == [
        older.id,
        same_time[0].id,
    ]
    both = await store.jobs_in_states([JobState.QUEUED, JobState.IN_PROGRESS])
    assert [j.id for j in both][:2] == [running.id, older.id] and len(both) == 8
    assert await store.jobs_in_states([]) == []
    counts = await store.count_in_states([JobState.QUEUED, JobState.IN_PROGRESS, JobState.FAILED])
    assert counts == {JobState.QUEUED: 7, JobState.IN_PROGRESS: 1, JobState.FAILED: 0}


# --------------------------------------------------------------------------- request log queries


async def test_user_history_is_newest_first_and_paginates(store: Store) -> None:
    mine = [make_job(user_id="7", created_at=T0 + timedelta(minutes=i), prompt=f"p{i}") for i in range(25)]
    random.Random(4).shuffle(mine)
    for job in mine:
        await store.insert_job(job)
    await store.insert_job(make_job(user_id="8", created_at=T0 + timedelta(hours=2)))

    pages = [await store.user_history("7", limit=10, offset=o) for o in (0, 10, 20, 30)]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    prompts = [j.prompt for page in pages for j in page]
    assert prompts == [f"p{i}" for i in range(24, -1, -1)]
    assert all(j.user_id == "7" for page in pages for j in page)
    assert await store.user_history("nobody") == []


async def test_guild_recent_and_recent_results(store: Store) -> None:
    jobs = []
    for i in range(6):
        job = make_job(guild_id="g1" if i % 2 == 0 else "g2", created_at=T0 + timedelta(minutes=i))
        jobs.append(job)
        await store.insert_job(job)
    dm = make_job(guild_id=None, created_at=T0 + timedelta(minutes=10))
    await store.insert_job(dm)
    for job in (jobs[0], jobs[1], jobs[4], dm):
        await store.claim_job(job.id, owner="w", **lease(T0))
        await store.finish_job(job.id, owner="w", state=JobState.COMPLETE)

    assert [j.id for j in await store.guild_recent("g1")] == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert [j.id for j in await store.guild_recent("g1", limit=1)] == [jobs[4].id]
    assert [j.id for j in await store.recent_results()] == [dm.id, jobs[4].id, jobs[1].id, jobs[0].id]
    assert [j.id for j in await store.recent_results(limit=2)] == [dm.id, jobs[4].id]
    assert [j.id for j in await store.recent_results(guild_ids=["g1"])] == [jobs[4].id, jobs[0].id]
    assert [j.id for j in await store.recent_results(guild_ids={"g2", "g1"})] == [
        jobs[4].id,
        jobs[1].id,
        jobs[0].id,
    ]
    assert await store.recent_results(guild_ids=[]) == []


async def test_recent_trouble_lists_failed_and_cancelled_jobs_latest_finish_first(store: Store) -> None:
    since = T0 - timedelta(hours=24)
    plan = [  # (final state, finished at)
        (JobState.FAILED, since - timedelta(milliseconds=1)),  # just before the window
        (JobState.FAILED, since),  # the boundary itself: listed
        (JobState.CANCELLED, T0 - timedelta(hours=2)),
        (JobState.COMPLETE, T0 - timedelta(hours=1)),  # went fine: not listed
        (JobState.FAILED, T0 - timedelta(minutes=30)),
        (JobState.CANCELLED, T0 - timedelta(minutes=30)),  # same time: the later inserted first
    ]
    jobs = []
    for i, (state, finished_at) in enumerate(plan):
        job = make_job(created_at=T0 - timedelta(hours=30, minutes=i))  # created in the reverse order
        await store.insert_job(job)
        await store.finish_job(job.id, owner=None, state=state, finished_at=finished_at, error=f"why {i}")
        jobs.append(job)
    await store.insert_job(make_job(created_at=T0))  # still queued
    running = make_job(created_at=T0)
    await store.insert_job(running)
    await store.claim_job(running.id, owner="w", **lease(T0))

    trouble = await store.recent_trouble(since=since)
    assert [j.id for j in trouble] == [jobs[5].id, jobs[4].id, jobs[2].id, jobs[1].id]
    assert [(j.state, j.error) for j in trouble] == [
        (JobState.CANCELLED, "why 5"),
        (JobState.FAILED, "why 4"),
        (JobState.CANCELLED, "why 2"),
        (JobState.FAILED, "why 1"),
    ]
    assert trouble[0] == await store.get_job(jobs[5].id)  # whole records
    assert [j.id for j in await store.recent_trouble(since=since, limit=2)] == [jobs[5].id, jobs[4].id]
    assert await store.recent_trouble(since=since, limit=0) == []
    assert await store.recent_trouble(since=T0) == []


async def test_user_usage_counts_requests_and_gpu_seconds_since_a_time(store: Store) -> None:
    day = datetime(2026, 3, 2, tzinfo=UTC)
    plan = [  # (created, gpu seconds, final state)
        (day - timedelta(minutes=1), 50.0, JobState.COMPLETE),  # yesterday: not counted
        (day + timedelta(seconds=1), 10.0, JobState.COMPLETE),  # the boundary itself: tested below
        (day + timedelta(hours=3), 5.5, JobState.FAILED),
        (day + timedelta(hours=5), None, JobState.CANCELLED),
        (day + timedelta(hours=6), None, None),  # still queued: counted, no GPU time
    ]
    for created, gpu, state in plan:
        job = make_job(user_id="u", created_at=created)
        await store.insert_job(job)
        if state is not None:
            await store.finish_job(job.id, owner=None, state=state, gpu_seconds=gpu)
    await store.insert_job(make_job(user_id="someone-else", created_at=day + timedelta(hours=1)))

    usage = await store.user_usage("u", since=day)
    assert usage.jobs == 4
    assert usage.gpu_seconds == pytest.approx(15.5)
    all_time = await store.user_usage("u", since=day - timedelta(days=30))
    assert all_time.jobs == 5 and all_time.gpu_seconds == pytest.approx(65.5)
    nothing = await store.user_usage("nobody", since=day)
    assert nothing.jobs == 0 and nothing.gpu_seconds == 0.0


#: SecantusDB (the wire-protocol server CI runs, tests/real_mongodb.py) differs from mongod here
DESCENDING_INDEX_GTE = pytest.mark.mongo_deviation(
    server="secantus",
    reason=(
        "SecantusDB 0.7.0b3 drops the document equal to a $gte bound on a field that is descending "
        "in a compound index after an equality prefix. Repro: create_index([('a', 1), ('b', -1), "
        "('c', 1)]); insert_one({'a': 1, 'b': 5}); count_documents({'a': 1, 'b': {'$gte': 5}}) "
        "-> 0 (mongod: 1)"
    ),
)


async def boundary_jobs(store: Store, since: datetime) -> None:
    """One request exactly at `since` (counted by every `since` query), one a millisecond before."""
    for created, gpu in ((since, 10.0), (since - timedelta(milliseconds=1), 50.0)):
        job = make_job(user_id="u", guild_id="g", created_at=created)
        await store.insert_job(job)
        await store.finish_job(job.id, owner=None, state=JobState.COMPLETE, gpu_seconds=gpu)


@DESCENDING_INDEX_GTE
async def test_user_usage_counts_a_request_made_exactly_at_since(store: Store) -> None:
    await boundary_jobs(store, T0)
    assert await store.user_usage("u", since=T0) == Usage(jobs=1, gpu_seconds=10.0)


async def test_top_users_and_model_stats_count_a_request_made_exactly_at_since(store: Store) -> None:
    await boundary_jobs(store, T0)
    assert await store.top_users(since=T0) == [UserUsage(user_id="u", jobs=1, gpu_seconds=10.0)]
    (stats,) = await store.model_stats(since=T0)
    assert (stats.jobs, stats.gpu_seconds_total) == (1, 10.0)


@DESCENDING_INDEX_GTE
async def test_top_users_in_a_guild_count_a_request_made_exactly_at_since(store: Store) -> None:
    await boundary_jobs(store, T0)
    top = await store.top_users(since=T0, guild_id="g")
    assert top == [UserUsage(user_id="u", jobs=1, gpu_seconds=10.0)]


async def test_model_stats_per_model_and_kind(store: Store) -> None:
    plan = [
        ("sd15", "image", JobState.COMPLETE, 2.0, T0),
        ("sd15", "image", JobState.COMPLETE, 4.0, T0),
        ("sd15", "image", JobState.FAILED, None, T0),
        ("sd15", "image", JobState.CANCELLED, None, T0 - timedelta(days=2)),
        ("damo", "video", JobState.COMPLETE, 30.0, T0),
        ("damo", "video", None, None, T0),  # queued
    ]
    for model, kind, state, gpu, created in plan:
        job = make_job(model=model, kind=kind, created_at=created)
        await store.insert_job(job)
        if state is not None:
            await store.finish_job(job.id, owner=None, state=state, gpu_seconds=gpu)

    stats = await store.model_stats()
    assert [(s.model, s.kind) for s in stats] == [("damo", "video"), ("sd15", "image")]
    damo, sd = stats
    assert (sd.jobs, sd.complete, sd.failed, sd.cancelled) == (4, 2, 1, 1)
    assert sd.gpu_seconds_total == pytest.approx(6.0) and sd.gpu_seconds_avg == pytest.approx(3.0)
    assert (damo.jobs, damo.complete, damo.failed, damo.cancelled) == (2, 1, 0, 0)
    assert damo.gpu_seconds_total == pytest.approx(30.0) and damo.gpu_seconds_avg == pytest.approx(30.0)
    recent = {s.model: s for s in await store.model_stats(since=T0 - timedelta(days=1))}
    assert recent["sd15"].jobs == 3 and recent["sd15"].cancelled == 0
    assert await store.model_stats(since=T0 + timedelta(days=1)) == []


async def test_top_users_by_gpu_seconds_then_requests(store: Store) -> None:
    plan = [  # (user, guild, gpu seconds, created)
        ("a", "g1", 10.0, T0),
        ("a", "g2", 5.0, T0),
        ("b", "g1", 20.0, T0),
        ("c", "g1", None, T0),
        ("c", "g1", None, T0),
        ("d", "g1", None, T0),
        ("e", "g1", 99.0, T0 - timedelta(days=3)),  # too old
    ]
    for user, guild, gpu, created in plan:
        job = make_job(user_id=user, guild_id=guild, created_at=created)
        await store.insert_job(job)
        if gpu is not None:
            await store.finish_job(job.id, owner=None, state=JobState.COMPLETE, gpu_seconds=gpu)

    since = T0 - timedelta(days=1)
    top = await store.top_users(since=since)
    assert [(u.user_id, u.jobs, u.gpu_seconds) for u in top] == [
        ("b", 1, 20.0),
        ("a", 2, 15.0),
        ("c", 2, 0.0),
        ("d", 1, 0.0),
    ]
    assert [u.user_id for u in await store.top_users(since=since, limit=2)] == ["b", "a"]
    in_g2 = await store.top_users(since=since, guild_id="g2")
    assert [(u.user_id, u.jobs, u.gpu_seconds) for u in in_g2] == [("a", 1, 5.0)]
    assert await store.top_users(since=T0 + timedelta(days=1)) == []


# --------------------------------------------------------------------------- users


async def test_users_default_ban_unban_and_quota(store: Store) -> None:
    assert await store.get_user("42") == UserRecord(user_id="42")
    banned = await store.set_ban("42", banned=True, reason="spam «links» 🚫", by="admin-1")
    assert banned.banned and banned.ban_reason == "spam «links» 🚫" and banned.banned_by == "admin-1"
    assert banned.banned_at is not None and abs(datetime.now(UTC) - banned.banned_at) < timedelta(minutes=1)
    assert await store.get_user("42") == banned

    quota = await store.set_user_quota("42", max_queued=1, daily_gpu_seconds=60.0)
    assert quota.banned and quota.max_queued == 1 and quota.daily_gpu_seconds == 60.0
    await store.add_usage("42", jobs=1, gpu_seconds=2.5)
    await store.add_usage("42", jobs=2, gpu_seconds=1.0)
    user = await store.get_user("42")
    assert user.jobs_total == 3 and user.gpu_seconds_total == pytest.approx(3.5)
    assert user.banned and user.max_queued == 1

    unbanned = await store.set_ban("42", banned=False, reason="appeal accepted", by="admin-2")
    assert not unbanned.banned and unbanned.ban_reason is None and unbanned.banned_at is None
    assert unbanned.jobs_total == 3 and unbanned.max_queued == 1
    cleared = await store.set_user_quota("42", max_queued=None, daily_gpu_seconds=None)
    assert cleared.max_queued is None and cleared.daily_gpu_seconds is None

    await store.add_usage("new", gpu_seconds=1.25)
    fresh = await store.get_user("new")
    assert fresh.jobs_total == 0 and fresh.gpu_seconds_total == pytest.approx(1.25) and not fresh.banned


# --------------------------------------------------------------------------- guild settings


async def test_guild_settings_default_and_partial_updates(store: Store) -> None:
    assert await store.get_guild_settings("g") == GuildSettings(guild_id="g")
    first = await store.update_guild_settings(
        "g", allowed_channels=["1", "2"], limits={"max_steps": 30, "max_frames": 16}, nsfw_policy="spoiler"
    )
    assert first.allowed_channels == ["1", "2"] and first.nsfw_policy == "spoiler"
    second = await store.update_guild_settings("g", limits={"max_steps": 10}, blocklist=[r"\bgore\b", "ßpam"])
    assert second.limits == {"max_steps": 10}  # replaced whole
    assert second.blocklist == [r"\bgore\b", "ßpam"]
    assert second.allowed_channels == ["1", "2"] and second.nsfw_policy == "spoiler"
    third = await store.update_guild_settings("g", paused=True, gallery_public=True)
    assert await store.get_guild_settings("g") == third
    assert third.paused and third.gallery_public and third.limits == {"max_steps": 10}
    assert await store.get_guild_settings("other") == GuildSettings(guild_id="other")
    with pytest.raises(ValueError, match="unknown GuildSettings field"):
        await store.update_guild_settings("g", colour="red")
    with pytest.raises(ValueError, match="nsfw_policy"):
        await store.update_guild_settings("g", nsfw_policy="sometimes")


# --------------------------------------------------------------------------- audit


async def test_audit_is_newest_first_and_filterable(store: Store) -> None:
    entries = [
        AuditEntry(
            actor_id="a1", actor_name="Ann", action="ban", target="u1", reason="spam", guild_id="g1", at=T0
        ),
        AuditEntry(
            actor_id="a2",
            actor_name="Bo",
            action="quota",
            target="u1",
            guild_id="g2",
            details={"max_queued": 1},
            at=T0 + timedelta(minutes=1),
        ),
        AuditEntry(
            actor_id="a1",
            actor_name="Ann",
            action="settings",
            guild_id="g1",
            details={"paused": True, "nested": {"a": [1, 2]}},
            at=T0 + timedelta(minutes=2),
        ),
        AuditEntry(
            actor_id="a1",
            actor_name="Ann",
            action="unban",
            target="u1",
            reason="appeal 🙏",
            guild_id="g1",
            at=T0 + timedelta(minutes=2),
        ),  # same time as the previous one: insertion order breaks the tie
    ]
    for entry in entries:
        await store.add_audit(entry)

    assert await store.list_audit() == entries[::-1]
    assert [e.action for e in await store.list_audit(guild_id="g1")] == ["unban", "settings", "ban"]
    assert [e.action for e in await store.list_audit(actor_id="a2")] == ["quota"]
    assert [e.action for e in await store.list_audit(target="u1")] == ["unban", "quota", "ban"]
    assert [e.action for e in await store.list_audit(guild_id="g1", target="u1", limit=1)] == ["unban"]
    assert await store.list_audit(actor_id="nobody") == []
    assert (await store.list_audit(actor_id="a2"))[0].details == {"max_queued": 1}


# --------------------------------------------------------------------------- meta and schema


async def test_meta_round_trips_json_values(store: Store) -> None:
    assert await store.get_meta("costs") is None
    value = {"sd15": {"per_step_s": 0.05, "samples": 12}, "names": ["ä", "🎬"], "ok": True, "none": None}
    await store.set_meta("costs", value)
    assert await store.get_meta("costs") == value
    await store.set_meta("costs", [1, 2, 3])
    assert await store.get_meta("costs") == [1, 2, 3]


async def test_schema_version_is_recorded_and_reopening_is_harmless(store_backend: Backend) -> None:
    first = await store_backend.new_store()
    version = await first.schema_version()
    assert version >= 1
    job = make_job()
    await first.insert_job(job)
    second = await store_backend.new_store()  # runs the migrations check again on the same database
    assert await second.schema_version() == version
    assert await second.get_job(job.id) is not None


async def test_a_closed_store_opens_again_and_leaves_a_shared_connection_usable(
    store_backend: Backend,
) -> None:
    """The bot closes its store at shutdown and tests reopen theirs: neither may break a client
    (or file) the store shares with others. On a real server a closed MongoClient refuses any
    further use, and the mongomock stand-in refuses the same way."""
    first = store_backend.make()
    await first.open()
    job = make_job()
    await first.insert_job(job)
    await first.close()
    await first.open()
    assert await first.get_job(job.id) == normalise_job(job)
    await first.update_job(job.id, prompt="after the reopen")
    await first.close()
    other = await store_backend.new_store()  # a store on the same connection, opened afterwards
    got = await other.get_job(job.id)
    assert got is not None and got.prompt == "after the reopen"
    assert await other.ping()


# --------------------------------------------------------------------------- privacy


async def test_delete_user_data_removes_requests_and_files_but_not_running_jobs(
    store: Store, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    files = [results / "a.png", results / "b.mp4", results / "keep.png"]
    for f in files:
        f.write_bytes(b"data")

    done = make_job(user_id="gone")
    failed = make_job(user_id="gone")
    queued = make_job(user_id="gone")
    running = make_job(user_id="gone")
    other = make_job(user_id="stays", result_path=str(files[2]))
    for job in (done, failed, queued, running, other):
        await store.insert_job(job)
    await store.finish_job(done.id, owner=None, state=JobState.COMPLETE, result_path=str(files[0]))
    await store.finish_job(failed.id, owner=None, state=JobState.FAILED, result_path=str(files[1]))
    await store.claim_job(running.id, owner="w", **lease(T0))
    await store.add_usage("gone", jobs=4, gpu_seconds=9.0)
    await store.set_ban("gone", banned=True, reason="abuse", by="mod")

    assert await store.delete_user_data("gone") == 3
    assert not files[0].exists() and not files[1].exists() and files[2].exists()
    assert [j.id for j in await store.user_history("gone")] == [running.id]
    assert await store.get_job(done.id) is None and await store.get_job(queued.id) is None
    assert await store.get_job(other.id) is not None
    user = await store.get_user("gone")
    assert user.jobs_total == 0 and user.gpu_seconds_total == 0.0
    assert user.banned and user.ban_reason == "abuse"  # moderation survives a deletion request
    assert await store.delete_user_data("gone") == 0
    assert await store.delete_user_data("never-seen") == 0


# --------------------------------------------------------------------------- concurrency


async def test_two_claimers_never_claim_the_same_job(store_backend: Backend) -> None:
    first = await store_backend.new_store()
    second = await store_backend.new_store()  # separate connection / store instance, same database
    jobs = [make_job(prompt=f"race {i}") for i in range(60)]
    for job in jobs:
        await first.insert_job(job)
    ids = [j.id for j in jobs]

    async def claimer(store: Store, owner: str, order: list[str]) -> list[str]:
        won = []
        for job_id in order:
            got = await store.claim_job(job_id, owner=owner, **lease(T0))
            if got is not None:
                assert got.lease_owner == owner
                won.append(job_id)
        return won

    rng = random.Random(7)
    order_a, order_b = ids[:], ids[:]
    rng.shuffle(order_b)
    won_a, won_b = await asyncio.gather(claimer(first, "A", order_a), claimer(second, "B", order_b))

    assert not set(won_a) & set(won_b)
    assert sorted(won_a + won_b) == sorted(ids)
    for job in await first.jobs_in_states([JobState.IN_PROGRESS]):
        assert job.attempts == 1
        assert job.lease_owner == ("A" if job.id in won_a else "B")


async def test_delete_user_data_removes_kept_input_pictures_but_never_other_paths(
    store: Store, tmp_path: Path
) -> None:
    kept = tmp_path / "results" / "inputs" / "picture.png"
    elsewhere = tmp_path / "results" / "2026-11" / "someone-elses.png"
    for f in (kept, elsewhere):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"data")
    for image in (str(kept), str(elsewhere)):
        await store.insert_job(make_job(user_id="gone", params={"image": image}))

    assert await store.delete_user_data("gone") == 2
    assert not kept.exists()
    assert elsewhere.exists()  # an input path is only ever one we kept under inputs/


async def test_saved_defaults_round_trip_per_scope_owner_and_name(store: Store) -> None:
    assert await store.get_defaults("member", "u1") is None
    await store.set_defaults("member", "u1", {"steps": 12, "negative_prompt": "blurry «x»"})
    await store.set_defaults("member", "u1", {"steps": 14})  # replaced whole
    await store.set_defaults("channel", "u1", {"aspect": "16:9"})  # same owner id, other scope
    await store.set_defaults("preset", "u1", {"guidance": 4.5}, name="b look")
    await store.set_defaults("preset", "u1", {"count": 2}, name="a look")
    await store.set_defaults("preset", "u2", {"count": 3}, name="a look")
    assert await store.get_defaults("member", "u1") == {"steps": 14}
    assert await store.get_defaults("channel", "u1") == {"aspect": "16:9"}
    assert await store.get_defaults("preset", "u1", "b look") == {"guidance": 4.5}
    assert list(await store.list_defaults("preset", "u1")) == ["a look", "b look"]
    assert await store.delete_defaults("preset", "u1", "a look")
    assert not await store.delete_defaults("preset", "u1", "a look")
    assert await store.list_defaults("preset", "u1") == {"b look": {"guidance": 4.5}}
    # a member's deletion request takes their defaults and presets, not a channel's
    await store.delete_user_data("u1")
    assert await store.get_defaults("member", "u1") is None
    assert await store.list_defaults("preset", "u1") == {}
    assert await store.get_defaults("channel", "u1") == {"aspect": "16:9"}
    assert await store.list_defaults("preset", "u2") == {"a look": {"count": 3}}
