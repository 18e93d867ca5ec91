"""The public status page at `/`: queue, the jobs on GPU workers, and a gallery of recent results.

Server-rendered with Jinja2 and autoescaping on: prompts are user input, and a prompt like
`<script>` must show as text. A strict Content-Security-Policy (no scripts at all) backs
that up. Only jobs the gallery may show appear (see `downloads.Publicity`); a
running job's prompt likewise shows only when its result would be public.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from bot.core.queue import RunningEntry
from bot.core.store import Store, StoreUnavailable
from bot.web.downloads import Publicity
from bot.web.keys import QUEUE_KEY, STORE_KEY

log = logging.getLogger(__name__)

GALLERY_SIZE = 24
#: recent results read to fill the gallery after private ones are skipped
GALLERY_SCAN = 96
CSP = (
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("bot.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page, name="status_page")


async def status_page(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    snap = request.app[QUEUE_KEY].snapshot()
    store_error = None
    gallery: list[dict[str, Any]] = []
    publicity = Publicity.of(request.app)
    try:
        gallery = await _gallery(store, publicity)
    except StoreUnavailable:
        store_error = "The database is unreachable right now; recent results are hidden."
    store_ok = store_error is None
    running = [await _running_item(entry, publicity, store_ok) for entry in snap.running]
    html = _templates.get_template("status.html").render(
        queue_length=len(snap.queued),
        paused=bool(snap.paused),
        running=running,
        gallery=gallery,
        store_error=store_error,
        rendered_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    )
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def _running_item(entry: RunningEntry, publicity: Publicity, store_ok: bool) -> dict[str, Any]:
    """One job a worker holds; its prompt shows only where its result would be public."""
    job = entry.job
    prompt = None
    if store_ok:
        try:
            prompt = job.prompt if await publicity.shown(job) else None
        except StoreUnavailable:
            prompt = None
    elapsed = None
    if job.started_at is not None:
        elapsed = f"{(datetime.now(UTC) - job.started_at).total_seconds():.0f} s"
    return {
        "phase": entry.phase,
        "kind": job.kind,
        "model": job.model,
        "prompt": prompt,
        "step": entry.step,
        "total": entry.total,
        "elapsed": elapsed,
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
            }
        )
        if len(items) >= GALLERY_SIZE:
            break
    return items
