"""`python -m bot.web` in a subprocess, started as a user starts it: REST only, settings from the
environment, in the test's temporary directory (so no developer `.env` is read), on the tiny twins
the session built, with SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.processes import child, free_port
from tests.web.conftest import API_KEYS

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RestServer:
    proc: asyncio.subprocess.Process
    base: str
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it: the server must exit cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self.proc.wait()
        assert code == 0, self.log_tail()

    async def until_ready(self) -> None:
        async with aiohttp.ClientSession() as http, asyncio.timeout(120):
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def rest_server(tmp_path: Path, model_cache: Path, **extra_env: str) -> AsyncIterator[RestServer]:
    """The server once its /readyz answers (models loaded); its console goes to `server.log`."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "API_", "STORE_"))},
        "PYTHONPATH": str(REPO),
        "STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "RESULTS_DIR": str(tmp_path / "results"),
        "MODEL_CACHE_DIR": str(model_cache),
        "IMAGE_MODEL": "tiny-image",
        "VIDEO_MODEL": "tiny-video",
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "HF_OFFLINE": "true",
        "SAFETY_CHECKER": "false",
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "API_KEYS": json.dumps(API_KEYS),
        **extra_env,
    }
    log_path = tmp_path / "server.log"
    async with child(sys.executable, "-m", "bot.web", env=env, cwd=tmp_path, log_path=log_path) as proc:
        server = RestServer(proc=proc, base=f"http://127.0.0.1:{port}", log_path=log_path)
        await server.until_ready()
        yield server
