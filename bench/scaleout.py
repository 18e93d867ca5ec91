"""`python -m bench scaleout`: the same tiny-video burst in-process, on 1 and on 2 arq workers.

A real `redis-server` (random port, no persistence) and `python -m generation.worker` processes,
each pinned to one core (`--cores`) with one torch thread. Three runs of `--jobs` jobs from four
members, with the bot's JobQueue on a SQLite file and a listener that reads each result file as
the Discord delivery does:

- ``inprocess``: the embedded default, the bench process pinned to the first core;
- ``arq_1``: one worker on the first core, the bot elsewhere;
- ``arq_2``: two workers, one per core.

Throughput counts from the first job's start to the last job's delivery (as `bench burst`).
Per-job overhead of the distributed path: the median gap between one job's end on the GPU and the
next job's start on the same worker (``start(k+1) - start(k) - gpu(k)``, the time the device
waits for the next job), on one worker, minus the same median in-process. ``latency_*`` adds the
end-to-end view for jobs sent one at a time (submit to delivery, median), not judged.

Targets: throughput of 2 workers >= 1.8 x that of 1 worker; overhead < 50 ms median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from bench.common import emit
from bench.queue import BENCH_MODEL_CACHE, DeliveryLike, bench_settings, started_queue, video_job
from bench.redis_server import free_port, start_redis
from bot.core.jobs import Job
from bot.core.queue import JobQueue

log = logging.getLogger(__name__)

TARGET_RATIO = 1.8
TARGET_OVERHEAD_MS = 50.0
ROOT = Path(__file__).resolve().parents[1]


class Cluster:
    """redis-server plus pinned worker processes, all stopped on exit."""

    def __init__(self, tmp: Path, cores: list[int]) -> None:
        self.tmp = tmp
        self.cores = cores
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_redis(self) -> None:
        self.procs.append(start_redis(self.port, self.tmp))

    def start_worker(self, n: int) -> None:
        core = self.cores[n % len(self.cores)]
        env = {
            **os.environ,
            "QUEUE_URL": self.url,
            "MODEL_CACHE_DIR": str(BENCH_MODEL_CACHE),
            "DEVICE": "cpu",
            "DTYPE": "fp32",
            "HF_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "IMAGE_MODEL": "tiny-video",
            "VIDEO_MODEL": "tiny-video",
            "SAFETY_CHECKER": "false",
            "EXTRA_MODELS": "{}",
            "PREVIEW_EVERY_STEPS": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        }
        log_file = (self.tmp / f"worker{n}.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "generation.worker", "--name", f"bench{n}"],
                cwd=self.tmp,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.sched_setaffinity(0, {core}),
            )
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def bot_queue(tmp: Path, name: str, **overrides: Any) -> AsyncIterator[tuple[JobQueue, DeliveryLike]]:
    folder = tmp / name
    folder.mkdir()
    async with started_queue(folder, **overrides) as started:
        yield started


async def _wait_workers(queue: JobQueue, n: int, within_s: float = 180.0) -> None:
    deadline = time.monotonic() + within_s
    while len(queue.workers()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(queue.workers())} of {n} workers joined")
        await asyncio.sleep(0.1)


async def _submit_and_wait(
    queue: JobQueue, delivery: DeliveryLike, jobs: list[Job], timeout_s: float
) -> list[str]:
    delivery.all_done.clear()
    delivery.expected = len(delivery.delivered) + len(jobs)
    ids = [(await queue.submit(job)).job.id for job in jobs]
    await asyncio.wait_for(delivery.all_done.wait(), timeout=timeout_s)
    return ids


async def _burst(
    queue: JobQueue, delivery: DeliveryLike, args: argparse.Namespace, workers: int, tag: str
) -> dict[str, Any]:
    shape = {"steps": args.steps, "frames": args.frames}
    await _submit_and_wait(
        queue, delivery, [video_job(f"warm{n}", n=900 + n, **shape) for n in range(2 * workers)], 300
    )
    jobs = [video_job(f"user{n % 4}", n=n, **shape) for n in range(args.jobs)]
    cpu0 = time.process_time()
    ids = await _submit_and_wait(queue, delivery, jobs, args.jobs * 60)
    done = [delivery.jobs[i] for i in ids]
    bad = [j.error for j in done if j.state.value != "complete"]
    if bad:
        raise RuntimeError(f"{tag}: {len(bad)} job(s) did not complete: {bad[:3]}")
    first_start = min(delivery.started[i] for i in ids)
    wall = max(delivery.delivered[i] for i in ids) - first_start
    gpu = {j.id: j.gpu_seconds or 0.0 for j in done}
    order = sorted(ids, key=lambda i: delivery.started[i])
    gaps = [delivery.started[b] - delivery.started[a] - gpu[a] for a, b in itertools.pairwise(order)]
    busy_cpu = time.process_time() - cpu0
    figures = {
        "wall_s": round(wall, 3),
        "throughput_jobs_per_s": round(len(ids) / wall, 4),
        "gpu_s_per_job": round(statistics.fmean(gpu.values()), 4),
        # CPU the bot process itself spent per job (scheduler, store, transfer, delivery)
        "bot_cpu_ms_per_job": round(busy_cpu / len(ids) * 1000, 2),
    }
    if workers == 1:
        figures["gap_ms_median"] = round(statistics.median(gaps) * 1000, 2)
    return figures


async def _redis_cpu(queue: JobQueue) -> float:
    redis = getattr(queue.executor, "redis", None)
    if redis is None:
        return 0.0
    info = await redis.info("cpu")
    return round(float(info.get("used_cpu_sys", 0)) + float(info.get("used_cpu_user", 0)), 3)


async def _latency(queue: JobQueue, delivery: DeliveryLike, args: argparse.Namespace) -> float:
    """Median submit-to-delivered seconds of jobs sent one at a time."""
    samples = []
    for n in range(args.latency_jobs):
        t0 = time.perf_counter()
        (job_id,) = await _submit_and_wait(
            queue, delivery, [video_job("solo", n=500 + n, steps=args.steps, frames=args.frames)], 120
        )
        samples.append(delivery.delivered[job_id] - t0)
    return statistics.median(samples)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from generation.pipelines import PipelineManager

    cores = [int(c) for c in args.cores.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        manager = PipelineManager(bench_settings(tmp))  # builds the twins once for every process
        manager.load("tiny-video")
        manager.close()
        cluster = Cluster(tmp, cores)
        figures: dict[str, Any] = {
            "jobs": args.jobs,
            "job_shape": f"tiny-video 64x64, {args.frames} frames, {args.steps} steps",
            "cores": cores,
        }
        try:
            everywhere = os.sched_getaffinity(0)
            figures["cores_available"] = len(everywhere)
            os.sched_setaffinity(0, {cores[0]})
            try:
                async with bot_queue(tmp, "inprocess") as (queue, delivery):
                    figures["inprocess"] = await _burst(queue, delivery, args, 1, "inprocess")
                    inproc_latency = await _latency(queue, delivery, args)
            finally:
                os.sched_setaffinity(0, everywhere)
            cluster.start_redis()
            cluster.start_worker(0)
            arq = {"queue_url": cluster.url}
            spare = everywhere - set(cores)
            if spare:  # the bot (and what it spawns from now on) stays off the workers' cores
                os.sched_setaffinity(0, spare)
            async with bot_queue(tmp, "arq1", **arq) as (queue, delivery):
                await _wait_workers(queue, 1)
                figures["arq_1"] = await _burst(queue, delivery, args, 1, "arq_1")
                arq_latency = await _latency(queue, delivery, args)
            cluster.start_worker(1)
            async with bot_queue(tmp, "arq2", **arq) as (queue, delivery):
                await _wait_workers(queue, 2)
                figures["arq_2"] = await _burst(queue, delivery, args, 2, "arq_2")
                figures["redis_cpu_s"] = await _redis_cpu(queue)
        finally:
            cluster.stop()
    one, two = figures["arq_1"], figures["arq_2"]
    figures["ratio_2_over_1"] = round(two["throughput_jobs_per_s"] / one["throughput_jobs_per_s"], 3)
    # the same ratio per second of compute: how well two workers were kept busy, whatever the
    # machine's other load did to the speed of each job
    figures["ratio_per_compute_s"] = round(
        (two["throughput_jobs_per_s"] * two["gpu_s_per_job"])
        / (one["throughput_jobs_per_s"] * one["gpu_s_per_job"]),
        3,
    )
    figures["overhead_ms_median"] = round(one["gap_ms_median"] - figures["inprocess"]["gap_ms_median"], 2)
    figures["latency_inprocess_s"] = round(inproc_latency, 4)
    figures["latency_arq_s"] = round(arq_latency, 4)
    figures["latency_overhead_ms"] = round((arq_latency - inproc_latency) * 1000, 2)
    figures["torch_threads"] = 1
    return figures


def main(argv: list[str]) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench scaleout")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latency-jobs", type=int, default=7)
    parser.add_argument("--cores", default=_default_cores(), help="two CPU cores for the workers, e.g. 0,1")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    figures = asyncio.run(_run(args))
    passed = figures["ratio_2_over_1"] >= TARGET_RATIO and figures["overhead_ms_median"] < TARGET_OVERHEAD_MS
    target = (
        f"throughput(2 workers) >= {TARGET_RATIO} x throughput(1 worker); "
        f"per-job overhead over in-process < {TARGET_OVERHEAD_MS:g} ms median"
    )
    emit("scaleout", figures, passed=passed, target=target)
    return passed


def _default_cores() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:2])
