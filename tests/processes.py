"""Child processes for the tests that start the real entry points as a user would.

`child` starts one and, however the test ends, leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def child(
    *argv: str, env: dict[str, str], cwd: Path, log_path: Path | None = None, **options: Any
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`argv` with its console (stderr folded into stdout) piped to the test, or written to `log_path`
    when the test reads it afterwards; killed and reaped if it is still running when the block ends."""
    if log_path is None:
        pipe, merged = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=pipe, stderr=merged, **options
        )
    else:
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, stdout=out, stderr=out, **options
            )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
