"""Wait until the MongoDB server at argv[1] answers `hello` (its process, pid argv[2], still alive).

Exits 0 when it answers, 1 when the process died or 30 s passed. CI helper for .ci/run.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(url: str, pid: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    t0 = time.monotonic()
    while time.monotonic() < deadline and alive(pid):
        client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=500)
        try:
            hello = client.admin.command("hello")
        except PyMongoError:
            continue
        finally:
            client.close()
        name = hello.get("setName", "mongod")
        print(f"test MongoDB server up in {time.monotonic() - t0:.1f} s: {url} ({name})")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
