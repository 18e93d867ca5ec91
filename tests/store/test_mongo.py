"""What only the Mongo driver promises: URL parsing, write concern, indexes, schema, outages."""

from __future__ import annotations

import logging

import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import ConnectionFailure

from bot.core.jobs import JobState
from bot.core.store import mongo as mongo_module
from bot.core.store import mongo_db_name
from bot.core.store.base import StoreUnavailable
from bot.core.store.buffer import BufferedStore
from bot.core.store.mongo import SCHEMA_KEY, MongoStore, parse_write_concern
from bot.core.store.testing import mongomock_client, mongomock_store

from .test_contract import T0, lease, make_job

log = logging.getLogger(__name__)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mongodb://127.0.0.1:27017/botdb", "botdb"),
        ("mongodb://user:p%40ss@h1:27017,h2:27017/prod?replicaSet=rs0&w=majority", "prod"),
        ("mongodb+srv://user:pw@cluster0.abcde.mongodb.net/imagine?retryWrites=true", "imagine"),
        ("mongodb://127.0.0.1:27017", "fallback"),
        ("mongodb://127.0.0.1:27017/", "fallback"),
        ("mongodb://127.0.0.1:27017/?authSource=admin", "fallback"),
    ],
)
def test_the_database_name_comes_from_the_url_path_else_the_setting(url: str, expected: str) -> None:
    assert mongo_db_name(url, "fallback") == expected


def test_writes_are_journaled_with_the_configured_write_concern() -> None:
    assert parse_write_concern("majority").document == {"w": "majority", "j": True}
    assert parse_write_concern("1").document == {"w": 1, "j": True}
    client = AsyncIOMotorClient(
        "mongodb://127.0.0.1:1", connect=False
    )  # a real motor client, no server needed
    store = MongoStore(client=client, db_name="x", write_concern="2")
    for collection in (store.jobs, store.users, store.guilds, store.audit, store.meta):
        assert collection.write_concern.document == {"w": 2, "j": True}
    client.close()


async def test_open_creates_the_indexes_and_records_the_schema_version() -> None:
    store = mongomock_store()
    await store.open()
    jobs_indexes = [
        tuple(k for k, _ in spec["key"]) for spec in (await store.jobs.index_information()).values()
    ]
    assert ("user_id", "created_at", "seq") in jobs_indexes
    assert ("state", "created_at", "seq") in jobs_indexes
    assert ("state", "lease_expires_at") in jobs_indexes
    assert ("state", "finished_at", "seq") in jobs_indexes
    audit_indexes = [
        tuple(k for k, _ in spec["key"]) for spec in (await store.audit.index_information()).values()
    ]
    assert ("guild_id", "at") in audit_indexes and ("target", "at") in audit_indexes
    assert await store.schema_version() == mongo_module.SCHEMA_VERSION
    assert await store.get_meta(SCHEMA_KEY) == mongo_module.SCHEMA_VERSION


async def test_a_database_from_newer_code_is_refused() -> None:
    client = mongomock_client()
    store = mongomock_store(client=client, db_name="future")
    await store.open()
    await store.set_meta(SCHEMA_KEY, 99)
    with pytest.raises(RuntimeError, match="newer than this code"):
        await mongomock_store(client=client, db_name="future").open()


async def test_the_id_lookup_of_the_stand_in_changes_no_result() -> None:
    """The bench's `_id` shortcut must answer exactly like mongomock's scan."""
    client = mongomock_client()
    fast = mongomock_store(client=client, db_name="same")
    plain = mongomock_store(client=client, db_name="same", id_index=False)
    await fast.open()
    job = make_job()
    await fast.insert_job(job)
    assert await fast.claim_job(job.id, owner="w", **lease(T0)) == await plain.get_job(job.id)
    assert (
        await fast.claim_job(job.id, owner="w", **lease(T0)) is None
    )  # the rest of the filter still applies
    assert await plain.claim_job(job.id, owner="w", **lease(T0)) is None
    assert await fast.get_job("missing") is None


async def test_an_unreachable_server_is_store_unavailable_and_log_writes_are_buffered() -> None:
    inner = MongoStore(
        client_factory=lambda: AsyncIOMotorClient(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100", tz_aware=True
        ),
        db_name="down",
    )
    assert not await inner.ping()
    with pytest.raises(StoreUnavailable, match="unreachable") as caught:
        await inner.open()
    assert isinstance(caught.value.__cause__, ConnectionFailure)  # the driver's error stays chained

    store = BufferedStore(inner, max_items=10, flush_interval_s=3600)
    with pytest.raises(StoreUnavailable, match="not queued"):
        await store.insert_job(make_job())
    assert await store.finish_job("some-job", owner=None, state=JobState.FAILED, error="gpu fell off") is None
    assert store.buffer_size == 1 and store.dropped == 0
    await store.close()  # cannot flush: logs what is lost, does not hang


async def test_a_store_closes_only_the_client_it_built_and_builds_a_fresh_one_to_reopen() -> None:
    import mongomock

    server = mongomock.MongoClient(tz_aware=True)  # one "server": every client sees the same data
    built: list = []

    def factory() -> object:
        built.append(mongomock_client(mock_mongo_client=server))
        return built[-1]

    own = MongoStore(client_factory=factory, db_name="owned")
    assert own.owns_client
    await own.open()
    job = make_job()
    await own.insert_job(job)
    await own.close()
    assert built[0].closed  # its own client is released at close
    await own.open()
    assert len(built) == 2 and not built[1].closed  # and a fresh one built to open again
    got = await own.get_job(job.id)
    assert got is not None and got.prompt == job.prompt
    await own.close()

    shared = mongomock_client(mock_mongo_client=server)
    lent = MongoStore(client=shared, db_name="owned")
    assert not lent.owns_client
    await lent.open()
    await lent.close()
    assert not shared.closed  # the caller's client stays open for the caller
    assert await shared.get_database("owned").get_collection("jobs").find_one({"_id": job.id})
    with pytest.raises(ValueError, match="either client= or client_factory="):
        MongoStore(client=shared, client_factory=factory, db_name="x")
