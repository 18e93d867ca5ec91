"""The GPU thread on its own: one job running and at most one waiting; a hang hands the waiting
job to the fresh thread."""

from __future__ import annotations

import threading
import time

import pytest

from generation.gpu_thread import GPUBusy, GPUThread, WorkItem
from generation.models import ModelSpec, get_spec
from generation.outputs import StepInfo, WorkOutcome
from generation.params import validate_request
from generation.pipelines import PipelineManager
from generation.settings import GenerationSettings

pytestmark = pytest.mark.timeout(60)


def item(registry: dict[str, ModelSpec], job_id: str) -> WorkItem:
    spec = get_spec(registry, "tiny-image")
    request = validate_request("image", {"prompt": "a fox", "steps": 2, "width": 32, "height": 32}, spec)
    return WorkItem(job_id=job_id, request=request)


def test_a_waiting_job_survives_a_hung_thread(
    tiny_settings: GenerationSettings,
    tiny_registry: dict[str, ModelSpec],
    isolated_pipeline_manager: PipelineManager,
) -> None:
    release = threading.Event()
    hung = threading.Event()

    def hang_once(info: StepInfo) -> None:
        if not hung.is_set():
            hung.set()
            release.wait(20)

    isolated_pipeline_manager.step_hooks.append(hang_once)
    done: list[WorkOutcome] = []
    finished = threading.Event()

    def on_done(outcome: WorkOutcome) -> None:
        done.append(outcome)
        if len(done) == 2:
            finished.set()

    worker = GPUThread(
        manager=isolated_pipeline_manager,
        manager_factory=lambda: PipelineManager(tiny_settings, tiny_registry),
        job_timeout_s=30,
        step_watchdog_s=0.4,
        on_done=on_done,
    )
    worker.start()
    try:
        assert worker.wait_ready(20)
        worker.submit(item(tiny_registry, "stuck"))
        assert hung.wait(20)
        worker.submit(item(tiny_registry, "next"))  # waits behind the running one
        assert worker.has_waiting and worker.running_job_id == "stuck"
        with pytest.raises(GPUBusy):
            worker.submit(item(tiny_registry, "one too many"))
        assert finished.wait(30)
        by_id = {o.job_id: o for o in done}
        assert by_id["stuck"].status == "timeout"
        assert by_id["next"].status == "complete" and by_id["next"].output is not None
        assert by_id["next"].worker_id.endswith("-2")  # served by the fresh thread
        assert worker.restarts == 1 and not worker.busy
    finally:
        release.set()
        worker.close(5)
        time.sleep(0.05)
