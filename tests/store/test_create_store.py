"""`create_store`: one setting, STORE_URL, picks the driver; anything else stops startup clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.core.store import create_store, sqlite_path
from bot.core.store.buffer import BufferedStore
from bot.core.store.mongo import MongoStore
from bot.core.store.sqlite import SQLiteStore
from bot.settings import Settings

log = logging.getLogger(__name__)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_default_is_an_embedded_sqlite_file_under_data() -> None:
    store = create_store(settings())
    assert isinstance(store, SQLiteStore) and store.path == Path("data/bot.db")


def test_sqlite_urls_relative_and_absolute() -> None:
    assert sqlite_path("sqlite:///data/bot.db") == Path("data/bot.db")
    assert sqlite_path("sqlite:////var/lib/bot/bot.db") == Path("/var/lib/bot/bot.db")
    assert sqlite_path("sqlite:///my%20data/bot.db") == Path("my data/bot.db")
    with pytest.raises(ValueError, match="names no file"):
        create_store(settings(store_url="sqlite:///"))


async def test_a_sqlite_url_opens_a_working_store(tmp_path: Path) -> None:
    path = tmp_path / "new" / "bot.db"
    async with create_store(settings(store_url=f"sqlite:///{path}")) as store:
        assert await store.ping()
    assert path.exists()


def test_mongodb_urls_build_a_mongo_store_with_the_configured_database_and_write_concern() -> None:
    store = create_store(settings(store_url="mongodb://127.0.0.1:1/from_url", mongodb_write_concern="1"))
    assert isinstance(store, MongoStore) and store.db_name == "from_url"
    assert store.owns_client  # built from the URL: the store closes (and rebuilds) its own client
    assert store.write_concern.document == {"w": 1, "j": True}
    store.client.close()
    fallback = create_store(settings(store_url="mongodb://127.0.0.1:1", mongodb_db="from_setting"))
    assert isinstance(fallback, MongoStore) and fallback.db_name == "from_setting"
    assert fallback.write_concern.document == {"w": "majority", "j": True}
    fallback.client.close()


def test_buffered_wraps_the_driver_with_the_configured_bound(tmp_path: Path) -> None:
    store = create_store(settings(store_url=f"sqlite:///{tmp_path}/b.db", log_buffer_max=123), buffered=True)
    assert isinstance(store, BufferedStore) and isinstance(store.inner, SQLiteStore)
    assert store.max_items == 123 and store.name == "sqlite"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://bot:hunter2@db/bot",
        "sqlite://relative.db",
        "mysql://x",
        "data/bot.db",
        "",
        "MONGODB://h/db",
    ],
)
def test_an_unknown_scheme_is_a_clear_error_that_names_store_url(url: str) -> None:
    with pytest.raises(ValueError, match="STORE_URL") as caught:
        create_store(settings(store_url=url))
    message = str(caught.value)
    assert "sqlite:///" in message and "mongodb://" in message  # says what would work
    assert "hunter2" not in message  # never echoes credentials
