"""`python -m bench fleet`: the bot's control plane against a fleet of simulated GPU workers.

The bot side is real and runs in this process: :class:`bot.core.queue.JobQueue` (fair order,
limits, attempts), a SQLite store and :class:`bot.core.arq_executor.ArqExecutor` on a real
`redis-server`, with a listener that reads every result file as the Discord delivery does. The
workers are real arq workers (:mod:`bench.fleet_sim`: `generation.worker`'s GatedWorker,
WorkerRuntime, Runner and GPU thread) whose "GPU" sleeps ``steps x step_s``; several share one
host process. Every job is queued before the first worker joins, member by member (a member's
whole batch, then the next member's: the order a FIFO queue would serve worst).

Figures, over the "backlog" window (every worker busy for the first time → the last job starts):

- ``dispatch_rate_jobs_per_s``: jobs started per second in the window;
- ``utilisation``: the devices' busy time in the window / (workers x window);
- ``sched_latency_p95_ms``: the device's side of scheduling: from a device's job ending to its
  next job starting, while jobs wait (whatever of the round trip to the bot, fair pick, store
  write, arq hand-over and poll is not hidden by the worker's early ``gpu_soon``, see
  :mod:`generation.gpu_forecast`);
- ``jain_first_half``: Jain's index over members' served counts among the first half of starts;
- ``bot_cpu_ms_per_job``: this process's CPU time from the first start to the last delivery,
  per job (``submit_cpu_ms_per_job``: queueing them, apart); ``hosts_cpu_ms_per_job`` and
  ``redis_cpu_ms_per_job`` the same for the simulated workers' processes and redis-server, which
  share the machine's cores with the bot.

The sweep repeats a shorter run at other worker counts: the first count whose utilisation falls
under the target is where the bot stops keeping up.

Target: 32 workers on 2 s jobs kept >= 95 % busy (that is >= 15.2 of the 16 jobs/s they can take)
and every worker count of the sweep up to 32 kept >= 95 % busy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import emit
from bench.queue import DeliveryLike, started_queue
from bench.redis_server import free_port, start_redis
from bot.core.jobs import Job
from bot.core.queue import JobQueue

ROOT = Path(__file__).resolve().parents[1]
TARGET_UTILISATION = 0.95
TARGET_WORKERS = 32


def image_job(member: int, n: int, steps: int) -> Job:
    prompt = f"fleet m{member} j{n}"
    params = {
        "kind": "image", "model": "tiny-image", "prompt": prompt, "negative_prompt": None, "seed": n,
        "steps": steps, "guidance": 7.0, "width": 64, "height": 64,
    }  # fmt: skip
    user = f"member{member}"
    return Job(
        kind="image", model="tiny-image", prompt=prompt, params=params,
        user_id=user, user_name=user, channel_id="c1", seed=n,
    )  # fmt: skip


class Fleet:
    """redis-server and the worker host processes, all stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.redis: subprocess.Popen[bytes] | None = None
        self.hosts: list[subprocess.Popen[bytes]] = []

    def start_redis(self) -> None:
        self.redis = start_redis(self.port, self.tmp)

    def start_workers(self, count: int, per_host: int, step_s: float, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for first in range(0, count, per_host):
            args = [sys.executable, "-m", "bench.fleet_sim", "--queue-url", self.url, "--first", str(first),
                    "--count", str(min(per_host, count - first)), "--step-s", str(step_s),
                    "--log", str(log)]  # fmt: skip
            with (self.tmp / f"host{first}.log").open("ab") as out:
                self.hosts.append(subprocess.Popen(args, cwd=self.tmp, env=env, stdout=out, stderr=out))

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds the worker hosts (together) and redis-server have used so far."""
        hosts = sum(_proc_cpu_s(p.pid) for p in self.hosts)
        return {"hosts": hosts, "redis": _proc_cpu_s(self.redis.pid) if self.redis is not None else 0.0}

    def stop_workers(self) -> None:
        for proc in self.hosts:  # the bench reads what the workers logged; nothing else is kept
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.hosts.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=10)


async def run_fleet(tmp: Path, *, workers: int, jobs: int, members: int, steps: int, step_s: float,
                    per_host: int) -> dict[str, Any]:  # fmt: skip
    """One run: queue `jobs`, start `workers`, wait for every delivery; the figures."""
    fleet = Fleet(tmp)
    (tmp / "bot").mkdir()
    log = tmp / "runs.tsv"
    try:
        fleet.start_redis()
        # one job per call: the bench measures dispatch of 2 s jobs, and its sleeping workers make
        # one output per call (cross-member batching is measured by `bench batch`)
        bot_side = started_queue(
            tmp / "bot", delivery_type=Delivery, queue_url=fleet.url, job_timeout_s=120.0, batch_max_images=1
        )
        async with bot_side as (queue, delivery):
            delivery.expected = jobs
            per_member = math.ceil(jobs / members)
            cpu0 = time.process_time()
            for k in range(jobs):
                await queue.submit(image_job(k // per_member, k, steps))
            submit_cpu = time.process_time() - cpu0
            fleet.start_workers(workers, per_host, step_s, log)
            timeout = 120 + jobs * steps * step_s / workers * 3
            await asyncio.wait_for(delivery.first_start.wait(), timeout=120)
            cpu1, others1 = time.process_time(), fleet.cpu_s()
            await asyncio.wait_for(delivery.all_done.wait(), timeout=timeout)
            run_cpu, others2 = time.process_time() - cpu1, fleet.cpu_s()
            states = Counter(j.state.value for j in delivery.jobs.values())
            errors = Counter(str(j.error)[:300] for j in delivery.jobs.values() if j.error)
        fleet.stop_workers()
    finally:
        fleet.stop()
    if states != {"complete": jobs}:
        raise RuntimeError(f"not every job completed: {dict(states)}; errors: {dict(errors)}")
    figures = analyse(log.read_text().splitlines(), workers)
    figures.update(
        workers=workers, jobs=jobs, members=members, job_s=round(steps * step_s, 3),
        bot_cpu_ms_per_job=round(run_cpu / jobs * 1000, 3),
        submit_cpu_ms_per_job=round(submit_cpu / jobs * 1000, 3),
        hosts_cpu_ms_per_job=round((others2["hosts"] - others1["hosts"]) / jobs * 1000, 3),
        redis_cpu_ms_per_job=round((others2["redis"] - others1["redis"]) / jobs * 1000, 3),
    )  # fmt: skip
    return figures


def _proc_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a live child process, from /proc (0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Delivery(DeliveryLike):
    """The bench's delivery, also saying when the first job started."""

    def __init__(self, queue: JobQueue) -> None:
        super().__init__(queue)
        self.first_start = asyncio.Event()

    async def on_started(self, job: Job) -> None:
        await super().on_started(job)
        self.first_start.set()


def analyse(lines: list[str], workers: int) -> dict[str, Any]:
    """Busy time, gaps and fairness from the workers' log (worker, prompt, start, end)."""
    runs = []
    for line in lines:
        worker, prompt, t0, t1 = line.split("\t")
        runs.append((worker, int(prompt.split()[1][1:]), float(t0), float(t1)))
    runs.sort(key=lambda r: r[2])
    first_by_worker: dict[str, float] = {}
    for worker, _m, t0, _t1 in runs:
        first_by_worker.setdefault(worker, t0)
    if len(first_by_worker) < workers:
        raise RuntimeError(f"only {len(first_by_worker)} of {workers} workers ran a job")
    start, end = max(first_by_worker.values()), runs[-1][2]
    window = max(end - start, 1e-9)
    busy = sum(max(0.0, min(t1, end) - max(t0, start)) for _w, _m, t0, t1 in runs)
    started = sum(1 for r in runs if start <= r[2] <= end)
    gaps = []
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for worker, _m, t0, t1 in runs:
        by_worker.setdefault(worker, []).append((t0, t1))
    for spans in by_worker.values():
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    gaps.sort()
    served = Counter(m for _w, m, _t0, _t1 in runs[: len(runs) // 2])
    members = {m for _w, m, _t0, _t1 in runs}
    counts = [served.get(m, 0) for m in members]
    jain = sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts)) if any(counts) else 0.0
    return {
        "window_s": round(window, 3),
        "dispatch_rate_jobs_per_s": round(started / window, 3),
        "utilisation": round(busy / (workers * window), 4),
        "sched_latency_p50_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
        "sched_latency_p95_ms": round(gaps[int(0.95 * (len(gaps) - 1))] * 1000, 1) if gaps else None,
        "jain_first_half": round(jain, 4),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        shape = {"steps": args.steps, "step_s": args.step_s, "per_host": args.per_host}
        figures["main"] = await run_fleet(
            tmp / "main", workers=args.workers, jobs=args.jobs, members=args.members, **shape
        )
        sweep = []
        for n in [int(w) for w in args.sweep.split(",") if w]:
            jobs = n * args.sweep_rounds
            sweep.append(
                await run_fleet(tmp / f"sweep{n}", workers=n, jobs=jobs, members=max(1, jobs // 10), **shape)
            )
        figures["sweep"] = sweep
    short = [s["workers"] for s in figures["sweep"] if s["utilisation"] < TARGET_UTILISATION]
    figures["keeps_up_until"] = (
        max((s["workers"] for s in figures["sweep"] if s["workers"] < min(short)), default=0)
        if short
        else f">= {max((s['workers'] for s in figures['sweep']), default=args.workers)}"
    )
    figures["cores_available"] = len(os.sched_getaffinity(0))
    return figures


def main(argv: list[str]) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench fleet")
    parser.add_argument("--workers", type=int, default=TARGET_WORKERS)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per job")
    parser.add_argument("--step-s", type=float, default=0.1, help="seconds of simulated GPU per step")
    parser.add_argument("--per-host", type=int, default=16, help="simulated workers per host process")
    parser.add_argument("--sweep", default="8,16,32,64,96,128", help="worker counts for the shorter runs")
    parser.add_argument("--sweep-rounds", type=int, default=8, help="jobs per worker in a sweep run")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the bot side here")
    args = parser.parse_args(argv)
    if args.profile is not None:
        import cProfile

        with cProfile.Profile() as profile:
            figures = asyncio.run(_run(args))
        profile.dump_stats(args.profile)
    else:
        figures = asyncio.run(_run(args))
    main_run = figures["main"]
    sweep_ok = all(
        s["utilisation"] >= TARGET_UTILISATION for s in figures["sweep"] if s["workers"] <= TARGET_WORKERS
    )
    passed = main_run["utilisation"] >= TARGET_UTILISATION and sweep_ok
    target = (
        f"{args.workers} workers on {args.steps * args.step_s:g} s jobs >= {TARGET_UTILISATION:.0%} busy "
        f"(>= {TARGET_UTILISATION * args.workers / (args.steps * args.step_s):g} jobs/s); "
        f"sweep runs up to {TARGET_WORKERS} workers likewise"
    )
    emit("fleet", figures, passed=passed, target=target)
    return passed
