"""Every Prometheus series the project exports, in one dedicated registry.

The collectors live in their own :data:`REGISTRY` (not prometheus-client's global one), so
tests that build several apps, or import modules twice, never hit "Duplicated timeseries".
Other modules import the collectors and update them where the event happens:

* the queue's metrics listener (:class:`QueueMetrics`, registered by the web app) counts
  finished jobs, observes queue wait and GPU seconds, and tracks how busy the worker is;
* the generation worker calls ``OOM_RETRIES.labels(model=...).inc()`` when it retries a job
  after CUDA ran out of memory;
* Discord delivery calls ``DELIVERY_FALLBACKS.labels(kind="reencode" | "link").inc()`` and
  sets ``DISCORD_LATENCY`` (or ``DISCORD_LATENCY.set_function(lambda: bot.latency)``);
* gauges that mirror current state (queue depth, store buffer) are refreshed by
  :func:`refresh_from_state` right before each scrape, so they are never stale.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from generation.phases import JobPhase

log = logging.getLogger(__name__)

#: the registry `/metrics` exposes; nothing is registered in prometheus-client's global one
REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

KINDS = ("image", "video", "upscale")
FINAL_STATES = ("complete", "failed", "cancelled")

# Queue waits range from ~0 (idle worker) to tens of minutes (a long video queue).
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600)
# GPU time per job: tiny models take well under a second, a 64-frame video several minutes.
GPU_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900)

QUEUE_DEPTH = Gauge(
    "imagine_queue_depth",
    "Jobs waiting in the queue (not yet started), by kind.",
    ["kind"],
    registry=REGISTRY,
)
QUEUE_RUNNING = Gauge(
    "imagine_queue_running",
    "Jobs on a GPU right now, over every worker (at most one per GPU).",
    registry=REGISTRY,
)
QUEUE_PAUSED = Gauge(
    "imagine_queue_paused",
    "1 while an admin has paused the queue, else 0.",
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "imagine_jobs_finished",
    "Jobs that reached a final state (complete, failed, cancelled), by kind, model and state.",
    ["kind", "model", "state"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "imagine_queue_wait_seconds",
    "Time from queued to started, by model and kind.",
    ["model", "kind"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
GPU_SECONDS = Histogram(
    "imagine_gpu_seconds",
    "GPU time a job used (generation only, not encoding), by model and kind.",
    ["model", "kind"],
    buckets=GPU_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "imagine_batch_size",
    "Jobs per pipeline call: 1 alone, more when members' compatible jobs shared one call.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
    registry=REGISTRY,
)
WORKER_BUSY_SECONDS = Counter(
    "imagine_worker_busy_seconds",
    "Seconds the GPU worker spent running jobs; rate() of this is the busy ratio over any window.",
    registry=REGISTRY,
)
WORKER_BUSY_RATIO = Gauge(
    "imagine_worker_busy_ratio",
    "Fraction of the last few minutes (see BusyTracker.window_s) the GPU worker was running a job.",
    registry=REGISTRY,
)
OOM_RETRIES = Counter(
    "imagine_oom_retries",
    "Jobs retried with a lighter memory strategy after CUDA ran out of memory, by model.",
    ["model"],
    registry=REGISTRY,
)
DELIVERY_FALLBACKS = Counter(
    "imagine_delivery_fallbacks",
    "Results that did not fit Discord's upload limit as made: kind=reencode (re-encoded to fit) "
    "or kind=link (delivered as a signed download link).",
    ["kind"],
    registry=REGISTRY,
)
STORE_BUFFER_SIZE = Gauge(
    "imagine_store_write_buffer_size",
    "Request-log writes held in memory while the store is unreachable.",
    registry=REGISTRY,
)
STORE_BUFFER_DROPPED = Gauge(
    "imagine_store_write_buffer_dropped",
    "Request-log writes dropped because the write buffer overflowed (since start).",
    registry=REGISTRY,
)
DISCORD_LATENCY = Gauge(
    "imagine_discord_latency_seconds",
    "Discord gateway heartbeat latency (discord.py's Client.latency).",
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "imagine_http_requests",
    "Requests to the web server, by route name, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
API_JOBS_SUBMITTED = Counter(
    "imagine_api_jobs_submitted",
    "Jobs submitted through the REST API, by API key name and kind.",
    ["key", "kind"],
    registry=REGISTRY,
)

# Label values known up front are created at import so that series exist (at 0) from the
# first scrape; dashboards and alerts then never see "no data" for a quiet kind.
for _kind in KINDS:
    QUEUE_DEPTH.labels(kind=_kind)
for _fallback in ("reencode", "link"):
    DELIVERY_FALLBACKS.labels(kind=_fallback)


class BusyTracker:
    """Busy ratio of the worker over a sliding window, from start/finish events.

    Kept as intervals rather than a sampled gauge so that a scrape in the middle of a long
    job still counts the part already run.
    """

    def __init__(self, *, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._intervals: deque[tuple[float, float]] = deque()
        self._running: dict[str, float] = {}
        self._born = clock()

    def started(self, job_id: str) -> None:
        self._running.setdefault(job_id, self._clock())

    def finished(self, job_id: str) -> float:
        """Close the job's interval; returns its busy seconds (0 if it never started here)."""
        start = self._running.pop(job_id, None)
        if start is None:
            return 0.0
        end = self._clock()
        self._intervals.append((start, end))
        self._trim(end)
        return end - start

    def ratio(self) -> float:
        now = self._clock()
        self._trim(now)
        begin = max(now - self.window_s, self._born)
        span = now - begin
        if span <= 0:
            return 1.0 if self._running else 0.0
        busy = sum(min(end, now) - max(start, begin) for start, end in self._intervals if end > begin)
        busy += sum(now - max(start, begin) for start in self._running.values())
        return max(0.0, min(1.0, busy / span))

    def _trim(self, now: float) -> None:
        while self._intervals and self._intervals[0][1] < now - self.window_s:
            self._intervals.popleft()


