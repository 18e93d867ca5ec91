"""Simulated GPU workers for `python -m bench fleet`: the real arq worker path on a sleeping "GPU".

Each simulated worker is :func:`generation.worker.build_worker` with a real
:class:`generation.worker_runtime.WorkerRuntime`, :class:`generation.runner.Runner` and GPU thread;
only the pipeline manager is :class:`SleepManager`, whose ``run`` sleeps ``step_s`` per denoising
step (reporting each step, as a pipeline does) and returns a tiny picture for the real encoder.
Nothing here imports torch or diffusers, so one process can host many workers.

``python -m bench.fleet_sim --queue-url URL --first 0 --count 16`` runs ``count`` workers on one
event loop until killed, appending one line per job ``worker prompt t_start t_end`` (wall clock)
to ``--log`` so that the bench can measure the devices' busy time and the gaps between jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from generation import failures
from generation.errors import GenerationCancelled
from generation.outputs import GenerationOutput, StepInfo
from generation.params import GenerationRequest
from generation.scaleout import ScaleoutSettings
from generation.worker import build_worker
from generation.worker_runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: the one model every simulated job names (the bot validates requests against its catalog)
MODEL = "tiny-image"


class SleepManager:
    """A pipeline manager whose device time is ``steps x step_s`` of sleep."""

    def __init__(self, *, step_s: float, worker: str, log_file: TextIO | None, lock: threading.Lock) -> None:
        self.step_s = step_s
        self.worker = worker
        self.settings: Any = None
        self.registry: dict[str, Any] = {}
        self._loaded: set[str] = set()
        self._log = log_file
        self._lock = lock

    def load(self, model_id: str) -> None:
        self._loaded.add(model_id)

    def loaded_models(self) -> list[str]:
        return sorted(self._loaded)

    def memory_mode(self, model_id: str) -> str:
        return "full"

    def downgrade_memory(self, model_id: str) -> str | None:
        return None

    def device_info(self) -> dict[str, Any]:
        return {"device": "sim", "gpu": "sleep", "tuning": {"summary": "simulated"}}

    def close(self) -> None:
        self._loaded.clear()

    def run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[StepInfo], None],
        should_cancel: Callable[[], bool],
    ) -> GenerationOutput:
        t0 = time.time()
        # sleeping to an absolute deadline keeps the job's length exact however late a wake-up is
        for step in range(1, request.steps + 1):
            if should_cancel():
                raise GenerationCancelled(failures.CANCELLED_AT_STEP.format(step=step, total=request.steps))
            time.sleep(max(0.0, t0 + step * self.step_s - time.time()))
            on_step(StepInfo(step=step, total=request.steps))
        t1 = time.time()
        if self._log is not None:
            with self._lock:
                self._log.write(f"{self.worker}\t{request.prompt}\t{t0:.6f}\t{t1:.6f}\n")
                self._log.flush()
        return GenerationOutput(
            kind="image",
            request=request,
            images=[Image.new("RGB", (8, 8), (40, 80, 120))],
            frames=None,
            timings={"load_s": 0.0, "denoise_s": t1 - t0, "decode_s": 0.0, "total_s": t1 - t0},
            device="sim",
        )


def simulated_settings(queue_url: str, name: str, **overrides: Any) -> ScaleoutSettings:
    """A worker's settings with no `.env` and no model on disk (the catalog is only read)."""
    values: dict[str, Any] = {
        "queue_url": queue_url,
        "worker_name": name,
        "device": "cpu",
        "image_model": MODEL,
        "video_model": "tiny-video",
        "safety_checker": False,
        "preview_every_steps": 0,
        "hf_offline": True,
        **overrides,
    }
    return ScaleoutSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def serve(queue_url: str, first: int, count: int, step_s: float, log_path: Path | None) -> None:
    """Run `count` simulated workers on this loop until the process is killed."""
    lock = threading.Lock()
    out = log_path.open("a", encoding="utf-8") if log_path is not None else None
    workers = []
    for n in range(first, first + count):
        name = f"sim{n}"
        settings = simulated_settings(queue_url, name)
        runtime = WorkerRuntime(
            settings=settings,
            manager_factory=lambda name=name: SleepManager(  # type: ignore[misc]
                step_s=step_s, worker=name, log_file=out, lock=lock
            ),
            preload=(MODEL,),
        )
        worker = build_worker(settings, runtime=runtime)
        workers.append(worker)
    await asyncio.gather(*(w.async_run() for w in workers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_sim")
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.queue_url, args.first, args.count, args.step_s, args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
