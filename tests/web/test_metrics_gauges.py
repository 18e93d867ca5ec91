"""Gauges that mirror the queue count every GPU worker, not just one."""

from __future__ import annotations

import logging

from bot.core import metrics

log = logging.getLogger(__name__)


def test_running_gauge_counts_each_job_on_a_gpu_and_not_the_ones_only_encoding() -> None:
    snapshot = {
        "queued": [],
        "running": {"kind": "video"},
        "active": [{"phase": "running"}, {"phase": "running"}, {"phase": "finishing"}],
        "paused": False,
    }
    metrics.refresh_from_state(snapshot=snapshot, store=None, busy=None)
    assert metrics.QUEUE_RUNNING._value.get() == 2
    metrics.refresh_from_state(snapshot={**snapshot, "active": [], "running": None}, store=None, busy=None)
    assert metrics.QUEUE_RUNNING._value.get() == 0
