"""A minimal headless-Chromium driver over the DevTools protocol (websocket via aiohttp).

Enough to open a page and evaluate JavaScript in it: no playwright, no browser download,
only Debian's `chromium`. Each browser gets a fresh profile directory and is killed (by its
own pid) when the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One page target, driven over its own websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 30.0
    ) -> Any:
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await self._ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"DevTools connection closed: {msg.type}")
                data = json.loads(msg.data)
                if data.get("method") == "Runtime.consoleAPICalled":
                    args = data["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
                if data.get("id") == msg_id:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result")

    async def navigate(self, url: str, *, timeout_s: float = 30.0) -> None:
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Page.navigate", {"url": url})
        await self.evaluate(
            "new Promise(r => document.readyState === 'complete' ? r(true)"
            " : window.addEventListener('load', () => r(true)))",
            timeout_s=timeout_s,
        )

    async def evaluate(self, expression: str, *, timeout_s: float = 30.0) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if result.get("exceptionDetails"):
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")


def _read_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text.split()[0]) if text else None


@contextlib.asynccontextmanager
async def chromium_page(executable: str, profile_dir: Path) -> AsyncIterator[Page]:
    """Start headless Chromium with a fresh profile and yield its first page."""
    await asyncio.to_thread(profile_dir.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        executable,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile_dir}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30):
            while (port := await asyncio.to_thread(_read_port, profile_dir / "DevToolsActivePort")) is None:
                if proc.returncode is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode} before DevTools started")
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                        targets = await resp.json(content_type=None)
                    pages = [t for t in targets if t.get("type") == "page"]
                    if pages:
                        break
                    await asyncio.sleep(0.05)
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
