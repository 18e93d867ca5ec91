"""The REST API in front of the real queue, GPU worker, tiny models and SQLite store.

A job goes in through HTTP, runs on the in-process worker, and its PNG or MP4 comes back
through HTTP (with byte ranges). A step hook on the shared pipeline manager can hold a job
mid-run, so "running with progress", "queued behind it" and "cancel" are observed
deterministically rather than raced.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from bot.core.jobs import Source
from generation.media import have_ffprobe
from generation.media_probe import probe
from tests.web.conftest import auth

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gate(pipeline_manager) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(reached, release): a job holds in its second step (the first one reported) until released."""
    reached, release = threading.Event(), threading.Event()

    def hook(info: Any) -> None:
        if info.step == 2:  # hooks run before the step is reported, so step 1 is what the queue saw
            reached.set()
            release.wait(timeout=30)

    pipeline_manager.step_hooks.append(hook)
    try:
        yield reached, release
    finally:
        release.set()
        pipeline_manager.step_hooks.remove(hook)


async def wait_for_state(
    client: Any, job_id: str, states: set[str], *, timeout_s: float = 60
) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            body = await (await client.get(f"/api/v1/jobs/{job_id}", headers=auth("alice"))).json()
            if body["state"] in states:
                return body
            await asyncio.sleep(0.05)


async def test_image_job_from_request_to_png(make_client, real_queue, store) -> None:
    client = await make_client(real_queue)
    resp = await client.post(
        "/api/v1/images",
        json={"prompt": "a teapot", "seed": 1234, "steps": 2, "width": 64, "height": 48},
        headers=auth("alice"),
    )
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]

    body = await wait_for_state(client, job_id, {"complete", "failed", "cancelled"})
    assert body["state"] == "complete", body
    assert body["seed"] == 1234 and body["params"]["width"] == 64 and body["params"]["height"] == 48
    assert body["gpu_seconds"] > 0 and body["position"] is None and body["error"] is None
    assert body["result"]["media_type"] == "image/png" and body["result"]["nsfw_detected"] is False

    resp = await client.get(body["result"]["url"], headers=auth("alice"))
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    data = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(data) == body["result"]["size_bytes"]
    assert Image.open(io.BytesIO(data)).size == (64, 48)

    logged = await store.get_job(job_id)
    assert logged.source is Source.API and logged.user_id == "api:alice" and logged.user_name == "alice"
    assert (await store.get_user("api:alice")).jobs_total == 1


async def test_video_job_result_plays_back_in_ranges(make_client, real_queue) -> None:
    client = await make_client(real_queue)
    resp = await client.post(
        "/api/v1/videos",
        json={"prompt": "a paper boat", "steps": 2, "frames": 8, "fps": 8, "width": 64, "height": 64},
        headers=auth("alice"),
    )
    assert resp.status == 202
    job_id = (await resp.json())["id"]
    body = await wait_for_state(client, job_id, {"complete", "failed", "cancelled"})
    assert body["state"] == "complete", body

    url = body["result"]["url"]
    whole = await client.get(url, headers=auth("alice"))
    assert whole.status == 200 and whole.headers["Content-Type"] == "video/mp4"
    data = await whole.read()
    assert int(whole.headers["Content-Length"]) == len(data)
    resp = await client.get(url, headers={**auth("alice"), "Range": "bytes=32-1055"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 32-{min(1055, len(data) - 1)}/{len(data)}"
    assert await resp.read() == data[32:1056]
    if have_ffprobe():
        info = probe(data)
        assert (info["codec"], info["pix_fmt"], info["width"], info["frames"]) == ("h264", "yuv420p", 64, 8)


async def test_running_queued_and_cancelled_as_seen_through_the_api(make_client, real_queue, gate) -> None:
    reached, release = gate
    client = await make_client(real_queue)
    video = {"prompt": "slow boat", "steps": 3, "frames": 4, "fps": 8, "width": 32, "height": 32}
    first = (await (await client.post("/api/v1/videos", json=video, headers=auth("alice"))).json())["id"]
    assert await asyncio.to_thread(reached.wait, 30)
    second = await client.post("/api/v1/images", json={"prompt": "next", "steps": 2}, headers=auth("alice"))
    assert second.status == 202
    second_body = await second.json()
    assert second_body["position"] == 1 and second_body["eta_s"] >= 0
    second_id = second_body["id"]

    running = await wait_for_state(client, first, {"in_progress"})
    assert running["position"] == 0
    async with asyncio.timeout(10):  # progress events reach the queue from the GPU thread
        while running["progress"] is None or running["progress"]["step"] < 1:
            await asyncio.sleep(0.05)
            running = await (await client.get(f"/api/v1/jobs/{first}", headers=auth("alice"))).json()
    assert running["progress"] == {"step": 1, "total": 3}

    queue_view = await (await client.get("/api/v1/queue", headers=auth("alice"))).json()
    assert queue_view["length"] == 1 and queue_view["running"]["id"] == first
    assert queue_view["running"]["progress"] == {"step": 1, "total": 3}
    assert [j["id"] for j in queue_view["jobs"]] == [second_id]
    other_view = await (await client.get("/api/v1/queue", headers=auth("bob"))).json()
    assert other_view["running"]["mine"] is False and other_view["running"]["id"] is None
    assert other_view["jobs"] == []
    page = await (await client.get("/")).text()
    assert "step 1/3" in page

    # bob cannot cancel alice's job; alice cancels the queued one, then the running one
    resp = await client.delete(f"/api/v1/jobs/{second_id}", headers=auth("bob"))
    assert resp.status == 404
    resp = await client.delete(f"/api/v1/jobs/{second_id}", headers=auth("alice"))
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"
    resp = await client.delete(f"/api/v1/jobs/{first}", headers=auth("alice"))
    assert resp.status == 200 and (await resp.json())["cancel_requested"] is True
    release.set()
    done = await wait_for_state(client, first, {"complete", "failed", "cancelled"})
    assert done["state"] == "cancelled" and done["result"] is None
    resp = await client.get(f"/api/v1/jobs/{first}/result", headers=auth("alice"))
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "not_ready"


async def test_queue_limits_answer_429_and_pause_503(make_client, real_queue, gate, store) -> None:
    reached, _release = gate
    client = await make_client(real_queue)
    body = {"prompt": "one of many", "steps": 2}
    statuses = [
        (await client.post("/api/v1/images", json=body, headers=auth("bob"))).status
        for _ in range(real_queue.settings.max_queued_per_user + 2)
    ]
    # one runs (held by the gate), MAX_QUEUED_PER_USER wait, the next is refused
    assert await asyncio.to_thread(reached.wait, 30)
    assert statuses.count(202) >= real_queue.settings.max_queued_per_user
    resp = await client.post("/api/v1/images", json=body, headers=auth("bob"))
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "too_many_queued"

    await real_queue.pause(by="admin:1")
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "queue_paused"
    await real_queue.resume(by="admin:1")
