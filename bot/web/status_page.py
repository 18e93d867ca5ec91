"""The public status page at `/`: readiness, queue, the jobs on GPU workers, trouble, recent results.

Server-rendered with Jinja2 and autoescaping on: prompts are user input, and a prompt like
`<script>` must show as text. The page keeps itself current with one same-origin script
(`/status.js`, no inline script: the Content-Security-Policy allows only `'self'`) that polls
`/status.json` and updates the parts that changed in place, so nothing flickers; when a new
result arrives it fetches the page once and swaps only the gallery.

Only jobs the gallery may show reveal their prompts (see `downloads.Publicity`); failed and
cancelled jobs are listed with their reason (messages written for members, never internals)
but without the prompt unless it is public. They come from the store, not from what this process
saw, so the trouble before a restart (when an admin comes looking) and the jobs another process
finished are listed too. Readiness reasons are shown with absolute paths replaced, since `/` is
the one page meant to be public.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from bot.core.jobs import Job, JobState
from bot.core.queue import BaseJobListener, RunningEntry
from bot.core.store import Store, StoreUnavailable
from bot.core.store.base import TROUBLE_STATES
from bot.web.downloads import Publicity
from bot.web.keys import CHECKS_KEY, QUEUE_KEY, STORE_KEY, TROUBLE_KEY
from bot.web.readiness import run_checks, without_paths

log = logging.getLogger(__name__)

GALLERY_SIZE = 24
#: recent results read to fill the gallery after private ones are skipped
GALLERY_SCAN = 96
#: failed and cancelled jobs listed, and how far back the page looks for them
TROUBLE_SIZE = 20
TROUBLE_WINDOW = timedelta(hours=24)
#: how long one store read of them answers every viewer's polls
TROUBLE_TTL_S = 5.0
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
    """The latest failed and cancelled jobs, read from the store.

    The page is public and polled every few seconds by every open tab, so one read answers all
    polls for `ttl_s` instead of one query per poll. As a queue listener it marks that read stale
    when this process finishes a job badly, so such a job shows on the next poll; one finished by
    another process on the same store shows within `ttl_s`. While the store is unreachable the
    last list read stays.
    """

    def __init__(
        self,
        store: Store,
        *,
        size: int = TROUBLE_SIZE,
        window: timedelta = TROUBLE_WINDOW,
        ttl_s: float = TROUBLE_TTL_S,
    ) -> None:
        self._store = store
        self._size = size
        self._window = window
        self._ttl_s = ttl_s
        self._jobs: list[Job] = []
        self._read_at: float | None = None
        self._changes = 0  # bad finishes seen here; a read taken before the latest one is stale
        self._read_changes = 0
        self._lock = asyncio.Lock()  # polls arriving together share one read

    async def on_finished(self, job: Any, result: Any) -> None:
        if getattr(job, "state", None) in TROUBLE_STATES:
            self._changes += 1

    async def jobs(self) -> list[Job]:
        async with self._lock:
            if not self._stale():
                return self._jobs
            changes = self._changes
            since = datetime.now(UTC) - self._window
            try:
                self._jobs = await self._store.recent_trouble(since=since, limit=self._size)
            except StoreUnavailable:
                log.debug("store unreachable: the status page keeps the failed jobs it last read")
                return self._jobs
            self._read_at, self._read_changes = time.monotonic(), changes
            return self._jobs

    def _stale(self) -> bool:
        if self._read_at is None or self._read_changes != self._changes:
            return True
        return time.monotonic() - self._read_at >= self._ttl_s


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
    trouble = [await _trouble(job, public) for job in await request.app[TROUBLE_KEY].jobs()]
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
        "at": when.strftime("%Y-%m-%d %H:%M:%S") if when else "",
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
