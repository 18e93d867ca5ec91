"""What every benchmark shares: machine facts, repeated side-by-side timing, the result line.

Each benchmark module exposes `run(args: list[str]) -> dict` returning its figures; this
module adds the machine facts, prints the one JSON line and appends it to bench/results/.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return facts


def median_time(fn: Callable[[], object], repeats: int = 5) -> tuple[float, list[float]]:
    """Median wall time of `fn` over `repeats` runs (these machines are noisy)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median times of several variants run alternately, so drift hits them all alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def emit(
    name: str, figures: dict[str, Any], *, passed: bool | None, target: str | None, record: bool = True
) -> dict[str, Any]:
    """Print the benchmark's JSON line and (with `record`) append it to bench/results/<name>.jsonl."""
    line = {
        "name": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "figures": figures,
        "target": target,
        "pass": passed,
        "machine": machine_facts(),
    }
    text = json.dumps(line, sort_keys=False, default=str)
    print(text, flush=True)
    if not record:
        return line
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with (RESULTS_DIR / f"{name}.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return line
