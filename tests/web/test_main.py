"""`python -m bot.web` as a user starts it: REST only, settings from the environment.

The subprocess runs in a temp directory (so no developer `.env` is read), on the tiny models
built by the session fixture, with SQLite; it must come up ready, run a job submitted over
HTTP, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.web.conftest import API_KEYS, auth

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_rest_only_server_runs_a_job_and_stops_on_sigterm(
    tmp_path, tiny_model_cache, pipeline_manager
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "API_", "STORE_"))},
        "PYTHONPATH": str(REPO),
        "STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "RESULTS_DIR": str(tmp_path / "results"),
        "MODEL_CACHE_DIR": str(tiny_model_cache),
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
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.web", cwd=tmp_path, env=env, stdout=log_file, stderr=log_file
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(90):
                while True:
                    if proc.returncode is not None:
                        pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                    try:
                        async with http.get(f"{base}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)

            async with http.post(
                f"{base}/api/v1/images", json={"prompt": "from a subprocess", "steps": 2}, headers=auth("bob")
            ) as resp:
                assert resp.status == 202, await resp.text()
                job_id = (await resp.json())["id"]
            async with asyncio.timeout(60):
                while True:
                    async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=auth("bob")) as resp:
                        body = await resp.json()
                    if body["state"] not in ("queued", "in_progress"):
                        break
                    await asyncio.sleep(0.1)
            assert body["state"] == "complete", body
            async with http.get(f"{base}/api/v1/jobs/{job_id}/result", headers=auth("bob")) as resp:
                assert resp.status == 200 and (await resp.read())[:8] == b"\x89PNG\r\n\x1a\n"

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == 0, log_path.read_text()[-3000:]
        assert "REST-only mode" in log_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_demo_settings_ignore_dotenv_and_write_a_fresh_key(tmp_path, monkeypatch) -> None:
    from bot.web.__main__ import DEMO_KEY_FILE, demo_settings

    monkeypatch.chdir(tmp_path)
    for name in ("STORE_URL", "API_KEYS", "IMAGE_MODEL", "QUEUE_URL", "WEB_PORT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("IMAGE_MODEL=sd15\nSTORE_URL=mongodb://db/x\nQUEUE_URL=redis://r:6379\n")
    monkeypatch.setenv("WEB_PORT", "8123")  # the environment still applies
    first, second = demo_settings(), demo_settings()
    assert (first.image_model, first.video_model, first.device) == ("tiny-image", "tiny-video", "cpu")
    assert first.store_url == "sqlite:///data/demo/bot.db" and first.queue_url is None
    assert first.web_port == 8123 and first.public_url == "http://127.0.0.1:8123"
    key = second.api_keys["demo"].get_secret_value()
    assert key != first.api_keys["demo"].get_secret_value() and len(key) >= 24
    assert (tmp_path / DEMO_KEY_FILE).read_text().strip() == key
    assert oct((tmp_path / DEMO_KEY_FILE).stat().st_mode & 0o777) == "0o600"
