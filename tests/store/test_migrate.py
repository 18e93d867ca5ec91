"""`python -m bot.store migrate`: an owner moves everything from SQLite to MongoDB and back.

The data set is built through the stores' public API the way the bot writes it: jobs in every
state (a running one with its lease, several created in the same millisecond), bans, quotas, usage,
guild settings, the audit trail, meta. The Mongo side runs on mongomock and, when
`MONGODB_TEST_URI` is set, on the real server.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import JobState
from bot.core.store.base import COLLECTIONS, AuditEntry, Store
from bot.core.store.migrate import TargetNotEmpty, copy_store
from bot.core.store.sqlite import SQLiteStore
from tests.real_mongodb import MONGODB_TEST_URI

from .conftest import NO_MONGODB_REASON, Backend
from .test_contract import T0, lease, make_job

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: rows compared after a round trip: every table a migration copies (schema_version is each file's own)
TABLES = {
    "jobs": "id",
    "users": "user_id",
    "guild_settings": "guild_id",
    "audit": "id",
    "meta": "key",
    "defaults": "scope, owner, name",
}


async def populate(store: Store, *, jobs: int = 40) -> None:
    """A small server's worth of history, written through the API as the bot writes it."""
    for i in range(jobs):
        job = make_job(
            user_id=f"u{i % 5}",
            guild_id=None if i % 7 == 0 else f"g{i % 2}",
            created_at=T0 + timedelta(seconds=i // 4),  # four jobs in each millisecond-exact second
            prompt=f"prompt {i} «ünïcode» 🎨",
            params={"steps": i, "nested": {"list": [1, 2.5, None]}},
        )
        await store.insert_job(job)
        if i % 4 == 1:
            await store.claim_job(job.id, owner="worker-a", **lease(T0 + timedelta(seconds=i)))
        elif i % 4 == 2:
            await store.finish_job(
                job.id, owner=None, state=JobState.COMPLETE, gpu_seconds=1.25 * i, result_message_id=f"m{i}"
            )
        elif i % 4 == 3 and i % 8 == 3:
            await store.finish_job(job.id, owner=None, state=JobState.FAILED, error="out of memory")
    await store.set_ban("u1", banned=True, reason="spam «links»", by="admin")
    await store.set_user_quota("u2", max_queued=3, daily_gpu_seconds=120.5)
    await store.add_usage("u0", jobs=7, gpu_seconds=33.25)
    await store.update_guild_settings("g0", allowed_channels=["c1", "c2"], blocklist=["re:gh?ost"])
    await store.update_guild_settings("g1", nsfw_policy="spoiler", limits={"max_steps": 30}, paused=True)
    for i in range(12):
        await store.add_audit(
            AuditEntry(
                actor_id="admin",
                actor_name="Admin",
                action=("ban", "quota", "settings")[i % 3],
                target=f"u{i % 4}",
                guild_id=f"g{i % 2}",
                details={"i": i},
                at=T0 + timedelta(seconds=i // 3),
            )
        )
    await store.set_meta("costs", {"tiny-image": {"per_step": 0.125}})
    await store.set_meta("announcement", "hello")
    await store.set_defaults("member", "u0", {"steps": 12, "negative_prompt": "«blurry»"})
    await store.set_defaults("channel", "c1", {"aspect": "16:9"})
    await store.set_defaults("preset", "u1", {"guidance": 4.5, "count": 2}, name="my «look» 🎨")


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as db:
        rows = {
            table: db.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in TABLES.items()
        }
        rows["schema_version"] = db.execute("SELECT version, description FROM schema_version").fetchall()
    return rows


async def exported(store: Store, name: str) -> list[dict[str, Any]]:
    return [record async for batch in store.export_records(name, batch_size=7) for record in batch]


@pytest.fixture(params=["mongomock", "mongodb"])
async def mongo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "mongodb" and not MONGODB_TEST_URI:
        pytest.skip(NO_MONGODB_REASON)
    backend = Backend(request.param, tmp_path)
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_sqlite_to_mongo_to_sqlite_gives_identical_rows(tmp_path: Path, mongo: Backend) -> None:
    original = tmp_path / "original.db"
    async with SQLiteStore(path=original) as source:
        await populate(source)
        history = await source.user_history("u0", limit=50)
        target = await mongo.new_store()
        report = await copy_store(source, target, batch_size=7)
    assert report.copied == report.source_counts == report.target_counts
    assert report.copied == {
        "jobs": 40,
        "users": 3,
        "guild_settings": 2,
        "audit": 12,
        "meta": 2,
        "defaults": 3,
    }
    assert await target.user_history("u0", limit=50) == history  # same-time ties keep their order
    assert (await target.get_user("u1")).ban_reason == "spam «links»"
    assert (await target.get_guild_settings("g1")).limits == {"max_steps": 30}
    assert await target.get_defaults("preset", "u1", "my «look» 🎨") == {"guidance": 4.5, "count": 2}

    back = tmp_path / "back.db"
    async with SQLiteStore(path=back) as again:
        await copy_store(target, again, batch_size=5)
        assert await again.user_history("u0", limit=50) == history
    assert sqlite_rows(back) == sqlite_rows(original)


async def test_mongo_to_sqlite_and_back_keeps_every_record(tmp_path: Path, mongo: Backend) -> None:
    source = await mongo.new_store()
    await populate(source, jobs=25)
    async with SQLiteStore(path=tmp_path / "bot.db") as middle:
        report = await copy_store(source, middle)
        assert report.target_counts == report.source_counts
        assert report.target_counts["jobs"] == 25
        assert await middle.jobs_in_states(JobState) == await source.jobs_in_states(JobState)
        assert await middle.expired_leases(T0 + timedelta(days=1)) == await source.expired_leases(
            T0 + timedelta(days=1)
        )
        other = await mongo.new_store(other="back")  # a second, empty database on the same server
        await copy_store(middle, other)
    for name in COLLECTIONS:
        assert await exported(other, name) == await exported(source, name), name


async def test_a_non_empty_target_is_refused_unless_merge_and_merging_twice_changes_nothing(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(path=tmp_path / "a.db") as source, SQLiteStore(path=tmp_path / "b.db") as target:
        await populate(source, jobs=12)
        await target.set_meta("announcement", "the target's own")
        await target.set_ban("u9", banned=True, reason="only in the target", by="admin")
        with pytest.raises(TargetNotEmpty, match=r"not empty .*1 users, 1 meta.*--merge") as refused:
            await copy_store(source, target)
        assert refused.value.counts == {"users": 1, "meta": 1}
        assert await target.count_records("jobs") == 0  # nothing was copied

        first = await copy_store(source, target, merge=True)
        rows = sqlite_rows(tmp_path / "b.db")
        second = await copy_store(source, target, merge=True)
        assert sqlite_rows(tmp_path / "b.db") == rows  # idempotent
        assert first.target_counts == second.target_counts
        assert second.target_counts["users"] == first.source_counts["users"] + 1
        assert await target.get_meta("announcement") == "hello"  # the source's record wins
        assert (await target.get_user("u9")).banned  # the target's own records stay


async def test_every_table_and_collection_a_store_keeps_is_copied(tmp_path: Path) -> None:
    """A table added without migrate support would be left behind silently: fail here instead."""
    async with SQLiteStore(path=tmp_path / "bot.db") as store:
        await populate(store, jobs=4)
    with sqlite3.connect(tmp_path / "bot.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {*COLLECTIONS, "schema_version"}
    assert set(TABLES) == set(COLLECTIONS)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORE_", "MONGODB_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "bot.store", "migrate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_command_copies_with_progress_and_counts_and_refuses_a_second_run(tmp_path: Path) -> None:
    async with SQLiteStore(path=tmp_path / "old.db") as source:
        await populate(source, jobs=20)
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    done = run_cli(old, new, "--progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jobs" in done.stderr and "100%" in done.stderr  # the bars
    counts = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:7]}
    assert counts == {
        "jobs": ["20", "20"],
        "users": ["3", "3"],
        "guild_settings": ["2", "2"],
        "audit": ["12", "12"],
        "meta": ["2", "2"],
    }
    assert sqlite_rows(tmp_path / "new.db") == sqlite_rows(tmp_path / "old.db")

    again = run_cli(old, new, cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr and "--merge" in again.stderr
    merged = run_cli(old, new, "--merge", "--no-progress", cwd=tmp_path)
    assert merged.returncode == 0 and "%" not in merged.stderr
    same = run_cli(old, old, cwd=tmp_path)
    assert same.returncode == 2 and "same store" in same.stderr
    bad = run_cli(old, "postgres://x/y", cwd=tmp_path)
    assert bad.returncode == 2 and "unsupported scheme" in bad.stderr


@pytest.mark.real_mongodb
@pytest.mark.skipif(not MONGODB_TEST_URI, reason=NO_MONGODB_REASON)
async def test_the_command_moves_sqlite_to_the_real_server_and_back(tmp_path: Path) -> None:
    from bot.core.store.mongo import make_client

    async with SQLiteStore(path=tmp_path / "old.db") as source:
        await populate(source)
    base, _, query = MONGODB_TEST_URI.partition("?")
    db_name = f"imaginebot_migrate_{os.getpid()}"
    mongo_url = f"{base.rstrip('/')}/{db_name}" + (f"?{query}" if query else "")
    try:
        there = run_cli(f"sqlite:///{tmp_path / 'old.db'}", mongo_url, "--progress", cwd=tmp_path)
        assert there.returncode == 0, there.stderr
        assert "jobs" in there.stderr and "100%" in there.stderr
        back = run_cli(mongo_url, f"sqlite:///{tmp_path / 'back.db'}", cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        log.info("migrate on the real server:\n%s\n%s", there.stdout, back.stdout)
    finally:
        client = make_client(MONGODB_TEST_URI)
        await client.drop_database(db_name)
        client.close()
    assert sqlite_rows(tmp_path / "back.db") == sqlite_rows(tmp_path / "old.db")
