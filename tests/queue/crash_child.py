"""A bot-shaped process for the crash test: a JobQueue on a SQLite file with the tiny video twin.

`python -m tests.queue.crash_child MODE --db … --results … --cache … --deliveries …`

- ``submit``: queue one slow job (a step hook sleeps), print progress lines, run until killed;
- ``resume``: start (recovering what the killed process left), deliver results, exit when the
  job has finished;
- ``idle``: start, wait a moment, stop; prints how many results it was offered.

Delivery is simulated the way the Discord delivery does it: append a line to the deliveries
file (the "post"), then `mark_delivered`. Lines on stdout are the parent's only signal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import torch

from bot.core.inprocess import InProcessExecutor
from bot.core.jobs import Job, JobState
from bot.core.queue import BaseJobListener, JobQueue, JobResult
from bot.core.store.sqlite import SQLiteStore
from bot.settings import Settings
from generation.models import build_registry, get_spec
from generation.outputs import StepInfo
from generation.params import validate_request
from generation.pipelines import PipelineManager
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)

STEP_DELAY_S = 0.05


def say(*words: object) -> None:
    print(*words, flush=True)  # the parent reads these lines


class Delivery(BaseJobListener):
    def __init__(self, queue: JobQueue, deliveries: Path) -> None:
        self.queue = queue
        self.deliveries = deliveries
        self.finished: asyncio.Queue[Job] = asyncio.Queue()

    async def on_started(self, job: Job) -> None:
        say("STARTED", job.id, job.attempts)

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None:
        say("STEP", step, total)

    async def on_finished(self, job: Job, result: JobResult | None) -> None:
        say("FINISHED", job.id, job.state.value)
        if job.state is JobState.COMPLETE and result is not None:
            line = f"{job.id} {result.path}\n"
            await asyncio.to_thread(_append, self.deliveries, line)
            await self.queue.mark_delivered(job.id, f"message-for-{job.id[:8]}")
        await self.finished.put(job)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)


async def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    tiny = make_tiny_settings(Path(args.cache))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            **tiny.model_dump(),
            "results_dir": args.results,
            "store_url": f"sqlite:///{args.db}",
            "progress_edit_interval_s": 0.0,
            "lease_s": 60.0,
            "daily_gpu_seconds_per_user": 0.0,
        },
    )
    registry = build_registry(settings)
    manager = PipelineManager(settings, registry)
    manager.step_hooks.append(lambda info: time.sleep(STEP_DELAY_S) if isinstance(info, StepInfo) else None)
    store = SQLiteStore(path=Path(args.db))
    await store.open()
    queue = JobQueue(
        settings=settings, store=store, executor=InProcessExecutor(settings=settings, manager=manager)
    )
    delivery = Delivery(queue, Path(args.deliveries))
    queue.add_listener(delivery)
    await queue.start()
    say("READY")
    try:
        if args.mode == "submit":
            spec = get_spec(registry, "tiny-video")
            request = validate_request(
                "video", {"prompt": "a slow storm", "steps": args.steps, "frames": 4, "seed": 3}, spec
            )
            job = Job(
                kind="video",
                model="tiny-video",
                prompt=request.prompt,
                params=request.to_dict(),
                user_id="alice",
                user_name="Alice",
                channel_id="c1",
            )
            submitted = await queue.submit(job)
            say("QUEUED", submitted.job.id)
            await asyncio.sleep(3600)  # until the parent kills us
        elif args.mode == "resume":
            job = await asyncio.wait_for(delivery.finished.get(), timeout=90)
            say("DONE", job.id, job.state.value)
        else:
            # start() made its offers before it returned; stop() hands listeners all it emitted
            await queue.stop(timeout_s=10)
            say("OFFERED", delivery.finished.qsize())
    finally:
        await queue.stop(timeout_s=10)
        await store.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["submit", "resume", "idle"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--deliveries", required=True)
    parser.add_argument("--steps", type=int, default=40)
    raise SystemExit(asyncio.run(main(parser.parse_args())))
