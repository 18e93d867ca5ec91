"""The REST API animates a picture: a base64 `image` on POST /api/v1/videos runs image-to-video."""

from __future__ import annotations

import asyncio
import logging

import pytest

from generation.media import have_ffprobe
from generation.media_probe import probe
from tests.web.conftest import auth
from tests.web.test_api_inputs import kept_inputs, picture_b64

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(180)


async def wait_final(client, job: dict) -> dict:
    async with asyncio.timeout(120):
        while job["state"] in ("queued", "in_progress"):
            await asyncio.sleep(0.05)
            job = await (await client.get(f"/api/v1/jobs/{job['id']}", headers=auth("alice"))).json()
    return job


async def test_a_video_with_a_picture_runs_on_i2v_model_and_delivers_an_h264_mp4(
    make_client, real_queue, web_settings
) -> None:
    client = await make_client(real_queue)
    body = {"prompt": "the tide comes in", "image": picture_b64((64, 64)), "steps": 2}
    resp = await client.post("/api/v1/videos", json=body, headers=auth("alice"))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["model"] == "tiny-wan-i2v"  # I2V_MODEL when none is named
    assert [str(p) for p in await asyncio.to_thread(kept_inputs, web_settings.results_dir)] == [
        job["params"]["image"]
    ]
    job = await wait_final(client, job)
    assert job["state"] == "complete", job
    result = await client.get(f"/api/v1/jobs/{job['id']}/result", headers=auth("alice"))
    assert result.status == 200 and result.content_type == "video/mp4"
    data = await result.read()
    assert data[4:8] == b"ftyp"
    if have_ffprobe():
        assert (await asyncio.to_thread(probe, data))["codec"] == "h264"


async def test_a_text_model_hands_a_picture_to_its_partner_and_an_i2v_model_needs_one(
    make_client, real_queue, web_settings
) -> None:
    client = await make_client(real_queue)
    body = {"prompt": "rain", "model": "tiny-wan", "image": picture_b64((64, 64)), "steps": 2}
    resp = await client.post("/api/v1/videos", json=body, headers=auth("alice"))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["model"] == "tiny-wan-i2v"
    assert "tiny-wan animates a picture through tiny-wan-i2v" in job["notes"]
    await wait_final(client, job)

    before = await asyncio.to_thread(kept_inputs, web_settings.results_dir)
    resp = await client.post(
        "/api/v1/videos", json={"prompt": "rain", "model": "tiny-wan-i2v"}, headers=auth("alice")
    )
    assert resp.status == 400 and "attach an image" in (await resp.json())["error"]["message"]
    resp = await client.post(
        "/api/v1/videos", json={"prompt": "rain", "image": "bm90IGEgcGljdHVyZQ=="}, headers=auth("alice")
    )
    assert resp.status == 400 and "not a readable" in (await resp.json())["error"]["message"]
    assert await asyncio.to_thread(kept_inputs, web_settings.results_dir) == before
