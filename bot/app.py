"""The launcher: builds everything inside `async with`, runs the bot, shuts down cleanly.

Order matters: the store opens and the queue starts (resuming what a crash left behind)
before Discord connects, so the first command finds a working queue; on SIGTERM/SIGINT
the bot disconnects first, then the queue finishes or re-queues its running job, then the
store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import discord

from bot.discord_ui.client import ImagineBot
from bot.discord_ui.discord_endpoint import GatewayLookupError, configure_discord_endpoint
from bot.services import Services, running_services, running_web_server
from bot.settings import Settings

log = logging.getLogger(__name__)

#: how long a graceful stop lets the running job finish before re-queueing it (SIGTERM must
#: end the process within 30 s)
SHUTDOWN_GRACE_S = 20.0

TOKEN_HELP = (
    "Create an application at https://discord.com/developers/applications, open Bot → Reset Token, "
    "and put the token in .env as DISCORD_TOKEN=… (see .env.example)."
)


class StartupError(SystemExit):
    """Stops startup with a message for the person running the bot (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("discord.gateway").setLevel(logging.WARNING)


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def require_token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise StartupError(f"DISCORD_TOKEN is not set. {TOKEN_HELP}")
    return settings.discord_token.get_secret_value().strip()


async def run_discord(settings: Settings, services: Services, stop: asyncio.Event) -> None:
    """Connect the bot and run it until `stop` is set or Discord ends the session."""
    token = require_token(settings)
    try:
        await configure_discord_endpoint(settings.discord_api_base, settings.discord_gateway_url, token=token)
    except (GatewayLookupError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    bot = ImagineBot(
        settings=settings,
        store=services.store,
        queue=services.queue,
        registry=services.registry,
        link_for=services.link_for,
        health=services.health,
    )
    async with bot:
        runner = asyncio.create_task(bot.start(token), name="discord")
        waiter = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if runner in done:
            exc = runner.exception()
            if isinstance(exc, discord.LoginFailure):
                raise StartupError(f"Discord refused the token (401). {TOKEN_HELP}")
            if exc is not None:
                raise exc
        # finish (or re-queue) the running job and deliver what is done while still connected
        log.info("shutting down: stopping the queue, then disconnecting from Discord")
        await services.queue.stop(graceful=True, timeout_s=SHUTDOWN_GRACE_S)
    if not runner.done():
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def main_async(settings: Settings) -> None:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    try:
        async with (
            running_services(settings, start_queue=False) as services,
            running_web_server(settings, services),
        ):
            await run_discord(settings, services, stop)
    except ValueError as exc:  # a setting that cannot work (e.g. STORE_URL scheme)
        raise StartupError(str(exc)) from None
    log.info("stopped cleanly")


def main() -> int:
    configure_logging()
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's ValidationError names the bad variable
        sys.stderr.write(f"Invalid settings: {exc}\n")
        return 2
    try:
        require_token(settings)  # before anything opens a store or loads a model
        asyncio.run(main_async(settings))
    except StartupError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    except KeyboardInterrupt:
        pass
    return 0
