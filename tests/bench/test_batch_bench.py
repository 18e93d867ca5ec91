"""`python -m bench batch` in a tiny configuration: the real queue and worker batch the
members' jobs, each picture matches its alone twin, and one JSON line with "pass" comes out."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import pytest

from bench import batch, common

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(300)


def test_the_batch_bench_batches_and_keeps_each_picture() -> None:
    before = (
        (common.RESULTS_DIR / "batch.jsonl").read_bytes()
        if (common.RESULTS_DIR / "batch.jsonl").exists()
        else b""
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        batch.main(
            [
                "--jobs",
                "3",
                "--batch-max",
                "3",
                "--steps",
                "2",
                "--size",
                "32",
                "--blocker-steps",
                "2",
                "--no-record",
            ]
        )
    (line,) = [json.loads(text) for text in out.getvalue().splitlines() if text.startswith("{")]
    figures = line["figures"]
    assert line["name"] == "batch" and "pass" in line
    assert figures["jobs_batched"] == 3  # all three rode one call
    assert figures["max_pixel_diff"] <= batch.MAX_PIXEL_DIFF
    assert figures["throughput_batched_jobs_per_s"] > 0 and figures["throughput_alone_jobs_per_s"] > 0
    assert figures["latency_alone_p95_ms"] >= figures["latency_alone_p50_ms"] > 0
    after = (
        (common.RESULTS_DIR / "batch.jsonl").read_bytes()
        if (common.RESULTS_DIR / "batch.jsonl").exists()
        else b""
    )
    assert before == after  # --no-record leaves the recorded figures alone
