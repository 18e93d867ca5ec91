"""The gateway: a websocket speaking Discord's v10 protocol to an unmodified discord.py.

HELLO → IDENTIFY → READY plus one GUILD_CREATE per guild of the shard; heartbeats are
acknowledged and recorded (a test can check they kept coming while the bot was busy);
RESUME replays what the session missed while it was disconnected. Transport compression is
whatever the client asked for in the URL: `zlib-stream` (one zlib stream per connection,
each message flushed with Z_SYNC_FLUSH, sent as binary frames), `zstd-stream` when the
`zstandard` module is importable, or none (text frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .models import FakeGuild
from .state import State

log = logging.getLogger(__name__)

try:  # discord.py asks for zstd-stream exactly when it can import zstandard
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


class Op:
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE = 3
    VOICE_STATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_MEMBERS = 8
    INVALIDATE_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intent:
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class Close:
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


REPLAY_BUFFER = 2000


@dataclass(frozen=True)
class Heartbeat:
    at: float  # time.monotonic()
    session_id: str | None
    sequence: int | None


@dataclass(eq=False)
class GatewaySession:
    """What Discord keeps between connections: the id, the sequence and what was sent."""

    id: str
    intents: int
    shard: tuple[int, int]
    sequence: int = 0
    sent: deque[dict] = field(default_factory=lambda: deque(maxlen=REPLAY_BUFFER))
    connection: Connection | None = None
    invalidated: bool = False
    presence: dict | None = None

    def covers(self, guild_id: int | None) -> bool:
        shard_id, shard_count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % shard_count == shard_id


class Connection:
    """One websocket; encodes each payload with the transport compression it asked for."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None) -> None:
        self.ws = ws
        self.compress = compress
        self.session: GatewaySession | None = None
        self.closed = asyncio.Event()
        self.last_heartbeat = time.monotonic()
        self._lock = asyncio.Lock()
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self._zstd = (
            zstandard.ZstdCompressor().compressobj() if compress == "zstd-stream" and zstandard else None
        )

    async def send(self, payload: dict) -> bool:
        """False when the socket is gone (the caller keeps the event for a RESUME)."""
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:  # compressed frames must leave in the order they were compressed
            if self.ws.closed:
                return False
            try:
                if self._zlib is not None:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                elif self._zstd is not None:
                    data = self._zstd.compress(text.encode()) + self._zstd.flush(
                        zstandard.COMPRESSOBJ_FLUSH_BLOCK
                    )
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("gateway send failed: %s", exc)
                return False
        return True

    async def close(self, code: int, message: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())


