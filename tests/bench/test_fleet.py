"""`python -m bench fleet` in a tiny configuration: the real queue, store, arq executor and Redis
against two simulated workers, so that the bench keeps working between full runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common, fleet

ROOT = Path(__file__).resolve().parents[2]


def test_fleet_bench_tiny_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    argv = ["--workers", "2", "--jobs", "12", "--members", "3", "--steps", "4", "--step-s", "0.05",
            "--sweep", "1", "--sweep-rounds", "3"]  # fmt: skip
    verdict = fleet.main(argv)
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert line["name"] == "fleet"
    assert line["pass"] is verdict
    main = line["figures"]["main"]
    assert (main["workers"], main["jobs"], main["members"]) == (2, 12, 3)
    assert 0 < main["utilisation"] <= 1.0
    assert main["dispatch_rate_jobs_per_s"] > 0
    assert main["sched_latency_p95_ms"] is not None and main["sched_latency_p95_ms"] >= 0
    assert main["bot_cpu_ms_per_job"] > 0
    # each member queued 4 jobs in one go, member after member: served first come first served,
    # the first half of the starts would be 4, 2 and 0 (Jain 0.6); the fair order serves 2, 2, 2
    # (one swap at the half-way mark, where two workers start within a poll, still gives 0.86)
    assert main["jain_first_half"] >= 0.85
    (sweep,) = line["figures"]["sweep"]
    assert (sweep["workers"], sweep["jobs"]) == (1, 3)
    assert (tmp_path / "fleet.jsonl").read_text().strip() == json.dumps(line)


def test_simulated_workers_do_not_load_torch() -> None:
    code = "import sys, bench.fleet_sim; sys.exit(any(m in sys.modules for m in ('torch', 'diffusers')))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=120).returncode == 0
