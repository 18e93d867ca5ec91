"""POST /api/v1/upscales: an uploaded picture or one of the key's own images, upscaled by the tiny x4 twin."""

from __future__ import annotations

import asyncio
import base64
import io
import logging

import pytest
from PIL import Image

from bot.core.jobs import JobState
from generation.files import part_path
from tests.web.conftest import auth, make_job, write_test_mp4, write_test_png
from tests.web.test_api_animate import wait_final
from tests.web.test_api_inputs import kept_inputs, picture_b64

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(120)

URL = "/api/v1/upscales"


async def result_picture(client, job: dict) -> Image.Image:
    job = await wait_final(client, job)
    assert job["state"] == "complete", job
    assert job["result"]["media_type"] == "image/png"
    resp = await client.get(f"/api/v1/jobs/{job['id']}/result", headers=auth("alice"))
    assert resp.status == 200 and resp.content_type == "image/png"
    return Image.open(io.BytesIO(await resp.read()))


async def test_an_uploaded_picture_comes_back_four_times_wider_and_taller(
    make_client, real_queue, web_settings
) -> None:
    client = await make_client(real_queue)
    resp = await client.post(URL, json={"image": picture_b64((40, 24))}, headers=auth("alice"))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"].startswith("/api/v1/jobs/")
    job = await resp.json()
    assert (job["kind"], job["model"], job["state"]) == ("upscale", "tiny-upscale", "queued")
    assert job["prompt"] == "a sharp, detailed picture"  # the upscaler's neutral prompt
    assert [str(p) for p in await asyncio.to_thread(kept_inputs, web_settings.results_dir)] == [
        job["params"]["image"]
    ]
    picture = await result_picture(client, job)
    assert picture.format == "PNG" and picture.size == (160, 96)


async def test_image_n_of_an_own_finished_grid_is_upscaled_with_its_prompt(
    make_client, real_queue, store, web_settings, tmp_path
) -> None:
    client = await make_client(real_queue)
    grid = make_job(
        prompt="a lighthouse at dusk", result_path=write_test_png(tmp_path / "grid.png", width=80)
    )
    grid.params["count"] = 2
    await store.insert_job(grid)
    write_test_png(part_path(tmp_path / "grid.png", grid.id, 2), width=32, height=16)  # kept beside the grid
    body = {"job_id": grid.id, "n": 2}
    resp = await client.post(URL, json=body, headers=auth("alice"))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["parent_id"] == grid.id and job["prompt"] == "a lighthouse at dusk"
    assert (await result_picture(client, job)).size == (128, 64)

    resp = await client.post(URL, json={"job_id": grid.id, "n": 3}, headers=auth("alice"))
    assert resp.status == 400 and "n must be from 1 to 2" in (await resp.json())["error"]["message"]


async def test_another_keys_job_is_not_found_and_a_video_or_unfinished_job_is_refused(
    make_client, real_queue, store, web_settings, tmp_path
) -> None:
    client = await make_client(real_queue)
    bobs = make_job(user_id="api:bob", result_path=write_test_png(tmp_path / "bob.png"))
    video = make_job(kind="video", result_path=write_test_mp4(tmp_path / "clip.mp4"))
    waiting = make_job(state=JobState.QUEUED)
    for job in (bobs, video, waiting):
        await store.insert_job(job)
    answers = {}
    for name, job_id in (
        ("bob's", bobs.id),
        ("video", video.id),
        ("queued", waiting.id),
        ("unknown", "nope"),
    ):
        resp = await client.post(URL, json={"job_id": job_id}, headers=auth("alice"))
        answers[name] = (resp.status, (await resp.json())["error"])
    assert answers["bob's"] == (
        404,
        {"code": "job_not_found", "message": f"No job {bobs.id!r} for this API key."},
    )
    assert answers["unknown"][0] == 404
    assert answers["video"][0] == 400 and "only pictures can be upscaled" in answers["video"][1]["message"]
    assert answers["queued"][0] == 409 and answers["queued"][1]["code"] == "not_ready"
    assert await asyncio.to_thread(kept_inputs, web_settings.results_dir) == []
    assert real_queue.snapshot().queued == [] and await store.get_job(bobs.id) is not None


def png_b64(size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (20, 90, 200)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"image": base64.b64encode(b"just text").decode()}, 400, "not a readable"),
        ({"image": "not base64!"}, 400, "base64"),
        ({"image": png_b64((5000, 5000))}, 400, "pixels"),  # over INPUT_IMAGE_MAX_PIXELS
        ({"image": png_b64((600, 600))}, 400, "width"),  # within the input caps, over the upscaler's
        ({}, 400, "Send the picture to upscale"),
        ({"image": png_b64((32, 32)), "job_id": "x"}, 400, "not both"),
        ({"image": png_b64((32, 32)), "steps": 2}, 400, "unknown parameter"),
        ({"image": png_b64((32, 32)), "prompt": " "}, 400, "prompt"),
    ],
    ids=[
        "text-file",
        "garbage",
        "too-many-pixels",
        "too-large-to-upscale",
        "nothing",
        "both",
        "steps",
        "blank",
    ],
)
async def test_bad_input_is_refused_politely_and_nothing_is_queued_or_kept(
    make_client, real_queue, store, web_settings, body, status, words
) -> None:
    client = await make_client(real_queue)
    resp = await client.post(URL, json=body, headers=auth("alice"))
    assert resp.status == status, await resp.text()
    assert words in (await resp.json())["error"]["message"]
    assert await asyncio.to_thread(kept_inputs, web_settings.results_dir) == []
    assert await store.user_history("api:alice") == []
    assert real_queue.snapshot().queued == []
