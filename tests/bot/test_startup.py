"""Start-up refusals a server owner meets first: a missing or wrong token, a bad setting."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from tests.bot.conftest import bot_env, free_port
from tests.fake_discord import FakeDiscord

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


async def run_bot(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        env=env,
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, (out + err).decode()


async def test_a_missing_token_stops_start_up_saying_where_to_get_one(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
    del env["DISCORD_TOKEN"]
    code, output = await run_bot(env, tmp_path)
    assert code == 2
    assert "DISCORD_TOKEN is not set" in output and "developers/applications" in output
    assert not (tmp_path / "bot.db").exists()  # refused before opening anything


async def test_a_wrong_token_stops_start_up_with_a_clear_message(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
        env["DISCORD_TOKEN"] = "not-the-token"
        code, output = await run_bot(env, tmp_path)
    assert code == 2
    assert "DISCORD_TOKEN" in output and "401" in output
    assert "Traceback" not in output
    assert "not-the-token" not in output  # secrets never reach the log


async def test_an_unknown_store_scheme_stops_start_up(tmp_path: Path, tiny_model_cache: Path) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
        env["STORE_URL"] = "postgres://db/bot"
        code, output = await run_bot(env, tmp_path)
    assert code == 2
    assert "STORE_URL" in output and "sqlite:///" in output and "Traceback" not in output
