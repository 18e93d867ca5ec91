"""`python -m bench batch`: cross-member batching through the real queue and worker, on CPU.

N tiny-image jobs with the same model and shape, one from each of N members, arrive while a
tiny-video job holds the worker; when it frees up they run as batches of `--batch-max`, and, in
the same run, again with BATCH_MAX_IMAGES=1 (one call each). Figures: throughput of the N jobs
(first start to last delivery) both ways and their ratio, each job's latency (submitted to
delivered) p50/p95 both ways, and the largest pixel difference between a member's picture made
batched and alone (same seed).

Target: every picture within 2/255 of its alone twin, and batching no slower than one call per
job (throughput ratio >= 1). On a CPU the tiny UNet is compute-bound already at batch 1, so the
gain is small; a GPU that one 512x512 image leaves mostly idle gains far more.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import emit
from bench.queue import percentiles, started_queue, video_job
from bot.core.jobs import Job

log = logging.getLogger(__name__)

MAX_PIXEL_DIFF = 2
TARGET_RATIO = 1.0


def image_job(user: str, *, n: int, steps: int, size: int) -> Job:
    params = {
        "kind": "image",
        "model": "tiny-image",
        "prompt": f"a lighthouse in a storm, by member {n}",
        "negative_prompt": None,
        "seed": 1000 + n,
        "steps": steps,
        "guidance": 7.5,
        "width": size,
        "height": size,
    }
    return Job(
        kind="image",
        model="tiny-image",
        prompt=params["prompt"],
        params=params,
        user_id=user,
        user_name=user,
        channel_id="c1",
        seed=params["seed"],
    )


async def _one_mode(args: argparse.Namespace, batch_max: int) -> dict[str, Any]:
    """Run the N jobs behind a blocker with BATCH_MAX_IMAGES=`batch_max`; times and pictures."""
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as name:
        async with started_queue(
            Path(name), preload=("tiny-image", "tiny-video"), batch_max_images=batch_max
        ) as (queue, delivery):
            delivery.expected = 1
            await queue.submit(image_job("warmup", n=999, steps=args.steps, size=args.size))
            await asyncio.wait_for(delivery.all_done.wait(), timeout=120)
            delivery.all_done.clear()
            delivery.expected = 2 + args.jobs
            await queue.submit(video_job("blocker", steps=args.blocker_steps, frames=8))
            submitted: dict[str, float] = {}
            for n in range(args.jobs):
                job = (await queue.submit(image_job(f"member{n}", n=n, steps=args.steps, size=args.size))).job
                submitted[job.id] = time.perf_counter()
            await asyncio.wait_for(delivery.all_done.wait(), timeout=60 + args.jobs * 30)
            jobs = [delivery.jobs[i] for i in submitted]
            failed = [j.error for j in jobs if j.state.value != "complete"]
            if failed:
                raise RuntimeError(f"jobs failed: {failed}")
            first = min(delivery.started[i] for i in submitted)
            last = max(delivery.delivered[i] for i in submitted)
            return {
                "throughput": len(jobs) / (last - first),
                "latency": [delivery.delivered[i] - t for i, t in submitted.items()],
                "batched": sum(1 for j in jobs if j.timings.get("batch_size", 1) > 1),
                "pictures": [np.asarray(Image.open(j.result_path).convert("RGB"), dtype=int) for j in jobs],
            }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    batched = await _one_mode(args, args.batch_max)
    alone = await _one_mode(args, 1)
    diff = max(int(np.abs(a - b).max()) for a, b in zip(batched["pictures"], alone["pictures"], strict=True))
    lat_b, lat_a = percentiles(batched["latency"]), percentiles(alone["latency"])
    return {
        "jobs": args.jobs,
        "members": args.jobs,
        "batch_max": args.batch_max,
        "job_shape": f"tiny-image {args.size}x{args.size}, {args.steps} steps",
        "torch_threads": torch.get_num_threads(),
        "jobs_batched": batched["batched"],
        "throughput_batched_jobs_per_s": round(batched["throughput"], 3),
        "throughput_alone_jobs_per_s": round(alone["throughput"], 3),
        "throughput_ratio": round(batched["throughput"] / alone["throughput"], 3),
        "latency_batched_p50_ms": lat_b["p50_ms"],
        "latency_batched_p95_ms": lat_b["p95_ms"],
        "latency_alone_p50_ms": lat_a["p50_ms"],
        "latency_alone_p95_ms": lat_a["p95_ms"],
        "max_pixel_diff": diff,
    }


def main(argv: list[str]) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench batch")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--batch-max", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--blocker-steps", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--no-record", action="store_true", help="print the line, keep bench/results as is")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    figures = asyncio.run(_run(args))
    passed = (
        figures["max_pixel_diff"] <= MAX_PIXEL_DIFF
        and figures["jobs_batched"] > 0
        and figures["throughput_ratio"] >= TARGET_RATIO
    )
    target = f"max pixel diff <= {MAX_PIXEL_DIFF}/255, throughput ratio >= {TARGET_RATIO}"
    emit("batch", figures, passed=passed, target=target, record=not args.no_record)
    return passed
