"""A sample of the fuzzing run in the suite: hostile slash payloads and REST bodies against the
real bot. `python -m bench fuzz` runs the same with 10,000 and more cases; see fuzzing.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from tests.reliability.conftest import deployment
from tests.reliability.fuzzing import FUZZ_ENV, REGRESSIONS, Fuzzer, draw_cases, rest_case, slash_case

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SLASH_CASES = int(os.environ.get("RELIABILITY_FUZZ_SLASH", "200"))
REST_CASES = int(os.environ.get("RELIABILITY_FUZZ_REST", "100"))
SEED = int(os.environ.get("RELIABILITY_FUZZ_SEED", "20251126"))
API_KEY = "fuzz-key-0123456789abcdef"


async def test_hostile_slash_payloads_and_rest_bodies_get_clear_refusals_and_nothing_breaks(
    workdir: Path, tiny_model_cache: Path
) -> None:
    env = {**FUZZ_ENV, "API_KEYS": json.dumps({"fuzz": API_KEY})}
    async with deployment(workdir, tiny_model_cache, env=env) as bot:
        fuzzer = Fuzzer(bot, api_key=API_KEY, concurrency=6)
        cases: list = list(REGRESSIONS)  # drawn off the loop: the fake Discord shares it
        strategy = slash_case(fuzzer.command_definitions())
        cases += await asyncio.to_thread(draw_cases, strategy, SLASH_CASES, seed=SEED)
        cases += await asyncio.to_thread(draw_cases, rest_case(), REST_CASES, seed=SEED)
        report = await fuzzer.run(cases)
        counts = report.counts
        log.info("fuzz sample: %s", counts)
        assert not report.failures(), "\n".join(report.failures())
        assert counts["cases"] == len(cases) >= 150
        assert counts["accepted"] >= 5 and counts["rejected"] >= 50  # both doors were really exercised
        assert bot.proc.returncode is None
