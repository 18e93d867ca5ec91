"""`python -m bench fuzz`: hypothesis-generated hostile input against the real bot, 10,000+ cases.

Starts `python -m bot` (tiny models, SQLite in a temporary directory) against the local fake
Discord, then sends slash-command payloads for /imagine and /video and REST bodies for
/api/v1/images and /api/v1/videos that break every rule Discord's client and a polite API
client would keep (see tests/reliability/fuzzing.py for the strategies and the checks).

Figures: cases tried (slash and REST), accepted, rejected, crashes (a case not answered, an
unclear or non-ephemeral refusal, a 5xx, a ping, an accepted request missing from the log, an
incident or traceback in the bot's log), cases per second. Target: crashes == 0 over at least
10,000 cases. Needs the dev extra (hypothesis) and the test helpers in tests/.

    python -m bench fuzz [--slash 6000] [--rest 4000] [--seed 1] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit

log = logging.getLogger(__name__)

TARGET_CASES = 10_000
API_KEY = "bench-fuzz-key-0123456789abcdef"


async def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    from tests.reliability.conftest import deployment
    from tests.reliability.fuzzing import FUZZ_ENV, REGRESSIONS, Fuzzer, draw_cases, rest_case, slash_case

    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        root = Path(tmp)
        (root / "bot").mkdir()
        env = {**FUZZ_ENV, "API_KEYS": json.dumps({"fuzz": API_KEY})}
        t0 = time.monotonic()
        async with deployment(root / "bot", root / "models", env=env, check_log=False) as bot:
            startup_s = time.monotonic() - t0
            fuzzer = Fuzzer(bot, api_key=API_KEY, concurrency=args.concurrency)
            t1 = time.monotonic()
            # generation takes a while: off the loop, or the fake Discord stops answering heartbeats
            cases: list[Any] = list(REGRESSIONS)
            strategy = slash_case(fuzzer.command_definitions())
            cases += await asyncio.to_thread(draw_cases, strategy, args.slash, seed=args.seed)
            cases += await asyncio.to_thread(draw_cases, rest_case(), args.rest, seed=args.seed)
            generate_s = time.monotonic() - t1
            report = await fuzzer.run(cases)
            alive = bot.proc.returncode is None
        figures = {
            **report.counts,
            "bot_alive_after": alive,
            "generate_s": round(generate_s, 1),
            "startup_s": round(startup_s, 1),
            "seed": args.seed,
            "concurrency": args.concurrency,
        }
        for line in report.failures(limit=20):
            sys.stderr.write(f"FAILED {line}\n")
        return figures


def main(argv: list[str]) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--slash", type=int, default=6000, help="slash-command cases (default 6000)")
    parser.add_argument("--rest", type=int, default=4000, help="REST body cases (default 4000)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (same seed, same cases)")
    parser.add_argument("--concurrency", type=int, default=8, help="cases in flight at once")
    args = parser.parse_args(argv)
    figures = asyncio.run(fuzz(args))
    passed = figures["crashes"] == 0 and figures["bot_alive_after"] and figures["cases"] >= TARGET_CASES
    emit("fuzz", figures, passed=passed, target=f"crashes == 0 over >= {TARGET_CASES} cases")
    return passed
