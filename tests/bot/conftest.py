"""`python -m bot` as a member's server runs it: a subprocess against the fake Discord.

One bot process serves a whole test module (starting one costs a few seconds of imports),
with the tiny twins, SQLite in a temporary directory, and its web server on a free
loopback port. Tests use distinct members so they do not see each other's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fake_discord import (
    ChannelType,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Perm,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SMALL_UPLOAD_LIMIT = 24 * 1024
API_SECRET = "e2e-" + "s3cret" * 4


class SmallUploadGuild(FakeGuild):
    """A guild whose upload limit is tiny, so even a 64x64 clip must be re-encoded or linked."""

    @property
    def filesize_limit(self) -> int:
        return SMALL_UPLOAD_LIMIT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    """A running `python -m bot` and the world around it."""

    discord: FakeDiscord
    proc: asyncio.subprocess.Process
    workdir: Path
    log_path: Path
    web_url: str
    env: dict[str, str]
    members: dict[str, FakeMember] = field(default_factory=dict)

    @property
    def art(self) -> FakeGuild:
        return self.discord.guilds[0]

    @property
    def small(self) -> FakeGuild:
        return self.discord.guilds[1]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def bot_env(discord: FakeDiscord, workdir: Path, model_cache: Path, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "STORE_", "MONGODB_"))}
    env.update(discord.env())
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "IMAGE_MODEL": "tiny-image",
            "VIDEO_MODEL": "tiny-video",
            "I2V_MODEL": "tiny-wan-i2v",
            "UPSCALE_MODEL": "tiny-upscale",
            "MODEL_CACHE_DIR": str(model_cache),
            "HF_HUB_OFFLINE": "1",
            "DEVICE": "cpu",
            "DTYPE": "fp32",
            "SAFETY_CHECKER": "false",
            "STORE_URL": f"sqlite:///{workdir / 'bot.db'}",
            "RESULTS_DIR": str(workdir / "results"),
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(web_port),
            "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
            "MAX_QUEUE": "200",
            "MAX_QUEUED_PER_USER": "60",
            "DAILY_GPU_SECONDS_PER_USER": "100000",
            "PROGRESS_EDIT_INTERVAL_S": "2",
            "OMP_NUM_THREADS": "1",
            "API_KEYS": json.dumps({"postman": API_SECRET}),
        }
    )
    return env


async def start_bot(discord: FakeDiscord, env: dict[str, str], workdir: Path) -> asyncio.subprocess.Process:
    log_path = workdir / "bot.log"
    with log_path.open("ab") as out:
        # cwd is the temp dir, so a developer's .env in the repo is never read
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=env, cwd=workdir, stdout=out, stderr=asyncio.subprocess.STDOUT
        )


async def stop_bot(
    proc: asyncio.subprocess.Process, *, sig: int = signal.SIGTERM, timeout: float = 30.0
) -> int:
    if proc.returncode is None:
        proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


def make_world() -> tuple[list[FakeGuild], dict[str, FakeMember]]:
    mod_role = FakeRole(name="Moderators", permissions=int(Perm.MANAGE_GUILD))
    members = {
        name: FakeMember(user=FakeUser(username=name))
        for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "stranger")
    }
    members["admin"] = FakeMember(user=FakeUser(username="admin"), roles=[mod_role])
    art = FakeGuild(
        name="Art",
        channels=[
            FakeChannel(name="general"),
            FakeChannel(name="studio"),
            FakeChannel(name="after-dark", nsfw=True),
            # tests set the bot's own permissions in these (FakeDiscord.set_bot_permissions)
            FakeChannel(name="no-history"),
            FakeChannel(name="no-files"),
            FakeChannel(name="read-only"),
        ],
        roles=[mod_role],
        members=list(members.values()),
    )
    small = SmallUploadGuild(name="Small", members=[FakeMember(user=members["alice"].user)])
    assert all(c.type == ChannelType.TEXT for c in art.channels)
    return [art, small], members


@contextlib.asynccontextmanager
async def bot_process(
    workdir: Path, model_cache: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[BotProcess]:
    """A fake Discord with the e2e world and `python -m bot` connected to it (`env` overrides settings)."""
    guilds, members = make_world()
    async with FakeDiscord(guilds=guilds, heartbeat_interval_ms=1000) as discord:
        port = free_port()
        full_env = {**bot_env(discord, workdir, model_cache, port), **(env or {})}
        proc = await start_bot(discord, full_env, workdir)
        bot = BotProcess(
            discord=discord,
            proc=proc,
            workdir=workdir,
            log_path=workdir / "bot.log",
            web_url=f"http://127.0.0.1:{port}",
            env=full_env,
            members=members,
        )
        try:
            await discord.wait_until_connected(timeout=90)
            await discord.wait_for_commands(timeout=30)
            yield bot
        except BaseException:
            sys.stderr.write(bot.log_text()[-6000:])
            raise
        finally:
            # the restart test swaps in a process of its own: stop whichever runs now, and the first
            for running in {bot.proc, proc}:
                with contextlib.suppress(TimeoutError, ProcessLookupError):
                    await stop_bot(running)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running_bot(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path
) -> AsyncIterator[BotProcess]:
    async with bot_process(tmp_path_factory.mktemp("bot"), tiny_model_cache) as bot:
        yield bot
