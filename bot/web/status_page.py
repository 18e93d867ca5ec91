"""The public status page at `/`: readiness, queue, the jobs on GPU workers, trouble, recent results.

Server-rendered with Jinja2 and autoescaping on: prompts are user input, and a prompt like
`<script>` must show as text. The page keeps itself current with one same-origin script
(`/status.js`, no inline script: the Content-Security-Policy allows only `'self'`) that polls
`/status.json` and updates the parts that changed in place, so nothing flickers; when a new
result arrives it fetches the page once and swaps only the gallery.

Only jobs the gallery may show reveal their prompts (see `downloads.Publicity`); failed and
cancelled jobs are listed with their reason (messages written for members, never internals)
but without the prompt unless it is public. Readiness reasons are shown with absolute paths
replaced, since `/` is the one page meant to be public.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from bot.core.jobs import Job, JobState
from bot.core.queue import BaseJobListener, RunningEntry
from bot.core.store import Store, StoreUnavailable
from bot.web.downloads import Publicity
from bot.web.keys import CHECKS_KEY, QUEUE_KEY, STORE_KEY, TROUBLE_KEY
from bot.web.readiness import run_checks, without_paths

log = logging.getLogger(__name__)

GALLERY_SIZE = 24
#: recent results read to fill the gallery after private ones are skipped
GALLERY_SCAN = 96
#: failed and cancelled jobs remembered for the page (since this process started)
TROUBLE_SIZE = 10
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; media-src 'self'; "
    "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("bot.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class RecentTrouble(BaseJobListener):
    """Queue listener remembering the last failed and cancelled jobs (only `on_finished` matters)."""

    def __init__(self, size: int = TROUBLE_SIZE) -> None:
        self.jobs: deque[Job] = deque(maxlen=size)

    async def on_finished(self, job: Any, result: Any) -> None:
        if getattr(job, "state", None) in (JobState.FAILED, JobState.CANCELLED):
            self.jobs.appendleft(job)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page, name="status_page")
    app.router.add_get("/status.json", status_json, name="status_json")
    app.router.add_get("/status.js", status_script, name="status_script")


async def status_page(request: web.Request) -> web.Response:
    state = await page_state(request)
    store_error = None
    gallery: list[dict[str, Any]] = []
    try:
        gallery = await _gallery(request.app[STORE_KEY], Publicity.of(request.app))
    except StoreUnavailable:
        store_error = "The database is unreachable right now; recent results are hidden."
    html = _templates.get_template("status.html").render(
        **state,
        gallery=gallery,
        store_error=store_error,
        rendered_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=HEADERS)


async def status_json(request: web.Request) -> web.Response:
    """What the page's script polls: the same state the page was rendered from."""
    return web.json_response(await page_state(request), headers=HEADERS)


async def status_script(request: web.Request) -> web.Response:
    script = resources.files("bot.web").joinpath("templates/status.js").read_text(encoding="utf-8")
    headers = {**HEADERS, "Cache-Control": "public, max-age=300"}
    return web.Response(text=script, content_type="text/javascript", charset="utf-8", headers=headers)


async def page_state(request: web.Request) -> dict[str, Any]:
    """Readiness, queue, running jobs and recent trouble, as plain data (no private prompt)."""
    store = request.app[STORE_KEY]
    snap = request.app[QUEUE_KEY].snapshot()
    public = Publicity.of(request.app)
    reasons = [without_paths(reason) for reason in await run_checks(request.app[CHECKS_KEY])]
    running = [await _running(entry, public) for entry in snap.running]
    trouble = [await _trouble(job, public) for job in request.app[TROUBLE_KEY].jobs]
    return {
        "ready": not reasons,
        "reasons": reasons,
        "queue_length": len(snap.queued),
        "paused": bool(snap.paused),
        "running": running,
        "trouble": trouble,
        "gallery_key": await _gallery_key(store),
    }


async def _public_prompt(job: Job, public: Publicity) -> str | None:
    try:
        return job.prompt if await public.shown(job) else None
    except StoreUnavailable:
        return None


async def _running(entry: RunningEntry, public: Publicity) -> dict[str, Any]:
    """One job a worker holds; its prompt shows only where its result would be public."""
    job = entry.job
    elapsed = None
    if job.started_at is not None:
        elapsed = round((datetime.now(UTC) - job.started_at).total_seconds())
    return {
        "phase": str(entry.phase),
        "kind": job.kind,
        "model": job.model,
        "prompt": await _public_prompt(job, public),
        "step": entry.step,
        "total": entry.total,
        "elapsed_s": elapsed,
        "finish_in_s": round(entry.remaining_s),
    }


async def _trouble(job: Job, public: Publicity) -> dict[str, Any]:
    when = job.finished_at or job.created_at
    return {
        "kind": job.kind,
        "model": job.model,
        "state": job.state.value,
        "reason": job.error or ("cancelled" if job.state is JobState.CANCELLED else "no reason recorded"),
        "prompt": await _public_prompt(job, public),
        "at": when.strftime("%H:%M:%S") if when else "",
    }


async def _gallery_key(store: Store) -> str:
    """Changes when a new result arrives, so the script knows to refresh the gallery; opaque."""
    try:
        latest = await store.recent_results(limit=1)
    except StoreUnavailable:
        return "unavailable"
    return hashlib.sha256(latest[0].id.encode()).hexdigest()[:12] if latest else "empty"


async def _lineage(store: Store, publicity: Publicity, job: Job) -> dict[str, Any] | None:
    """Which result this one was made from, and how; linked only where that one is public too."""
    if not job.parent_id:
        return None
    parent = await store.get_job(job.parent_id)
    public = parent is not None and await publicity.in_gallery(parent)
    return {
        "verb": job.lineage or "made",
        "short": job.parent_id[:8],
        "url": f"/gallery/{job.parent_id}" if public else None,
    }


async def _gallery(store: Store, publicity: Publicity) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for job in await store.recent_results(limit=GALLERY_SCAN):
        if not await publicity.in_gallery(job):
            continue
        params = job.params or {}
        extra = None
        if job.kind == "video" and params.get("frames") and params.get("fps"):
            extra = f"{params['frames']} frames @ {params['fps']} fps"
        elif job.kind == "image" and int(params.get("count") or 1) > 1:
            extra = f"grid of {params['count']}"
        items.append(
            {
                "id": job.id,
                "kind": job.kind,
                "model": job.model,
                "prompt": job.prompt,
                "seed": job.seed,
                "width": params.get("width") or "",
                "height": params.get("height") or "",
                "url": f"/gallery/{job.id}",
                "poster_url": f"/gallery/{job.id}/poster",
                "extra": extra,
                "lineage": await _lineage(store, publicity, job),
            }
        )
        if len(items) >= GALLERY_SIZE:
            break
    return items
