"""How `python -m bot` and `python -m bot.web` start and stop: logging, settings, exit status.

Written once for both entry points. A mistake the person running the bot can fix (a setting,
a port in use, an unwritable folder, a refused token) is raised as :class:`StartupError` and
ends the process with one line per problem on stderr, naming the setting, and exit status 2;
``LOG_LEVEL=DEBUG`` adds the traceback behind it. SIGTERM and Ctrl-C set one stop event that
every waiting step (retries, model loading) honours: a stop during start-up ends the process
within seconds, with exit status 0 as any stop, after closing what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

from bot.settings import Settings
from generation.settings import LogSettings, settings_error_lines

log = logging.getLogger(__name__)

T = TypeVar("T")

#: exit status of a start-up refused for a reason the owner can fix
EXIT_STARTUP = 2


class StartupError(Exception):
    """Start-up cannot go on; the message (one line per problem) says which setting to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StopRequested(Exception):
    """SIGTERM or Ctrl-C arrived while start-up was still waiting (e.g. for the database)."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        logging.getLogger("discord.gateway").setLevel(logging.WARNING)


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment and `.env`; a wrong value is a StartupError naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        raise StartupError("\n".join(settings_error_lines(exc, Settings))) from exc


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds` (a retry's back-off) unless stopped first, which raises StopRequested."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    if stop.is_set():
        raise StopRequested


async def unless_stopped(stop: asyncio.Event, step: Awaitable[T]) -> T:
    """`step`'s result, or StopRequested once `stop` is set first: the step (loading the models
    can take minutes) is then cancelled, and whatever it opened is closed by its callers' exits."""
    task = asyncio.ensure_future(step)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise StopRequested


def run_entry(
    entry: Callable[[Settings], Awaitable[None]], *, settings: Callable[[], Settings] = load_settings
) -> int:
    """Run `entry` with the settings; the process's exit status (0, or 2 for a start-up error)."""
    level = LogSettings.lenient().log_level
    configure_logging(level)
    try:
        asyncio.run(entry(settings()))
    except StartupError as exc:
        if level == "DEBUG":
            traceback.print_exception(exc, file=sys.stderr)
        for line in exc.message.splitlines():
            sys.stderr.write(f"error: {line}\n")
        return EXIT_STARTUP
    except (KeyboardInterrupt, StopRequested):
        log.info("stopped before start-up completed")
    return 0
