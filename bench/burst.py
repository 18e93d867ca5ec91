"""`python -m bench burst`: 20 tiny-video jobs at once; is the GPU ever idle waiting on delivery?

Twenty jobs from four members arrive together. Each job's GPU time is what the worker measured
around generation; if encoding (MP4 + poster, on the encode thread) and delivery (a listener
reading the file off the loop and recording the delivery) were not overlapped with the next
job's generation, each job would cost GPU time + encode + delivery and throughput would fall
below 1 / GPU time per job. Throughput is counted from the first job's start to the moment the
last job's result is delivered, so the one encode+delivery that nothing can hide (the last
job's) counts against us.

Target: throughput >= 0.95 x 1 / (mean GPU seconds per job). `steady_ratio` (start of the first
job to start of the last, over the GPU time of all but the last) shows the cadence without that
tail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import torch

from bench.common import emit
from bench.queue import tiny_video_queue, video_burst_args, video_job, warm_up

log = logging.getLogger(__name__)

TARGET_RATIO = 0.95


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    async with tiny_video_queue() as (queue, delivery):
        await warm_up(queue, delivery, args)
        ids = []
        for n in range(args.jobs):
            submitted = await queue.submit(
                video_job(f"user{n % 4}", steps=args.steps, frames=args.frames, n=n)
            )
            ids.append(submitted.job.id)
        await asyncio.wait_for(delivery.all_done.wait(), timeout=args.jobs * 60)
        first_start = min(delivery.started[i] for i in ids)
        last_start = max(delivery.started[i] for i in ids)
        last_delivered = max(delivery.delivered[i] for i in ids)
        jobs = [delivery.jobs[i] for i in ids]
        assert all(j.state.value == "complete" for j in jobs), [j.error for j in jobs if j.error]
        gpu = [j.gpu_seconds or 0.0 for j in jobs]
        encode = [j.timings.get("encode_s", 0.0) for j in jobs]
        gpu_per_job = sum(gpu) / len(gpu)
        wall = last_delivered - first_start
        throughput = len(jobs) / wall
        last = max(ids, key=lambda i: delivery.started[i])
        steady_gpu = sum(g for j, g in zip(jobs, gpu, strict=True) if j.id != last)
        return {
            "jobs": len(jobs),
            "job_shape": f"tiny-video 64x64, {args.frames} frames, {args.steps} steps",
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(wall, 3),
            "gpu_s_per_job": round(gpu_per_job, 4),
            "encode_s_per_job": round(sum(encode) / len(encode), 4),
            "throughput_jobs_per_s": round(throughput, 4),
            "ideal_jobs_per_s": round(1 / gpu_per_job, 4),
            "ratio": round(throughput * gpu_per_job, 4),
            "steady_ratio": round(steady_gpu / (last_start - first_start), 4),
            "tail_s": round(last_delivered - last_start - gpu[ids.index(last)], 4),
        }


def main(argv: list[str]) -> bool:
    args = video_burst_args("burst", argv)
    figures = asyncio.run(_run(args))
    passed = figures["ratio"] >= TARGET_RATIO
    emit("burst", figures, passed=passed, target=f"throughput >= {TARGET_RATIO} x 1 / (GPU seconds per job)")
    return passed
