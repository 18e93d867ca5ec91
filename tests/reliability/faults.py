"""Ways to take a store away from a running bot, the way production loses it.

- :class:`SQLiteLock`: another process holds SQLite's write lock (a backup tool, a stuck
  `sqlite3` shell, a second bot on the same file). Reads keep working (WAL); every write waits
  `busy_timeout` and fails with SQLITE_BUSY, which the driver reports as `StoreUnavailable`.
- :class:`MongoOutage`: every call a `MongoStore` makes fails with `AutoReconnect`, pymongo's
  error for a lost primary, until it is lifted (the mongomock fault injector).
- :class:`TcpCut`: a loopback proxy in front of a real server (`MONGODB_TEST_URI`) whose
  connections can be cut and refused, as a network partition does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

from pymongo.errors import AutoReconnect

from bot.core.store.mongo import MongoStore

log = logging.getLogger(__name__)


class SQLiteLock:
    """Hold an exclusive write lock on a SQLite file from this process (blocking calls: thread them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def acquire(self, timeout_s: float = 30.0) -> None:
        conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")  # waits for a write in flight, then keeps every writer out
        self._conn = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.execute("ROLLBACK")
            conn.close()

    async def __aenter__(self) -> SQLiteLock:
        await asyncio.to_thread(self.acquire)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.release)


class _Down:
    """Stands in for a motor collection or database while the server is unreachable."""

    def __init__(self, inner: Any, outage: MongoOutage) -> None:
        self._inner = inner
        self._outage = outage

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._outage.down:
                self._outage.refused += 1
                raise AutoReconnect(f"connection refused (injected outage) in {name}")
            return attr(*args, **kwargs)

        return call


class MongoOutage:
    """Put a `MongoStore`'s collections and database behind a switch; `down = True` cuts them."""

    COLLECTIONS = ("jobs", "users", "guilds", "audit", "meta")

    def __init__(self, store: MongoStore) -> None:
        self.down = False
        self.refused = 0
        store.db = _Down(store.db, self)
        for name in self.COLLECTIONS:
            setattr(store, name, _Down(getattr(store, name), self))


class TcpCut:
    """A TCP proxy on 127.0.0.1 to `target` (host, port); `cut()` drops and refuses connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.cut_now = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpCut:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_now = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_now = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
