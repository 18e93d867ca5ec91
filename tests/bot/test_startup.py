"""Start-up refusals a server owner meets first: each mistake is one line naming the setting.

Every case starts the real entry point as a subprocess, in a temporary directory (so no
developer `.env` is read), and asserts what the owner sees: exit status 2, exactly one line
on the console, the setting's name, no traceback, no secret repeated, and nothing slow done
first (no model loaded). A database or Discord that does not answer is not a mistake: the
process says where it is looking, keeps retrying, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.bot.conftest import bot_env, free_port
from tests.fake_discord import FakeDiscord
from tests.processes import child

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

SECRET = "s3cret-that-must-not-show"


async def run_cli(module: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    async with child(sys.executable, "-m", module, env=env, cwd=cwd) as proc:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode()


def assert_one_line_naming(output: str, setting: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and setting in lines[0], output
    assert "Traceback" not in output and SECRET not in output
    return lines[0]


@pytest.fixture
def env(tmp_path: Path, tiny_model_cache: Path) -> dict[str, str]:
    """`python -m bot.web` settings that work, for one mistake at a time to be put in."""
    base = bot_env(FakeDiscordStub(), tmp_path, tiny_model_cache, free_port())
    base["API_KEYS"] = json.dumps({"ci": SECRET})
    return base


class FakeDiscordStub:
    """`bot_env` wants a fake Discord only for its address; REST-only runs never call it."""

    def env(self) -> dict[str, str]:
        return {}


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


MISTAKES = {
    "port out of range": ({"WEB_PORT": "99999"}, "WEB_PORT"),
    "port not a number": ({"WEB_PORT": "eighty"}, "WEB_PORT"),
    "API_KEYS not JSON": ({"API_KEYS": SECRET}, "API_KEYS"),
    "API_KEYS not an object": ({"API_KEYS": f'["{SECRET}"]'}, "API_KEYS"),
    "PUBLIC_URL without scheme": ({"PUBLIC_URL": "example.org:8080"}, "PUBLIC_URL"),
    "QUEUE_URL not redis": ({"QUEUE_URL": "http://127.0.0.1:6379"}, "QUEUE_URL"),
    "unknown model": ({"IMAGE_MODEL": "sd99"}, "IMAGE_MODEL"),
    "unknown store scheme": ({"STORE_URL": f"postgres://bot:{SECRET}@db/bot"}, "STORE_URL"),
    "LOG_LEVEL unknown": ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES), ids=list(MISTAKES))
async def test_a_wrong_setting_is_one_line_naming_it(
    mistake: str, env: dict[str, str], tmp_path: Path
) -> None:
    changes, setting = MISTAKES[mistake]
    code, output = await run_cli("bot.web", {**env, **changes}, tmp_path)
    assert code == 2, output
    assert_one_line_naming(output, setting)
    assert not (tmp_path / "bot.db").exists()  # refused before opening anything


async def test_api_keys_error_shows_the_expected_format(env: dict[str, str], tmp_path: Path) -> None:
    code, output = await run_cli("bot.web", {**env, "API_KEYS": SECRET}, tmp_path)
    assert code == 2
    assert 'API_KEYS={"name": "secret"}' in assert_one_line_naming(output, "API_KEYS")


async def test_a_port_in_use_is_reported_before_the_store_opens_or_a_model_loads(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await run_cli("bot.web", {**env, "WEB_PORT": str(port)}, tmp_path)
    assert code == 2
    line = assert_one_line_naming(output, "WEB_PORT")
    assert f"port {port}" in line and "already in use" in line
    assert not (tmp_path / "bot.db").exists()


async def test_an_unwritable_results_dir_stops_start_up(env: dict[str, str], tmp_path: Path) -> None:
    # a path below a file cannot be created even by root, unlike a chmod-ed folder
    code, output = await run_cli(
        "bot.web", {**env, "RESULTS_DIR": str(a_file(tmp_path) / "results")}, tmp_path
    )
    assert code == 2
    assert "not writable" in assert_one_line_naming(output, "RESULTS_DIR")


async def test_a_sqlite_file_in_an_unwritable_place_blames_store_url(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = f"sqlite:///{a_file(tmp_path) / 'bot.db'}"
    code, output = await run_cli("bot.web", {**env, "STORE_URL": url}, tmp_path)
    assert code == 2
    line = assert_one_line_naming(output, "STORE_URL")
    assert "WEB_PORT" not in line and "serve" not in line


async def test_log_level_debug_adds_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    code, output = await run_cli("bot.web", {**env, "WEB_PORT": "99999", "LOG_LEVEL": "DEBUG"}, tmp_path)
    assert code == 2
    assert "Traceback" in output and output.rstrip().splitlines()[-1].startswith("error: WEB_PORT")


async def until_line(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"exited before {needle!r}:\n" + "".join(seen))
        line = raw.decode()
        seen.append(line)
        if needle in line:
            return line


async def retries_until_stopped(module: str, env: dict[str, str], cwd: Path, needle: str) -> str:
    """Start `module`, wait for two retry lines containing `needle`, SIGTERM it; the first line."""
    seen: list[str] = []
    async with child(sys.executable, "-m", module, env=env, cwd=cwd) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            first = await until_line(proc.stdout, needle, seen)
            await until_line(proc.stdout, needle, seen)  # it kept trying
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        seen.append(rest.decode())
        assert proc.returncode == 0, "".join(seen)
    output = "".join(seen)
    assert "Traceback" not in output and SECRET not in output
    assert "retrying in" in first
    return first


async def test_an_unreachable_mongodb_is_named_with_its_host_and_retried(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    url = f"mongodb://bot:{SECRET}@127.0.0.1:{port}/bot?serverSelectionTimeoutMS=200"
    line = await retries_until_stopped("bot.web", {**env, "STORE_URL": url}, tmp_path, "cannot reach MongoDB")
    assert f"127.0.0.1:{port}" in line and "STORE_URL" in line


async def test_an_unreachable_discord_is_named_with_its_host_and_retried(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
    port = free_port()
    env.update({"DISCORD_API_BASE": f"http://127.0.0.1:{port}", "DISCORD_TOKEN": SECRET})
    env.pop("DISCORD_GATEWAY_URL", None)
    line = await retries_until_stopped("bot", env, tmp_path, "cannot reach Discord")
    assert f"127.0.0.1:{port}" in line and "DISCORD_API_BASE" in line


async def test_a_missing_token_stops_start_up_pointing_at_the_demo(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
    del env["DISCORD_TOKEN"]
    code, output = await run_cli("bot", env, tmp_path)
    assert code == 2
    line = assert_one_line_naming(output, "DISCORD_TOKEN")
    assert "developers/applications" in line and "python -m bot.web --demo" in line
    assert not (tmp_path / "bot.db").exists()  # refused before opening anything


async def test_a_wrong_token_stops_start_up_with_a_clear_message(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
        env["DISCORD_TOKEN"] = "not-the-token"
        code, output = await run_cli("bot", env, tmp_path)
    assert code == 2
    assert "DISCORD_TOKEN" in output and "401" in output
    assert "Traceback" not in output
    assert "not-the-token" not in output  # secrets never reach the log


@pytest.mark.timeout(240)
async def test_a_public_url_on_another_port_is_warned_about(env: dict[str, str], tmp_path: Path) -> None:
    port = int(env["WEB_PORT"])
    env = {**env, "PUBLIC_URL": f"http://127.0.0.1:{port + 1}"}
    seen: list[str] = []
    async with child(sys.executable, "-m", "bot.web", env=env, cwd=tmp_path) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = await until_line(proc.stdout, "PUBLIC_URL", seen)
        proc.send_signal(signal.SIGTERM)  # honoured at once, the models loading or not
        await asyncio.wait_for(proc.communicate(), timeout=30)
    assert "WARNING" in line and f"port {port + 1}" in line and f"listens on {port}" in line
