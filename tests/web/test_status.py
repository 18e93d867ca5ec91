"""Readiness that covers keeping results, and a status page that tells the owner what happened.

/readyz must fail when a result could not be kept (the results folder is not writable, or its
disk is nearly full) rather than let every job run on the GPU and fail at its end. The status
page shows readiness, the running job with the time it still needs, and failed and cancelled
jobs with their reason; in a real browser it updates itself in place while jobs run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.web import create_web_app, serve
from generation.models import build_registry
from tests.web.cdp import chromium_page, find_chromium
from tests.web.conftest import auth, make_web_settings
from tests.web.test_api_real import gate, wait_for_state  # noqa: F401  (gate is a fixture)

pytestmark = pytest.mark.timeout(120)

CHROMIUM = find_chromium()


def break_folder(folder: Path) -> None:
    """Make `folder` unusable in a way root cannot bypass: a file where the folder should be."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("not a folder")


async def test_readyz_reports_an_unwritable_results_folder(make_client, stub_queue, web_settings) -> None:
    client = await make_client(stub_queue)
    assert (await client.get("/readyz")).status == 200
    results = Path(web_settings.results_dir)
    break_folder(results)
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503, body
    [reason] = body["reasons"]
    assert "RESULTS_DIR" in reason and "not writable" in reason
    await asyncio.to_thread(results.unlink)
    assert (await client.get("/readyz")).status == 200  # recovers once fixed, without a restart


async def test_readyz_reports_a_nearly_full_disk(make_client, stub_queue, tmp_path, tiny_model_cache) -> None:
    huge = 1 << 40  # MB: more than any test machine's free space
    client = await make_client(
        stub_queue, settings=make_web_settings(tmp_path, tiny_model_cache, min_free_disk_mb=huge)
    )
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert any("disk nearly full" in r and "MIN_FREE_DISK_MB" in r for r in (await resp.json())["reasons"])


async def fail_one_cancel_one(client: Any, web_settings: Any, events: Any) -> tuple[dict, dict]:
    """Through the app: a video fails when its result cannot be kept, an image waiting behind it is
    cancelled. `events` is the `gate` fixture. Returns the jobs as the API shows them (failed, cancelled)."""
    reached, release = events
    video = {"prompt": "held boat", "steps": 3, "frames": 4, "fps": 8, "width": 32, "height": 32}
    held = (await (await client.post("/api/v1/videos", json=video, headers=auth("alice"))).json())["id"]
    assert await asyncio.to_thread(reached.wait, 30)
    waiting = await (
        await client.post("/api/v1/images", json={"prompt": "next", "steps": 2}, headers=auth("alice"))
    ).json()

    running = await (await client.get(f"/api/v1/jobs/{held}", headers=auth("alice"))).json()
    assert running["position"] == 0 and running["eta_s"] == 0.0
    assert isinstance(running["finish_in_s"], float)  # the time to finish, not 0 "until start"
    queued = await (await client.get(f"/api/v1/jobs/{waiting['id']}", headers=auth("alice"))).json()
    assert queued["finish_in_s"] > queued["eta_s"]  # waiting, then its own run

    cancelled = await (await client.delete(f"/api/v1/jobs/{waiting['id']}", headers=auth("alice"))).json()
    break_folder(Path(web_settings.results_dir))  # the held job cannot be saved when it ends
    release.set()
    failed = await wait_for_state(client, held, {"complete", "failed", "cancelled"})
    assert failed["state"] == "failed" and failed["error"]
    return failed, cancelled


async def test_failed_and_cancelled_jobs_are_listed_with_their_reason(
    make_client,
    real_queue,
    web_settings,
    gate,  # noqa: F811
) -> None:
    client = await make_client(real_queue)
    failed, cancelled = await fail_one_cancel_one(client, web_settings, gate)

    state = await (await client.get("/status.json")).json()
    assert state["ready"] is False and any("RESULTS_DIR" in r for r in state["reasons"])
    assert [(t["state"], t["reason"]) for t in state["trouble"]] == [
        ("failed", failed["error"]),
        ("cancelled", cancelled["error"] or "cancelled"),
    ]
    assert str(Path(web_settings.results_dir)) not in json.dumps(state)  # no paths on the public page
    page = await (await client.get("/")).text()
    assert "Not ready" in page and failed["error"] in page and "cancelled" in page


UNTIL_JS = """
(async () => {
  window.samePage = window.samePage || "yes";
  const deadline = Date.now() + 45000;
  while (Date.now() < deadline && !(CONDITION)) await new Promise(r => setTimeout(r, 100));
  return JSON.stringify({
    samePage: window.samePage,
    running: !document.getElementById("running").hidden,
    steps: [...document.querySelectorAll("#running .steps")].map(n => n.textContent),
    figure: document.querySelector('#gallery figure[data-job="JOB"]') !== null,
    idle: !document.getElementById("idle").hidden,
    navigations: performance.getEntriesByType("navigation").length,
  });
})()
"""


async def page_until(page, condition: str, job: str) -> dict:
    script = UNTIL_JS.replace("CONDITION", condition).replace("JOB", job)
    return json.loads(await page.evaluate(script, timeout_s=60))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
async def test_the_status_page_updates_itself_in_place(
    tmp_path,
    web_settings,
    store,
    real_queue,
    gate,  # noqa: F811
) -> None:
    reached, release = gate
    settings = web_settings.model_copy(update={"public_api_keys": ["alice"]})  # alice's results are public
    app = create_web_app(settings=settings, store=store, queue=real_queue, registry=build_registry(settings))
    async with serve(app, host="127.0.0.1", port=0) as runner:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with chromium_page(CHROMIUM, tmp_path / "chromium-profile") as page:
            await page.navigate(f"{base}/")
            async with aiohttp.ClientSession() as http:
                image = {"prompt": "a lighthouse", "steps": 3, "width": 32, "height": 32}
                async with http.post(f"{base}/api/v1/images", json=image, headers=auth("alice")) as resp:
                    job = (await resp.json())["id"]
            assert await asyncio.to_thread(reached.wait, 30)
            step_shown = "[...document.querySelectorAll('#running .steps')]"
            step_shown += ".some(n => n.textContent == 'step 1/3')"
            held = await page_until(page, step_shown, job)
            release.set()
            done = await page_until(page, "document.querySelector('#gallery figure[data-job=\"JOB\"]')", job)
    assert held["running"] and held["steps"] == ["step 1/3"] and not held["figure"]
    assert done["figure"] and done["idle"]
    assert done["samePage"] == "yes" and done["navigations"] == 1  # updated in place, never reloaded
