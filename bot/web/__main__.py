"""`python -m bot.web`: the REST API, status page and metrics with the queue and GPU worker, no Discord.

For deployments that only want the HTTP backend (the seed's Postman use). Same settings
(`.env`), same store, queue and worker as `python -m bot`; SIGTERM or Ctrl-C stops it
cleanly (the running job finishes or goes back to the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from bot.settings import Settings

log = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    from bot.services import running_services, running_web_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with running_services(settings) as services, running_web_server(settings, services) as runner:
        urls = ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses)
        log.info("REST-only mode: serving %s (public URL %s); Ctrl-C to stop", urls, settings.public_url)
        if not settings.api_keys:
            log.warning("API_KEYS is empty: every /api/v1 call will be refused with 401")
        await stop.wait()
        log.info("stopping")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's ValidationError names the bad variable
        sys.stderr.write(f"Invalid settings: {exc}\n")
        return 2
    try:
        asyncio.run(run(settings))
    except ValueError as exc:  # a setting that cannot work (STORE_URL scheme, unknown model)
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:  # e.g. the port is taken
        sys.stderr.write(f"error: cannot serve on {settings.web_host}:{settings.web_port}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
