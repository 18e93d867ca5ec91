"""The SQLite store's connections and the one place its errors become `StoreUnavailable`.

One long-lived connection for writes in autocommit mode, plus one for SELECTs (WAL lets a read run
beside a write, so a status read never queues behind an fsync). Every write is ONE statement, so
there is never an open transaction another coroutine's statement could slip into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from bot.core.jobs import Job
from bot.core.store.base import Store, StoreUnavailable
from bot.core.store.sqlite import schema
from bot.core.store.sqlite.rows import job_from_row

log = logging.getLogger(__name__)

# SQLite primary result codes that mean "the database cannot be used right now", as opposed to a
# bug in a statement: busy/locked past the timeout, I/O error, disk full, read-only, cannot open, ...
_OUTAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


class SQLiteConnection(Store):
    """Opening, closing and running statements; the record operations live in the sibling mixins."""

    name = "sqlite"

    def __init__(
        self,
        *,
        path: str | Path,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
    ) -> None:
        """`synchronous="FULL"` (the default, and what the bot uses) fsyncs every commit; the
        others exist for throwaway test databases and for measuring what the fsync costs."""
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None  # every write, in autocommit
        self._reader: aiosqlite.Connection | None = None  # SELECTs, so reads never wait on an fsync

    async def open(self) -> None:
        if self._conn is not None:
            return
        if str(self.path) != ":memory:":
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"The SQLite store {self.path} cannot be opened ({exc}).") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = (await conn.execute_fetchall("PRAGMA journal_mode = WAL"))[0][0]
            await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            await schema.migrate(conn, self.path)
        except BaseException:
            await conn.close()
            raise
        reader = conn
        if str(self.path) != ":memory:":  # a second in-memory connection would be another database
            try:
                reader = await aiosqlite.connect(str(self.path), isolation_level=None)
                await reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                await reader.execute("PRAGMA query_only = 1")
            except BaseException:
                await conn.close()
                raise
        self._conn, self._reader = conn, reader
        log.info("SQLite store open: %s (journal %s, schema v%d)", self.path, mode, schema.SCHEMA_VERSION)

    async def close(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        if reader is not None and reader is not conn:
            await reader.close()
        if conn is not None:
            await conn.close()

    async def ping(self) -> bool:
        try:
            await self._fetch("SELECT 1")
        except Exception:
            return False
        return True

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(rows[0][0])

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _OUTAGE_CODES:
                name = getattr(exc, "sqlite_errorname", "error")
                raise StoreUnavailable(
                    f"The database is unavailable right now ({name}); please try again shortly."
                ) from exc
            raise
        except ValueError as exc:  # aiosqlite: the connection was closed under us
            if "connection" in str(exc).lower():
                raise StoreUnavailable("The database connection is closed.") from exc
            raise

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._reader if sql.startswith("SELECT") else self._conn
        if conn is None:
            raise StoreUnavailable("The database is not open.")
        with self._guard():
            return list(await conn.execute_fetchall(sql, params))

    async def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement over many rows in one transaction (one fsync). Only for a bulk import
        while nothing else writes: another coroutine's write in between would join it."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("The database is not open.")
        with self._guard():
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.executemany(sql, rows)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def _fetch_jobs(self, sql: str, params: Sequence[Any] = ()) -> list[Job]:
        return [job_from_row(row) for row in await self._fetch(sql, params)]

    async def _fetch_job(self, sql: str, params: Sequence[Any] = ()) -> Job | None:
        rows = await self._fetch(sql, params)
        return job_from_row(rows[0]) if rows else None
