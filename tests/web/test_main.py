"""`python -m bot.web` as a user starts it (tests.web.rest_process): it must come up ready, run a job
submitted over HTTP, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.web.conftest import auth
from tests.web.rest_process import rest_server

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]


async def test_rest_only_server_runs_a_job_and_stops_on_sigterm(
    tmp_path, tiny_model_cache, pipeline_manager
) -> None:
    async with rest_server(tmp_path, tiny_model_cache) as server, aiohttp.ClientSession() as http:
        base = server.base
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
        await server.stop()
    assert "REST-only mode" in server.log_path.read_text()


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
