"""The launcher: builds everything inside `async with`, runs the bot, shuts down cleanly.

Order matters: the checks that fail fast run and the store opens before Discord is contacted
(see `bot.services.running_server`); the queue starts in the bot's `setup_hook`, once delivery
listens, so the first command finds a working queue and nothing finished is dropped. Discord
that cannot be reached is not a mistake in the settings: the bot says where it is looking and
retries with back-off. On SIGTERM/SIGINT the queue finishes or re-queues its running job while
still connected, then the bot disconnects, then the store closes; a stop while the models load
(in `setup_hook`, during log-in) does not wait for the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import discord

from bot.discord_ui.client import ImagineBot
from bot.discord_ui.discord_endpoint import (
    DEFAULT_API_BASE,
    GatewayLookupError,
    configure_discord_endpoint,
    normalise_api_base,
)
from bot.services import Services, running_server
from bot.settings import Settings
from bot.startup import StartupError, run_entry, sleep_or_stop, stop_event, unless_stopped

log = logging.getLogger(__name__)

#: how long a graceful stop lets the running job finish before re-queueing it (SIGTERM must
#: end the process within 30 s)
SHUTDOWN_GRACE_S = 20.0
#: back-off between attempts to reach Discord, and how long one attempt may take
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
CONNECT_TIMEOUT_S = 10.0

TOKEN_HELP = (
    "Create an application at https://discord.com/developers/applications, open Bot → Reset Token, "
    "and put the token in .env as DISCORD_TOKEN=… (see .env.example)."
)
DEMO_HELP = (
    "To try the bot without Discord or a GPU first, run: .venv/bin/python -m bot.web --demo "
    '(README, "Try it without Discord or a GPU").'
)


def require_token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise StartupError(f"DISCORD_TOKEN is not set. {TOKEN_HELP} {DEMO_HELP}")
    return settings.discord_token.get_secret_value().strip()


async def wait_for_discord(settings: Settings, stop: asyncio.Event) -> None:
    """Return once Discord's REST host accepts a connection; until then say so and retry."""
    parts = urlsplit(normalise_api_base(settings.discord_api_base or DEFAULT_API_BASE))
    host = parts.hostname or "discord.com"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    setting = "DISCORD_API_BASE" if settings.discord_api_base else "DISCORD_API_BASE unset: discord.com"
    delay = RETRY_FIRST_S
    while True:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or "no answer"
            log.warning(
                "cannot reach Discord at %s:%d (%s): %s; retrying in %.0f s",
                *(host, port, setting, reason, delay),
            )
        await sleep_or_stop(stop, delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def log_in(bot: ImagineBot, settings: Settings, token: str) -> None:
    """Point discord.py at the configured Discord and log in (which runs `setup_hook`)."""
    try:
        await configure_discord_endpoint(settings.discord_api_base, settings.discord_gateway_url, token=token)
        await bot.login(token)
    except discord.LoginFailure:
        raise StartupError(f"DISCORD_TOKEN: Discord refused the token (401). {TOKEN_HELP}") from None
    except (GatewayLookupError, ValueError) as exc:
        raise StartupError(str(exc)) from exc


async def run_discord(settings: Settings, services: Services, stop: asyncio.Event, token: str) -> None:
    """Connect the bot and run it until `stop` is set or Discord ends the session."""
    # the bot has no voice features: discord.py's "PyNaCl/davey is not installed" warnings are noise
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    bot = ImagineBot(
        settings=settings,
        store=services.store,
        queue=services.queue,
        registry=services.registry,
        link_for=services.link_for,
        health=services.health,
    )
    async with bot:
        await wait_for_discord(settings, stop)
        await unless_stopped(stop, log_in(bot, settings, token))
        runner = asyncio.create_task(bot.connect(), name="discord")
        waiter = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if runner in done and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        # finish (or re-queue) the running job and deliver what is done while still connected
        log.info("shutting down: stopping the queue, then disconnecting from Discord")
        await services.queue.stop(graceful=True, timeout_s=SHUTDOWN_GRACE_S)
    if not runner.done():
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def main_async(settings: Settings) -> None:
    token = require_token(settings)  # before anything opens a store or loads a model
    stop = stop_event()
    async with running_server(settings, stop, start_queue=False) as services:
        await run_discord(settings, services, stop, token)
    log.info("stopped cleanly")


def main() -> int:
    return run_entry(main_async)
