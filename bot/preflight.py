"""Everything checked, bound or opened before a model loads, each failure one line naming its setting.

Order (see `bot.services.running_server`): the models named exist, the web port is bound, the
results folder takes a file, the store opens. Loading a model takes seconds to minutes; a typo
in WEB_PORT or a read-only folder should not cost that wait, nor be reported as something else.
A database that does not answer yet is not a mistake: the bot says where it is looking and keeps
trying with back-off until it answers or the bot is stopped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

from bot.core.disk import write_problem
from bot.core.store import Store, StoreUnavailable, create_store, sqlite_path
from bot.core.store.buffer import BufferedStore
from bot.settings import Settings
from bot.startup import StartupError, sleep_or_stop
from generation.models import ModelSpec, build_registry

log = logging.getLogger(__name__)

#: back-off between attempts to reach a database that does not answer
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def checked_registry(settings: Settings) -> dict[str, ModelSpec]:
    """The model registry, once IMAGE_MODEL and VIDEO_MODEL are known to be in it."""
    try:
        registry = build_registry(settings)
    except ValueError as exc:  # an EXTRA_MODELS entry that does not describe a model
        raise StartupError(f"EXTRA_MODELS: {exc}") from exc
    for setting, name in (("IMAGE_MODEL", settings.image_model), ("VIDEO_MODEL", settings.video_model)):
        if name not in registry:
            raise StartupError(f"{setting}: no model named {name!r}; known: {', '.join(registry)}")
    return registry


def bind_web_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for WEB_HOST:WEB_PORT, one per address the host names."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"WEB_HOST: {host!r} is not a name or address of this machine ({exc.strerror}); "
            "use 127.0.0.1, or 0.0.0.0 for every interface"
        ) from exc
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # with WEB_PORT=0, every address gets the port the first drew
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise StartupError(_bind_error(host, port, exc)) from exc
    return socks


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"WEB_PORT: port {port} on {host} is already in use (another copy of the bot?); "
            "stop that program or choose another WEB_PORT"
        )
    if exc.errno == errno.EACCES:
        return f"WEB_PORT: port {port} needs administrator rights on this system; choose one from 1024 up"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"WEB_HOST: {host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for all"
    return f"WEB_HOST/WEB_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"


def check_public_url(settings: Settings, port: int) -> None:
    """Derive PUBLIC_URL from the bound port, or warn when a set one points at another port."""
    settings.with_bound_port(port)
    parts = urlsplit(settings.public_url or "")
    if settings.public_url_derived:
        if settings.web_host in ("0.0.0.0", "::"):
            log.warning(
                "PUBLIC_URL is unset: download links point at %s, which only this machine reaches; "
                "set PUBLIC_URL to the address members' browsers use",
                settings.public_url,
            )
        return
    if parts.port is not None and parts.port != port:
        log.warning(
            "PUBLIC_URL names port %d but the web server listens on %d (WEB_PORT): download links "
            "will not reach it unless a proxy forwards that port; fix PUBLIC_URL or unset it",
            parts.port,
            port,
        )


def check_results_dir(settings: Settings) -> None:
    problem = write_problem(Path(settings.results_dir))
    if problem:
        raise StartupError(f"RESULTS_DIR: {problem}; choose a folder the bot may write to")


def build_store(settings: Settings) -> BufferedStore:
    """The store STORE_URL names (unopened), with a SQLite file's folder checked first."""
    url = settings.store_url.strip()
    if url.startswith("sqlite:///"):
        try:
            folder = sqlite_path(url).parent
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        problem = write_problem(folder)
        if problem:
            raise StartupError(f"STORE_URL: the SQLite file's folder {problem}; point STORE_URL elsewhere")
    try:
        return BufferedStore(create_store(settings), max_items=settings.log_buffer_max)
    except ValueError as exc:  # an unknown scheme; the message names STORE_URL
        raise StartupError(str(exc)) from exc
    except Exception as exc:  # the Mongo client refused the URL (options, SRV lookup)
        raise StartupError(f"STORE_URL: {where(url)}: {_short(exc)}") from exc


async def open_store(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """Open the store; a MongoDB that does not answer is retried with back-off until stopped."""
    url = settings.store_url.strip()
    delay = RETRY_FIRST_S
    while True:
        try:
            await store.open()
            return
        except Exception as exc:
            if not (url.startswith("mongodb") and _unreachable(exc)):
                raise StartupError(f"STORE_URL: cannot open {where(url)}: {_short(exc)}") from exc
            log.warning(
                "cannot reach MongoDB at %s (STORE_URL): %s; retrying in %.0f s",
                where(url),
                _short(exc),
                delay,
            )
        await sleep_or_stop(stop, delay)
        delay = min(delay * 2, RETRY_MAX_S)


def where(url: str) -> str:
    """The host(s) or file a STORE_URL names, without credentials."""
    if url.startswith("sqlite:///"):
        return f"the SQLite file {sqlite_path(url)}"
    netloc = urlsplit(url).netloc
    return netloc.rsplit("@", 1)[-1] or url.split("://", 1)[0]


def _unreachable(exc: BaseException) -> bool:
    names = {cls.__name__ for e in (exc, exc.__cause__) if e is not None for cls in type(e).__mro__}
    return isinstance(exc, StoreUnavailable | OSError | TimeoutError) or "ConnectionFailure" in names


def _short(exc: BaseException) -> str:
    """The first line of the root cause, capped: driver errors can run to a page."""
    root = exc.__cause__ or exc
    text = (getattr(root, "strerror", None) or str(root) or type(root).__name__).splitlines()[0]
    if isinstance(root, Exception) and type(root).__module__.startswith("pymongo"):
        text = text.split(" (configured timeouts")[0].split(", Timeout:")[0]
    return text[:160]