class Gateway:
    def __init__(
        self,
        state: State,
        *,
        heartbeat_interval_ms: int,
        heartbeat_timeout_s: float | None,
        privileged_intents: int,
    ) -> None:
        self.state = state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.privileged_intents = privileged_intents
        self.url = ""  # ws://host:port/gateway, set when the server starts
        self.sessions: list[GatewaySession] = []
        self.connections: list[Connection] = []
        self.heartbeats: list[Heartbeat] = []
        self.identifies = 0
        self.resumes = 0
        self.heartbeat_timeouts = 0
        self.compressions: list[str | None] = []
        self.close_codes: list[int] = []  # codes the fake closed connections with

    # what the test-facing API reads --------------------------------------------------------

    def live_session(self, guild_id: int | None = None) -> GatewaySession | None:
        for session in reversed(self.sessions):
            if not session.invalidated and session.covers(guild_id):
                return session
        return None

    @property
    def connected(self) -> bool:
        session = self.live_session()
        return session is not None and session.connection is not None

    # dispatching ---------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict, *, guild_id: int | None = None) -> bool:
        """Send an event to the session that owns `guild_id`; kept for RESUME if disconnected."""
        session = self.live_session(guild_id)
        if session is None:
            return False
        await self._send_dispatch(session, event, data)
        return True

    async def dispatch_guild_event(
        self, event: str, data: dict, *, guild_id: int | None, intent: int
    ) -> None:
        session = self.live_session(guild_id)
        if session is not None and session.intents & intent:
            await self._send_dispatch(session, event, data)

    async def _send_dispatch(self, session: GatewaySession, event: str, data: dict) -> None:
        session.sequence += 1
        payload = {"op": Op.DISPATCH, "t": event, "s": session.sequence, "d": data}
        session.sent.append(payload)
        if session.connection is not None:
            await session.connection.send(payload)

    # faults --------------------------------------------------------------------------------

    async def drop(self, *, code: int = Close.UNKNOWN_ERROR, resumable: bool = True) -> None:
        """Close the live connection; discord.py reconnects and RESUMEs (or re-IDENTIFYs)."""
        session = self.live_session()
        if session is None or session.connection is None:
            raise RuntimeError("no connected gateway session to drop")
        connection = session.connection
        if not resumable:
            session.invalidated = True
        self.close_codes.append(code)
        await connection.close(code, "dropped by the test")
        await connection.closed.wait()

    async def invalidate(self, *, resumable: bool = False) -> None:
        """Op 9: discord.py closes and reconnects, to DEFAULT_GATEWAY when not resumable."""
        session = self.live_session()
        if session is None or session.connection is None:
            raise RuntimeError("no connected gateway session to invalidate")
        if not resumable:
            session.invalidated = True
        await session.connection.send({"op": Op.INVALIDATE_SESSION, "d": resumable})

    async def request_reconnect(self) -> None:
        """Op 7: Discord asks the client to reconnect and resume."""
        session = self.live_session()
        if session is None or session.connection is None:
            raise RuntimeError("no connected gateway session")
        await session.connection.send({"op": Op.RECONNECT, "d": None})

    async def close_all(self) -> None:
        for connection in list(self.connections):
            await connection.close(1001, "fake Discord shutting down")

    # the websocket handler -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        self.compressions.append(compress)
        connection = Connection(ws, compress)
        self.connections.append(connection)
        watchdog: asyncio.Task | None = None
        try:
            problem = self._check_query(request, compress)
            if problem is not None:
                await self._close(connection, *problem)
                return ws
            await connection.send({"op": Op.HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            if self.heartbeat_timeout_s is not None:
                watchdog = asyncio.create_task(self._watch_heartbeats(connection))
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    await self._close(connection, Close.DECODE_ERROR, "only JSON text frames are understood")
                    break
                try:
                    payload = json.loads(message.data)
                    await self._receive(connection, payload)
                except Exception as exc:  # a bug here must show up in the test, not hang it
                    log.exception("fake gateway failed on %r", message.data[:200])
                    self.state.internal_errors.append(f"gateway: {exc!r}")
                    await self._close(connection, Close.UNKNOWN_ERROR, "fake gateway error")
                    break
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if connection.session is not None and connection.session.connection is connection:
                connection.session.connection = None
            self.connections.remove(connection)
            connection.closed.set()
            self.state.notify()
        return ws

    def _check_query(self, request: web.Request, compress: str | None) -> tuple[int, str] | None:
        if request.query.get("v") != "10":
            return Close.INVALID_API_VERSION, "Invalid API version"
        if request.query.get("encoding", "json") != "json":
            return Close.DECODE_ERROR, "only encoding=json is supported by the fake"
        if compress not in (None, "zlib-stream", "zstd-stream"):
            return Close.DECODE_ERROR, f"unknown compression {compress}"
        if compress == "zstd-stream" and zstandard is None:
            return Close.DECODE_ERROR, "zstd-stream asked for but zstandard is not importable here"
        return None

    async def _close(self, connection: Connection, code: int, reason: str) -> None:
        log.info("fake gateway closes a connection: %s %s", code, reason)
        self.close_codes.append(code)
        await connection.close(code, reason)

    async def _watch_heartbeats(self, connection: Connection) -> None:
        """Discord closes a connection that stops heartbeating; so does the fake."""
        assert self.heartbeat_timeout_s is not None
        while not connection.ws.closed:
            await asyncio.sleep(self.heartbeat_timeout_s / 4)
            if self.state.now() - connection.last_heartbeat > self.heartbeat_timeout_s:
                self.heartbeat_timeouts += 1
                await self._close(connection, Close.SESSION_TIMED_OUT, "no heartbeat in time")
                return

    async def _receive(self, connection: Connection, payload: dict) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op == Op.HEARTBEAT:
            session = connection.session
            connection.last_heartbeat = self.state.now()
            self.heartbeats.append(Heartbeat(self.state.now(), session.id if session else None, data))
            await connection.send({"op": Op.HEARTBEAT_ACK})
            self.state.notify()
        elif op == Op.IDENTIFY:
            await self._identify(connection, data or {})
        elif op == Op.RESUME:
            await self._resume(connection, data or {})
        elif op == Op.REQUEST_MEMBERS:
            await self._request_members(connection, data or {})
        elif op == Op.PRESENCE:
            if connection.session is not None:
                connection.session.presence = data
        elif op == Op.VOICE_STATE:
            pass
        else:
            await self._close(connection, Close.UNKNOWN_OPCODE, f"unknown opcode {op}")

    async def _identify(self, connection: Connection, data: dict) -> None:
        if connection.session is not None:
            await self._close(connection, Close.ALREADY_AUTHENTICATED, "Already authenticated")
            return
        if data.get("token") != self.state.token:
            await self._close(connection, Close.AUTHENTICATION_FAILED, "Authentication failed")
            return
        intents = data.get("intents")
        if not isinstance(intents, int):
            await self._close(connection, Close.INVALID_INTENTS, "Invalid intent(s)")
            return
        if intents & Intent.PRIVILEGED & ~self.privileged_intents:
            await self._close(connection, Close.DISALLOWED_INTENTS, "Disallowed intent(s)")
            return
        shard = tuple(data.get("shard") or (0, 1))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            await self._close(connection, Close.INVALID_SHARD, "Invalid shard")
            return
        session = GatewaySession(id=secrets.token_hex(16), intents=intents, shard=(shard[0], shard[1]))
        session.presence = data.get("presence")
        for old in self.sessions:
            if old.shard == session.shard:
                old.invalidated = True
        self.sessions.append(session)
        session.connection = connection
        connection.session = session
        self.identifies += 1
        guilds = [g for g in self.state.guilds if session.covers(g.id)]
        await self._send_dispatch(session, "READY", self._ready_payload(session, guilds))
        if intents & Intent.GUILDS:
            for guild in guilds:
                await self._send_dispatch(session, "GUILD_CREATE", self._guild_payload(guild, intents))
        self.state.notify()

    def _ready_payload(self, session: GatewaySession, guilds: list[FakeGuild]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": 10,
            "user": {**self.state.bot_user.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(self.state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }
        if session.shard != (0, 1):
            payload["shard"] = list(session.shard)
        return payload

    def _guild_payload(self, guild: FakeGuild, intents: int) -> dict:
        bot_member = self.state.bot_member(guild)
        members = list(guild.members) if intents & Intent.GUILD_MEMBERS else [bot_member]
        return guild.to_payload(include_members=members)

    async def _resume(self, connection: Connection, data: dict) -> None:
        session = next((s for s in self.sessions if s.id == data.get("session_id")), None)
        if data.get("token") != self.state.token:
            await self._close(connection, Close.AUTHENTICATION_FAILED, "Authentication failed")
            return
        if session is None or session.invalidated:
            await connection.send({"op": Op.INVALIDATE_SESSION, "d": False})
            return
        seq = data.get("seq") or 0
        if seq > session.sequence:
            await self._close(connection, Close.INVALID_SEQ, "Invalid seq")
            return
        if session.connection is not None and session.connection is not connection:
            await session.connection.close(Close.UNKNOWN_ERROR, "session resumed elsewhere")
        session.connection = connection
        connection.session = session
        missed = [p for p in session.sent if p["s"] > seq]
        for payload in missed:
            await connection.send(payload)
        self.resumes += 1
        await self._send_dispatch(session, "RESUMED", {})
        self.state.notify()

    async def _request_members(self, connection: Connection, data: dict) -> None:
        session = connection.session
        if session is None:
            await self._close(connection, Close.NOT_AUTHENTICATED, "Not authenticated")
            return
        guild = self.state.guild(int(data.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members)
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.user.username.startswith(data["query"])]
        limit = data.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)
