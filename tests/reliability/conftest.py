"""A bot deployment that can be killed, stopped and started again against one fake Discord.

The end-to-end fixtures in `tests/bot/conftest.py` run one `python -m bot` per module; the
reliability stories need more: the same data directory, SQLite file and Discord world across
restarts, environment overrides (short timeouts, API keys, broken models), and a launcher
with fault hooks (`tests.reliability.faulty_bot`). `Deployment` is a `BotProcess` (so the
e2e helpers `ask`, `queue_job`, `result_message`… work on it) that knows how to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import Job, JobState
from bot.core.store.sqlite import SQLiteStore
from tests.bot.conftest import BotProcess, bot_env, free_port, make_world, stop_bot
from tests.fake_discord import FakeDiscord, FakeMessage

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: what a healthy run's log never contains: an unexpected error shown to a member, or a traceback
BAD_LOG_MARKERS = ("incident ", "Traceback (most recent call last)")


@dataclass
class Deployment(BotProcess):
    """One bot installation (data dir, settings, Discord world); `start()` runs it, again and again."""

    module: str = "bot"
    starts: int = 0

    async def start(self, *, timeout: float = 90.0) -> float:
        """Start the process and wait until it is connected and has synced its commands.

        Returns the seconds from spawn to ready (the queue has started by then: the bot starts
        it in `setup_hook`, before the command sync).
        """
        if self.proc is not None and self.proc.returncode is None:
            raise RuntimeError("the bot is already running")
        identifies = self.discord.identifies
        syncs = len(self.discord.calls_to("PUT", r"/applications/\d+/commands$"))
        t0 = time.monotonic()
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} ({self.module}) =====\n".encode())
            out.flush()
            # cwd is the data directory, so a developer's .env in the repo is never read
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1

        def ready() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"the bot exited with {self.proc.returncode}:\n{self.log_tail()}")
            synced = len(self.discord.calls_to("PUT", r"/applications/\d+/commands$")) > syncs
            return self.discord.identifies > identifies and self.discord.connected and synced

        await self.discord.wait_until(ready, timeout=timeout, what="the bot to connect and sync")
        return time.monotonic() - t0

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup, exactly what a power cut or the OOM killer does."""
        self.proc.kill()
        await self.proc.wait()

    async def terminate(self, *, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait; returns (exit status, seconds it took)."""
        t0 = time.monotonic()
        rc = await stop_bot(self.proc, sig=signal.SIGTERM, timeout=timeout)
        return rc, time.monotonic() - t0

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def secrets(self) -> list[str]:
        """Every secret this deployment was given: the bot token, API keys, the link secret."""
        found = [self.env["DISCORD_TOKEN"]]
        if self.env.get("API_KEYS"):
            found += list(json.loads(self.env["API_KEYS"]).values())
        if self.env.get("LINK_SECRET"):
            found.append(self.env["LINK_SECRET"])
        return [s for s in found if s]

    def leaked_secrets(self) -> list[str]:
        """Secrets that appear in the bot's log (none may: logs get pasted into bug reports)."""
        text = self.log_text()
        return [f"{s[:6]}…" for s in self.secrets() if s in text]

    def bad_log_lines(self, *, since: int = 0) -> list[str]:
        """Lines after character offset `since` that show an unhandled error."""
        return [
            line for line in self.log_text()[since:].splitlines() if any(m in line for m in BAD_LOG_MARKERS)
        ]

    @property
    def db_path(self) -> Path:
        return self.workdir / "bot.db"

    async def read_jobs(self) -> dict[str, Job]:
        """Every request in the log, read through the store's own driver (WAL: fine while it runs)."""
        return await read_jobs(self.db_path)


async def read_jobs(db_path: Path) -> dict[str, Job]:
    """The request log as the database holds it, by job id."""
    async with SQLiteStore(path=db_path) as store:
        jobs = await store.jobs_in_states(list(JobState))
    return {job.id: job for job in jobs}


def results_for(discord: FakeDiscord, short: str) -> list[FakeMessage]:
    """Every result message ever posted for job `short` (deleted ones too): duplicates show here."""
    return [
        m
        for m in discord.messages(include_deleted=True)
        if any(
            f"job {short}" in ((e.get("footer") or {}).get("text") or "")
            for v in m.versions
            for e in v.embeds
        )
    ]


@contextlib.asynccontextmanager
async def deployment(
    workdir: Path,
    model_cache: Path,
    *,
    module: str = "bot",
    env: dict[str, str] | None = None,
    heartbeat_interval_ms: int = 41_250,
    start: bool = True,
    check_log: bool = True,
) -> AsyncIterator[Deployment]:
    """A fake Discord with the e2e world and a bot deployment on it; the bot is stopped after.

    The test fails if a secret (token, API key, link secret) shows in the bot's log, and, with
    `check_log`, if the log shows an incident or a traceback.
    """
    guilds, members = make_world()
    async with FakeDiscord(guilds=guilds, heartbeat_interval_ms=heartbeat_interval_ms) as discord:
        port = free_port()
        bot = Deployment(
            discord=discord,
            proc=None,  # type: ignore[arg-type]
            workdir=workdir,
            log_path=workdir / "bot.log",
            web_url=f"http://127.0.0.1:{port}",
            env={**bot_env(discord, workdir, model_cache, port), **(env or {})},
            members=members,
            module=module,
        )
        try:
            if start:
                await bot.start()
            yield bot
            assert not bot.leaked_secrets(), f"secrets in the bot's log: {bot.leaked_secrets()}"
            if check_log:
                assert not bot.bad_log_lines(), "\n".join(bot.bad_log_lines())
        except BaseException:
            if bot.log_path.exists():
                sys.stderr.write(bot.log_tail())
            raise
        finally:
            if bot.proc is not None and bot.proc.returncode is None:
                with contextlib.suppress(TimeoutError, ProcessLookupError):
                    await stop_bot(bot.proc)


async def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll a predicate (plain or async) about something the fake Discord does not see."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "deployment"
    path.mkdir()
    return path
