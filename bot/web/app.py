"""The aiohttp application: health, metrics, REST API, signed downloads and the status page.

One app serves both deployments: the bot starts it beside the Discord client, and
`python -m bot.web` runs it alone (REST only). Either way it is handed the same store, queue
and model registry the worker uses; it never builds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.core import metrics
from bot.core.moderation import Moderator
from bot.web import api, downloads, status_page, upscales
from bot.web.auth import ApiKeys
from bot.web.errors import error_middleware
from bot.web.keys import (
    BUSY_KEY,
    CHECKS_KEY,
    KEYS_KEY,
    MODERATOR_KEY,
    POSTERS_KEY,
    QUEUE_KEY,
    REGISTRY_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
    STORE_KEY,
    TROUBLE_KEY,
)
from bot.web.links import LinkSigner
from bot.web.media import PosterIndex
from bot.web.readiness import ReadinessCheck, default_checks, run_checks

if TYPE_CHECKING:
    from bot.core.store import Store
    from bot.settings import Settings
    from generation.models import ModelSpec

log = logging.getLogger(__name__)

#: JSON parameters are small; this (plus an input picture's cap) bounds what a client makes us buffer
MAX_BODY_BYTES = 64 * 1024


def create_web_app(
    *,
    settings: Settings,
    store: Store,
    queue: Any,
    registry: Mapping[str, ModelSpec],
    signer: LinkSigner | None = None,
    checks: Sequence[ReadinessCheck] | None = None,
    register_metrics_listener: bool = True,
) -> web.Application:
    """Build (not start) the web app around an opened store and a started queue.

    `checks` replaces the default readiness checks (store ping, queue worker, models); the
    signer defaults to one from the settings, which agrees with every other signer built in
    this process. With `register_metrics_listener`, the app adds a `metrics.QueueMetrics`
    listener to the queue at startup so job series are counted exactly once per process.
    """
    # room for an input picture as base64 (4 characters per 3 bytes) beside the parameters
    max_body = MAX_BODY_BYTES + settings.input_image_max_bytes * 4 // 3 + 4
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    app[QUEUE_KEY] = queue
    app[REGISTRY_KEY] = registry
    app[KEYS_KEY] = ApiKeys(settings.api_keys)
    app[MODERATOR_KEY] = Moderator(store=store, blocklist=settings.prompt_blocklist)
    app[SIGNER_KEY] = signer or LinkSigner.from_settings(settings)
    app[POSTERS_KEY] = PosterIndex(results_dir=settings.results_dir)
    app[TROUBLE_KEY] = status_page.RecentTrouble(store)
    listener = metrics.QueueMetrics()
    app[BUSY_KEY] = listener.busy
    app[CHECKS_KEY] = list(checks) if checks is not None else settings_checks(settings, store, queue)

    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    api.add_routes(app)
    upscales.add_routes(app)
    downloads.add_routes(app)
    status_page.add_routes(app)
    _listen_to_queue(app, queue, listener if register_metrics_listener else None)
    if not app[KEYS_KEY]:
        log.info("no API_KEYS configured: the REST API answers 401 to everyone")
    return app


def _listen_to_queue(app: web.Application, queue: Any, metrics_listener: Any | None) -> None:
    """The app's queue listeners (metrics, poster index, recent trouble) join the queue when the
    app starts and leave it at cleanup, so an app that stopped leaves nothing listening."""
    listeners = [item for item in (metrics_listener, app[POSTERS_KEY], app[TROUBLE_KEY]) if item is not None]

    async def on_startup(app: web.Application) -> None:
        if hasattr(queue, "add_listener"):
            for item in listeners:
                queue.add_listener(item)

    async def on_cleanup(app: web.Application) -> None:
        remove = getattr(queue, "remove_listener", None)
        if remove is not None:
            for item in listeners:
                with contextlib.suppress(KeyError, ValueError):
                    remove(item)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


# -- health ------------------------------------------------------------------------------------


def settings_checks(settings: Settings, store: Store, queue: Any) -> list[ReadinessCheck]:
    """The default readiness checks, the results folder and its free space included."""
    return default_checks(
        store=store, queue=queue, results_dir=settings.results_dir, min_free_disk_mb=settings.min_free_disk_mb
    )


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers; says nothing about dependencies."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take jobs: every check passes. 503 with the list of reasons otherwise."""
    reasons = await run_checks(request.app[CHECKS_KEY])
    if reasons:
        return web.json_response({"status": "not_ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready", "reasons": []})


# -- metrics -----------------------------------------------------------------------------------


async def metrics_handler(request: web.Request) -> web.Response:
    queue = request.app[QUEUE_KEY]
    snapshot = None
    if hasattr(queue, "snapshot"):
        try:
            snapshot = queue.snapshot()
            if asyncio.iscoroutine(snapshot):
                snapshot = await snapshot
        except Exception:
            log.warning("queue snapshot failed while scraping metrics", exc_info=True)
    metrics.refresh_from_state(snapshot=snapshot, store=request.app[STORE_KEY], busy=request.app[BUSY_KEY])
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


# -- serving -----------------------------------------------------------------------------------


@asynccontextmanager
async def serve(
    app: web.Application, *, host: str, port: int, socks: Sequence[socket.socket] = ()
) -> AsyncIterator[web.AppRunner]:
    """Run `app` on host:port until the block exits (port 0 picks a free port).

    With `socks` (already bound, see `bot.preflight.bind_web_sockets`) it serves on those
    instead, so a port in use was reported before anything slow started. The bound address is
    `runner.addresses[0]`. Shutdown waits briefly for requests in flight, then closes
    keep-alive connections.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    sites = [web.SockSite(runner, sock) for sock in socks] or [web.TCPSite(runner, host=host, port=port)]
    try:
        for site in sites:
            await site.start()
        log.info("web server listening on %s", ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses))
        yield runner
    finally:
        await runner.cleanup()
