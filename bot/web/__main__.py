"""`python -m bot.web`: the REST API, status page and metrics with the queue and GPU worker, no Discord.

For deployments that only want the HTTP backend. Same settings (`.env`), same store, queue and
worker as `python -m bot`; SIGTERM or Ctrl-C stops it cleanly (the running job finishes or goes
back to the queue).

`python -m bot.web --demo` is the way to try the project with nothing configured: no token, no
GPU, no `.env` (it is not read; environment variables such as WEB_PORT still apply). It runs the
tiny random-weight twins on the CPU with SQLite under ``data/demo`` and a fresh API key, printed
on start and written to ``data/demo/api-key`` so shell lines can read it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.settings import Settings
from bot.startup import StartupError, load_settings, run_entry, stop_event

log = logging.getLogger(__name__)

DEMO_DIR = Path("data/demo")
DEMO_KEY_FILE = DEMO_DIR / "api-key"
DEMO_SETTINGS: dict[str, object] = {
    "image_model": "tiny-image",
    "video_model": "tiny-video",
    "extra_models": {},
    "device": "cpu",
    "dtype": "fp32",
    "memory_mode": "auto",
    "safety_checker": False,  # the twins have no safety checker to run
    "hf_offline": True,  # the twins are built locally; nothing is downloaded
    "queue_url": None,
    "store_url": f"sqlite:///{DEMO_DIR / 'bot.db'}",
    "results_dir": str(DEMO_DIR / "results"),
    "public_api_keys": ["demo"],  # the demo's pictures appear on the status page
}


def demo_settings() -> Settings:
    """Settings for `--demo`: the environment minus `.env`, with the demo's models, store and key."""
    key = secrets.token_urlsafe(24)
    settings = load_settings(_env_file=None, **DEMO_SETTINGS, api_keys={"demo": key})
    try:
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        DEMO_KEY_FILE.write_text(key + "\n", encoding="utf-8")
        os.chmod(DEMO_KEY_FILE, 0o600)
    except OSError as exc:
        raise StartupError(
            f"--demo keeps its files in {DEMO_DIR.resolve()}, which is not writable "
            f"({exc.strerror}); run it from a folder you may write to"
        ) from exc
    return settings


async def serve_rest(settings: Settings, *, demo: bool = False) -> None:
    from bot.services import running_server

    stop = stop_event()
    async with running_server(settings, stop):
        log.info("REST-only mode: serving %s; Ctrl-C to stop", settings.public_url)
        if demo:
            print(demo_banner(settings), flush=True)
        elif not settings.api_keys:
            log.warning("API_KEYS is empty: every /api/v1 call will be refused with 401")
        await stop.wait()
        log.info("stopping")


def demo_banner(settings: Settings) -> str:
    key = settings.api_keys["demo"].get_secret_value()
    return (
        f"\nDemo server on {settings.public_url} (tiny random-weight models: the pictures are noise).\n"
        f"API key for this run: {key}  (also in {DEMO_KEY_FILE})\n"
        f"Status page: {settings.public_url}/   API: {settings.public_url}/api/v1/openapi.json\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.web", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo",
        action="store_true",
        help="try it with nothing configured: tiny CPU models, SQLite in data/demo, a fresh API key",
    )
    args = parser.parse_args(argv)
    if args.demo:
        return run_entry(functools.partial(serve_rest, demo=True), settings=demo_settings)
    return run_entry(serve_rest)


if __name__ == "__main__":
    sys.exit(main())
