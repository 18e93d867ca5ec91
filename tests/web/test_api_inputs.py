"""The REST API takes a picture to start from (base64 in the JSON body) and several images per job."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from pathlib import Path

import pytest
from PIL import Image

from tests.web.conftest import auth

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(120)


def picture_b64(size: tuple[int, int] = (40, 30)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 90, 200)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def kept_inputs(results_dir: str) -> list[Path]:
    folder = Path(results_dir) / "inputs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


async def test_a_base64_picture_is_kept_and_the_job_runs_image_to_image(
    make_client, real_queue, web_settings
) -> None:
    client = await make_client(real_queue)
    body = {"prompt": "at night", "image": picture_b64(), "strength": 0.5, "steps": 2, "count": 2}
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["params"]["count"] == 2 and job["params"]["strength"] == 0.5
    kept = await asyncio.to_thread(kept_inputs, web_settings.results_dir)
    assert [str(p) for p in kept] == [job["params"]["image"]]
    async with asyncio.timeout(60):
        while job["state"] in ("queued", "in_progress"):
            await asyncio.sleep(0.05)
            job = await (await client.get(f"/api/v1/jobs/{job['id']}", headers=auth("alice"))).json()
    assert job["state"] == "complete", job
    result = await client.get(f"/api/v1/jobs/{job['id']}/result", headers=auth("alice"))
    grid = Image.open(io.BytesIO(await result.read()))
    assert grid.size[0] > grid.size[1]  # two images side by side


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"just text").decode(), "not a readable"),
        (picture_b64((5000, 5000)), "pixels"),
    ],
    ids=["garbage", "text-file", "too-many-pixels"],
)
async def test_a_bad_picture_is_refused_and_nothing_is_kept(
    make_client, real_queue, web_settings, image: str, words: str
) -> None:
    client = await make_client(real_queue)
    body = {"prompt": "from this", "image": image}
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    assert resp.status == 400, await resp.text()
    assert words in (await resp.json())["error"]["message"]
    assert await asyncio.to_thread(kept_inputs, web_settings.results_dir) == []


async def test_a_picture_refused_for_another_reason_is_not_kept(
    make_client, real_queue, web_settings
) -> None:
    client = await make_client(real_queue)
    body = {"prompt": "from this", "image": picture_b64(), "strength": 0.6, "steps": 100_000}
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    assert resp.status == 400 and "steps" in (await resp.json())["error"]["message"]
    assert await asyncio.to_thread(kept_inputs, web_settings.results_dir) == []
