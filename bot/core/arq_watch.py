"""The arq executor's watch: worker heartbeats, lost workers and jobs Redis forgot.

Nothing here trusts one signal alone. Every ``sweep_s`` the executor re-reads the workers'
heartbeats and arq's keys of every job it handed over, so that:

- a worker that vanished (no heartbeat for ``heartbeat_ttl_s``) is noticed within
  ``WORKER_HEALTH_CHECK_S``; its job is taken back from arq and reported as
  ``Outcome(retryable=True)``, and the queue re-runs it once on another worker, with the
  attempt counted in the store;
- a job Redis forgot (a restart without persistence) is enqueued again under the same id, unless
  a live worker says it is still running it; verdicts wait until Redis has been reachable (the
  same server run) for a whole health-check interval, so a restart is not mistaken for deaths;
- a batch's companion (carried inside its lead's arq job) shares its lead's verdict while the
  lead is handed; one whose lead ended before any worker ran the batch goes back on its own, on
  the same try;
- a result whose ``done`` event was lost is still collected.

The live workers also feed /info and per-worker /metrics series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from bot.core.arq_handoff import REDIS_DOWN, ArqHandoff, HandedJob, as_int, as_text
from bot.core.executor import Outcome, WorkerInfo, call_sink
from bot.core.jobs import JobState
from generation import failures
from generation.phases import JobPhase
from generation.scaleout import BATCH_FIELD, decode_hash

log = logging.getLogger(__name__)


class WorkerWatch(ArqHandoff):
    """The sweep over workers and handed jobs, and the /metrics view of the workers."""

    def workers(self) -> list[WorkerInfo]:
        return [_worker_info(w) for w in self._workers.values()]

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            try:
                if self.redis is None:
                    await self._connect(retries=0)
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                self._redis_trouble(exc)
            except Exception:
                log.exception("arq executor sweep failed")

    async def _sweep(self) -> None:
        if self._sweep_lock.locked():
            return
        async with self._sweep_lock:
            await self._sweep_once()

    async def _sweep_once(self) -> None:
        redis = self._redis()
        now = time.monotonic()
        server = await redis.info("server")
        run_id = str(server.get("run_id") or "")
        if run_id != self._run_id:
            if self._run_id is not None:
                log.warning("Redis restarted (new server run); checking every handed job against it")
            self._run_id = run_id
            self._stable_since = now
            for h in self._handed.values():
                h.bad_since = None
        if self._stable_since is None:
            self._stable_since = now
        if self._redis_warned:
            log.info("Redis reachable again")
            self._redis_warned = False
        stable = now - self._stable_since >= self.settings.worker_health_check_s
        await self._read_workers(redis)
        holders = {
            arq_id: wid
            for wid, beat in self._workers.items()
            for arq_id in str(beat.get("jobs") or "").split(",")
            if arq_id
        }
        handed = [h for h in self._handed.values() if not h.collecting]
        if not handed:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for h in handed:
                carrier = h.lead or h.arq_id  # a batch's companion travels inside its lead's arq job
                pipe.exists(job_key_prefix + carrier)
                pipe.exists(result_key_prefix + h.arq_id)
                pipe.exists(in_progress_key_prefix + carrier)
                pipe.hget(self.keys.run(h.arq_id), "worker")
            answers = await pipe.execute()
        for i, h in enumerate(handed):
            queued, finished, in_progress, ran_on = answers[4 * i : 4 * i + 4]
            await self._check(
                h, bool(queued), bool(finished), bool(in_progress), as_text(ran_on), holders, stable
            )

    async def _check(
        self,
        h: HandedJob,
        queued: bool,
        finished: bool,
        in_progress: bool,
        ran_on: str | None,
        holders: dict[str, str],
        stable: bool,
    ) -> None:
        if self._handed.get(h.job.id) is not h or h.collecting:
            return
        if finished:
            self._spawn(self._collect(h), name=f"arq-collect-{h.job.id[:8]}")
            return
        if not h.in_redis:
            await self._enqueue(h)
            return
        if h.cancel and not h.cancel_sent:
            await self._send_cancel(h)
        holder = holders.get(h.arq_id)
        if holder is not None:
            h.bad_since = None
            if ran_on:  # a missed "started" event
                self._mark_running(h, ran_on)
            return
        worker = h.worker or ran_on
        if worker is not None and worker not in self._workers:
            if stable:
                await self._worker_lost(h, worker)
            return
        if queued and not in_progress:
            h.bad_since = None  # waiting in arq's queue for a free GPU
            return
        if h.lead is not None and h.lead in self._by_arq:
            h.bad_since = None  # a companion shares its lead's fate: re-enqueued or lost with it
            return
        now = time.monotonic()
        if h.bad_since is None:
            h.bad_since = now
        if not stable or now - h.bad_since < self.settings.heartbeat_ttl_s:
            return
        await self._unheld(h, in_progress=in_progress, ran_on=ran_on, worker=worker)

    async def _unheld(
        self, h: HandedJob, *, in_progress: bool, ran_on: str | None, worker: str | None
    ) -> None:
        """The verdict on a job neither waiting in arq, held by a live worker nor finished, for a
        whole heartbeat TTL of a stable Redis."""
        if h.lead is not None and not in_progress and not h.started_reported and ran_on is None:
            # its lead ended before any worker ran the batch (arq aborted it before start): nobody
            # ran this one, so it goes to arq on its own, on the same try
            log.warning("job %s: its batch's lead ended without it; handing it over alone", h.job.id)
            h.lead = None
            await self._hand_over_again(h)
            return
        if in_progress or h.lead is not None:
            # a worker took it (or its batch's lead ended without it) and no live worker holds it
            await self._worker_lost(h, worker or "unknown")
            return
        # Redis forgot the job and nobody is running it: the same dispatch goes back into arq
        log.warning("job %s: no longer in Redis (a restart?); handing it over again", h.job.id)
        await self._hand_over_again(h)

    async def _hand_over_again(self, h: HandedJob) -> None:
        """The same dispatch back into arq, with only those of its companions still waiting."""
        self.reenqueued += 1
        h.bad_since, h.in_redis, h.ending = None, False, False
        if h.phase != JobPhase.ENQUEUED:
            h.phase = JobPhase.ENQUEUED
        if BATCH_FIELD in h.payload:
            still = [c for c in h.payload[BATCH_FIELD] if c["arq_id"] in self._by_arq]
            h.payload[BATCH_FIELD] = still
            if not still:
                del h.payload[BATCH_FIELD]
        await self._enqueue(h)

    async def _worker_lost(self, h: HandedJob, worker: str) -> None:
        log.warning(
            "job %s: worker %s stopped (no heartbeat for %.1fs); the queue re-runs it",
            h.job.id,
            worker,
            self.settings.heartbeat_ttl_s,
        )
        with contextlib.suppress(*REDIS_DOWN):
            await self._purge(h.arq_id)
        await self._finish(
            h, Outcome(state=JobState.FAILED, retryable=True, error=failures.LOST, worker_id=worker)
        )

    async def _read_workers(self, redis: ArqRedis) -> None:
        ids = sorted(as_text(i) or "" for i in await redis.smembers(self.keys.workers))
        async with redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hgetall(self.keys.worker(wid))
            beats = await pipe.execute()
        live: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        for wid, raw in zip(ids, beats, strict=True):
            if raw:
                live[wid] = decode_hash(raw)
            else:
                gone.append(wid)
        for wid in gone:
            if wid in self._workers:
                self.workers_lost += 1
                log.warning("worker %s is gone (no heartbeat for %.1fs)", wid, self.settings.heartbeat_ttl_s)
        if gone:
            await redis.srem(self.keys.workers, *gone)
        for wid in live.keys() - self._workers.keys():
            log.info("worker %s joined (%s, %s)", wid, live[wid].get("host"), live[wid].get("gpu"))
        changed = live.keys() != self._workers.keys()
        self._workers = live
        if changed:
            call_sink(self._sink, "slot_free")

    # -- /metrics ----------------------------------------------------------------------------

    def _register_metrics(self) -> None:
        try:
            from bot.core import metrics

            collector = _WorkerCollector(self)
            metrics.REGISTRY.register(collector)
        except Exception:
            log.warning("per-worker metrics not registered", exc_info=True)
            return
        self._collector = collector

    def _unregister_metrics(self) -> None:
        if self._collector is None:
            return
        from bot.core import metrics

        with contextlib.suppress(KeyError):
            metrics.REGISTRY.unregister(self._collector)
        self._collector = None


class _WorkerCollector:
    """Per-worker series, read from the executor at scrape time (never stale)."""

    def __init__(self, executor: WorkerWatch) -> None:
        self.executor = executor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = self.executor.workers()
        live = GaugeMetricFamily("imagine_workers_live", "GPU workers with a fresh heartbeat.")
        live.add_metric([], len(workers))
        info = GaugeMetricFamily(
            "imagine_worker_info",
            "One series per live worker (value 1).",
            labels=["worker", "host", "device"],
        )
        busy = GaugeMetricFamily(
            "imagine_worker_busy", "1 while the worker's GPU runs a job.", labels=["worker"]
        )
        done = GaugeMetricFamily(
            "imagine_worker_jobs_done", "Jobs the worker finished since it started.", labels=["worker"]
        )
        beat = GaugeMetricFamily(
            "imagine_worker_last_heartbeat_seconds",
            "Unix time of the worker's last heartbeat.",
            labels=["worker"],
        )
        for w in workers:
            info.add_metric([w.id, w.host, w.device], 1)
            busy.add_metric([w.id], 1 if w.busy else 0)
            done.add_metric([w.id], w.jobs_done)
            if w.last_heartbeat is not None:
                beat.add_metric([w.id], w.last_heartbeat.timestamp())
        lost = CounterMetricFamily("imagine_workers_lost", "Workers declared lost (heartbeat expired).")
        lost.add_metric([], self.executor.workers_lost)
        yield from (live, info, busy, done, beat, lost)


def _worker_info(beat: dict[str, Any]) -> WorkerInfo:
    device, gpu = str(beat.get("device") or "?"), str(beat.get("gpu") or "")
    try:
        last = datetime.fromtimestamp(float(beat.get("beat_at") or 0), tz=UTC)
    except (TypeError, ValueError):
        last = None
    return WorkerInfo(
        id=str(beat.get("id") or "?"),
        host=str(beat.get("host") or "?"),
        device=f"{device} ({gpu})" if gpu and gpu != device else device,
        busy=str(beat.get("busy")) == "1",
        job_id=str(beat.get("job") or "") or None,
        jobs_done=as_int(beat.get("jobs_done")),
        last_heartbeat=last,
        alive=True,
        restarts=as_int(beat.get("restarts")),
        tuning=str(beat.get("tuning") or ""),
        batch_size=max(1, as_int(beat.get("batch"))),
    )