class QueueMetrics:
    """A queue listener that turns job events into the job series above.

    Register exactly one per queue (the web app does it on startup), else jobs would be
    counted twice.
    """

    def __init__(self, *, busy: BusyTracker | None = None) -> None:
        self.busy = busy or BusyTracker()

    async def on_queued(self, job: Any) -> None:
        return None

    async def on_started(self, job: Any) -> None:
        self.busy.started(job.id)
        if job.queue_wait_s is not None:
            QUEUE_WAIT.labels(model=job.model, kind=job.kind).observe(job.queue_wait_s)
        elif job.started_at is not None and job.created_at is not None:
            wait = (job.started_at - job.created_at).total_seconds()
            QUEUE_WAIT.labels(model=job.model, kind=job.kind).observe(max(0.0, wait))

    async def on_progress(self, job: Any, step: int, total: int, preview_png: bytes | None) -> None:
        return None

    async def on_finished(self, job: Any, result: Any) -> None:
        busy = self.busy.finished(job.id)
        if busy > 0:
            WORKER_BUSY_SECONDS.inc(busy)
        state = getattr(job.state, "value", str(job.state))
        JOBS_FINISHED.labels(kind=job.kind, model=job.model, state=state).inc()
        if job.gpu_seconds is not None:  # GPU time spent counts even for failed or cancelled jobs
            GPU_SECONDS.labels(model=job.model, kind=job.kind).observe(job.gpu_seconds)


def refresh_from_state(
    *,
    snapshot: Mapping[str, Any] | Any | None,
    store: Any | None,
    busy: BusyTracker | None,
) -> None:
    """Set the gauges that mirror current state; called right before each scrape."""
    if snapshot is not None:
        depth = dict.fromkeys(KINDS, 0)
        for job in _get(snapshot, "queued") or ():
            job = _get(job, "job") or job
            kind = _get(job, "kind")
            depth[kind] = depth.get(kind, 0) + 1
        for kind, n in depth.items():
            QUEUE_DEPTH.labels(kind=kind).set(n)
        # one entry per job a worker holds (several when scaled out); encoding ones leave the GPU free
        running = _get(snapshot, "running") or ()
        QUEUE_RUNNING.set(sum(1 for entry in running if _get(entry, "phase") != JobPhase.FINISHING))
        QUEUE_PAUSED.set(1 if _get(snapshot, "paused") else 0)
    if store is not None:
        size = getattr(store, "buffer_size", None)
        STORE_BUFFER_SIZE.set(size if isinstance(size, int | float) else 0)
        dropped = getattr(store, "dropped", None)
        if isinstance(dropped, int | float):
            STORE_BUFFER_DROPPED.set(dropped)
    if busy is not None:
        WORKER_BUSY_RATIO.set(busy.ratio())


def render() -> bytes:
    """The exposition text of :data:`REGISTRY`."""
    return generate_latest(REGISTRY)


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
