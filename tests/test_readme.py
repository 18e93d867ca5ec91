"""The README's "try it" path, run exactly as written: one command, then the lines that fetch a picture.

The two shell blocks under "Try it without Discord or a GPU" are read from README.md and run
unchanged by bash, in an empty folder holding only a `.venv` link to this interpreter's
virtualenv (what `bash .ci/setup` leaves in a fresh clone). The only thing the test supplies is
the environment the README's lines honour: WEB_PORT (a free port, so parallel runs do not
collide), and the model cache the session already built the tiny twins into (they are built the
same way on first run).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.bot.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TRY_IT = "## Try it without Discord or a GPU"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S)


def test_the_quickstart_is_two_commands_and_try_it_follows_it() -> None:
    quickstart = section("## Quickstart")
    [block] = shell_blocks(quickstart)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2 and "python -m bot" in commands[0] and "pytest" in commands[1]
    headings = re.findall(r"^## .*$", README.read_text(encoding="utf-8"), flags=re.M)
    assert headings[headings.index("## Quickstart") + 1] == TRY_IT


async def test_the_readme_try_it_lines_get_a_picture_back(tmp_path: Path, tiny_model_cache: Path) -> None:
    server_block, client_block = shell_blocks(section(TRY_IT))[:2]
    [server_line] = [line for line in server_block.splitlines() if line.strip()]
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "API_", "STORE_", "WEB_"))},
        "PYTHONPATH": str(REPO),
        "WEB_PORT": str(port),
        "MODEL_CACHE_DIR": str(tiny_model_cache),
    }
    server = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        server_line,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        assert server.stdout is not None
        async with asyncio.timeout(120):
            while "API key for this run" not in (seen[-1] if seen else ""):
                line = (await server.stdout.readline()).decode()
                if not line:
                    pytest.fail("the demo server exited:\n" + "".join(seen))
                seen.append(line)
        key = seen[-1].split("API key for this run:")[1].split()[0]
        assert (tmp_path / "data/demo/api-key").read_text().strip() == key

        client = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            client_block,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(client.communicate(), timeout=90)
        assert client.returncode == 0, out.decode()
        picture = tmp_path / "picture.png"
        assert picture.is_file(), out.decode() + "".join(seen)
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), timeout=30)
            except TimeoutError:
                os.killpg(server.pid, signal.SIGKILL)
                await server.wait()
    assert server.returncode == 0
