"""The long-lived parts every entry point shares: store, queue with its GPU worker, web server.

`python -m bot` (Discord + web), `python -m bot.web` (REST only) and the tests all build
them here, so there is one start-up order and one shut-down order: store opens, queue
starts (resuming what a crash left behind); on exit the queue stops (finishing or
re-queueing its running job) before the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot import preflight
from bot.core.executor import Executor
from bot.core.jobs import Job
from bot.core.queue import JobQueue
from bot.core.store import create_store
from bot.core.store.base import Store
from bot.core.store.buffer import BufferedStore
from bot.settings import Settings
from bot.startup import unless_stopped
from bot.web.app import create_web_app, serve, settings_checks
from bot.web.links import LinkSigner
from bot.web.readiness import run_checks, without_paths
from generation.models import ModelSpec, build_registry

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    queue: JobQueue
    registry: dict[str, ModelSpec]
    signer: LinkSigner

    def link_for(self, job: Job) -> str:
        """A signed, expiring download URL for a result too large to attach."""
        return self.signer.sign(job.id)

    async def health(self) -> dict[str, Any]:
        """What /info shows: the same checks as /readyz, plus models and device."""
        checks = settings_checks(self.settings, self.store, self.queue)
        problems = [without_paths(reason) for reason in await run_checks(checks)]
        workers = self.queue.workers()
        executor = self.queue.executor
        runner = getattr(executor, "runner", None)  # the in-process executor's; arq workers report by beat
        manager = getattr(getattr(runner, "gpu", None), "manager", None)
        return {
            "problems": problems,
            "store_ok": not any(p.startswith("store") for p in problems),
            "worker_alive": bool(workers) and all(w.alive for w in workers),
            "models_loaded": manager.loaded_models() if manager is not None else [],
            "device": ", ".join(sorted({w.device for w in workers})) or None,
            "workers": workers,
        }


def build_executor(settings: Settings, registry: dict[str, ModelSpec]) -> Executor:
    """arq workers on Redis when QUEUE_URL is set, else the in-process runner (preloading the
    configured models). arq and redis are imported only in the first case, torch and diffusers only
    in the second."""
    if settings.queue_url:
        from bot.core.arq_executor import ArqExecutor

        return ArqExecutor(settings=settings)
    from bot.core.inprocess import InProcessExecutor

    preload = tuple(dict.fromkeys(m for m in (settings.image_model, settings.video_model) if m in registry))
    return InProcessExecutor(settings=settings, preload=preload)


@asynccontextmanager
async def running_services(
    settings: Settings,
    *,
    executor: Executor | None = None,
    store: Store | None = None,
    start_queue: bool = True,
) -> AsyncIterator[Services]:
    """Open the store and start the queue; stop and close them in reverse order on exit.

    With `start_queue=False` the caller starts the queue once its listeners are registered
    (the Discord bot does, so results finished or left undelivered at start-up reach it).
    """
    registry = build_registry(settings)
    for name in (settings.image_model, settings.video_model):
        if name not in registry:
            raise ValueError(
                f"model {name!r} (IMAGE_MODEL/VIDEO_MODEL) is not in the registry; "
                f"known: {', '.join(registry)}"
            )
    store = store or BufferedStore(create_store(settings), max_items=settings.log_buffer_max)
    await store.open()
    try:
        queue = JobQueue(
            settings=settings, store=store, executor=executor or build_executor(settings, registry)
        )
        if start_queue:
            await queue.start()
        try:
            yield Services(
                settings=settings,
                store=store,
                queue=queue,
                registry=registry,
                signer=LinkSigner.from_settings(settings),
            )
        finally:
            await queue.stop(graceful=True)
    finally:
        await store.close()


@asynccontextmanager
async def running_web_server(
    settings: Settings, services: Services, *, socks: Sequence[socket.socket] = ()
) -> AsyncIterator[web.AppRunner]:
    app = create_web_app(
        settings=settings,
        store=services.store,
        queue=services.queue,
        registry=services.registry,
        signer=services.signer,
    )
    async with serve(app, host=settings.web_host, port=settings.web_port, socks=socks) as runner:
        yield runner


@asynccontextmanager
async def running_server(
    settings: Settings, stop: asyncio.Event, *, start_queue: bool = True
) -> AsyncIterator[Services]:
    """What both entry points run, started in the order that fails fast (see `bot.preflight`).

    Models named, port bound, results folder written, store open (a MongoDB that does not
    answer is retried until `stop`), web server serving; then, with `start_queue`, the queue
    starts and the GPU worker loads the models (`stop` meanwhile raises StopRequested without
    waiting for the load). Without it the caller starts the queue once its listeners are
    registered (the Discord bot does, in `setup_hook`).
    """
    preflight.checked_registry(settings)
    socks = preflight.bind_web_sockets(settings.web_host, settings.web_port)
    try:
        preflight.check_public_url(settings, socks[0].getsockname()[1])
        preflight.check_results_dir(settings)
        store = preflight.build_store(settings)
        try:
            await preflight.open_store(store, settings, stop)
        except BaseException:
            await store.close()
            raise
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    async with (
        running_services(settings, store=store, start_queue=False) as services,
        running_web_server(settings, services, socks=socks),
    ):
        if start_queue:
            await unless_stopped(stop, services.queue.start())
        yield services
