"""Several members' requests in one pipeline call: each seed gives its picture alone or batched,
each member gets its own result and a 1/N share of the GPU time, and a member who cancels
leaves the batch without holding up the others."""

from __future__ import annotations

import io
import logging
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from generation.batching import batched_request, compatible_key
from generation.outputs import StepInfo
from generation.runner import RunItem, Runner, RunResult
from tests.generation.test_pipelines import image_request

log = logging.getLogger(__name__)

#: the documented tolerance: at most 2/255 per pixel on the tiny twins on CPU
MAX_PIXEL_DIFF = 2


class Collect:
    """The runner's callbacks, recorded; `wait(n)` blocks until n results came."""

    def __init__(self) -> None:
        self.results: dict[str, RunResult] = {}
        self.steps: dict[str, int] = {}
        self.started: list[str] = []
        self.cond = threading.Condition()
        self.on_step_hook = None

    def done(self, result: RunResult) -> None:
        with self.cond:
            self.results[result.key] = result
            self.cond.notify_all()

    def step(self, key: str, info: StepInfo) -> None:
        self.steps[key] = info.step
        if self.on_step_hook is not None:
            self.on_step_hook(key, info)

    def wait(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) >= n, timeout=120)


@pytest.fixture
def runner_and_calls(pipeline_manager):
    calls = Collect()
    runner = Runner(
        manager=pipeline_manager,
        job_timeout_s=math.inf,
        step_watchdog_s=60,
        on_done=calls.done,
        on_step=calls.step,
        on_start=calls.started.append,
    )
    runner.start()
    assert runner.gpu.wait_ready(60)
    yield runner, calls
    runner.close()


def pixels(result: RunResult) -> np.ndarray:
    assert result.status == "complete" and result.encoded is not None, result.error
    return np.asarray(Image.open(io.BytesIO(result.encoded.data)).convert("RGB"), dtype=int)


def test_each_members_seed_gives_the_same_picture_batched_or_alone(runner_and_calls, tiny_registry):
    runner, calls = runner_and_calls
    prompts = ["a red fox", "a blue whale", "a green frog"]
    requests = [image_request(tiny_registry, prompt=p, seed=10 + i) for i, p in enumerate(prompts)]
    key = runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
    assert key == "batch:m0"
    calls.wait(3)
    batched = {k: pixels(r) for k, r in calls.results.items()}
    assert {r.report.batch_size for r in calls.results.values()} == {3}
    assert calls.results["m1"].report.timings()["batch_size"] == 3.0
    # every member heard its own start and progress
    assert sorted(calls.started) == ["m0", "m1", "m2"]
    assert calls.steps == {"m0": 2, "m1": 2, "m2": 2}
    calls.results.clear()
    for i, request in enumerate(requests):
        runner.submit(RunItem(key=f"alone{i}", request=request))
        calls.wait(1)
        alone = pixels(calls.results.pop(f"alone{i}"))
        assert np.abs(batched[f"m{i}"] - alone).max() <= MAX_PIXEL_DIFF
    assert np.abs(batched["m0"] - batched["m1"]).mean() > 1  # different prompts, different pictures


def test_each_member_is_charged_a_share_of_the_call(runner_and_calls, tiny_registry):
    runner, calls = runner_and_calls
    requests = [image_request(tiny_registry, seed=s) for s in (1, 2)]
    runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
    calls.wait(2)
    a, b = calls.results["m0"].report, calls.results["m1"].report
    assert a.gpu_seconds == b.gpu_seconds > 0
    assert a.batch_size == b.batch_size == 2


def test_a_member_cancelled_during_the_call_leaves_without_delaying_the_others(
    runner_and_calls, tiny_registry
):
    runner, calls = runner_and_calls
    cancelled = threading.Event()

    def cancel_at_first_step(key: str, info: StepInfo) -> None:
        if key == "m1" and not cancelled.is_set():
            cancelled.set()
            assert runner.cancel("m1")

    calls.on_step_hook = cancel_at_first_step
    requests = [image_request(tiny_registry, seed=s, steps=3) for s in (1, 2, 3)]
    runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
    calls.wait(3)
    assert calls.results["m1"].status == "cancelled"
    assert calls.results["m0"].status == calls.results["m2"].status == "complete"
    # the cancelled member heard nothing after it left; the others ran to the last step
    assert calls.steps["m1"] == 1 and calls.steps["m0"] == calls.steps["m2"] == 3
    assert not runner.cancel("m1")


def test_cancelling_every_member_stops_the_call(runner_and_calls, tiny_registry):
    runner, calls = runner_and_calls

    def cancel_all(key: str, info: StepInfo) -> None:
        if info.step == 1:
            runner.cancel(key)

    calls.on_step_hook = cancel_all
    requests = [image_request(tiny_registry, seed=s, steps=50) for s in (1, 2)]
    runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
    calls.wait(2)
    assert {r.status for r in calls.results.values()} == {"cancelled"}
    # the GPU stopped the call itself: the next run starts and ends
    calls.on_step_hook = None
    runner.submit(RunItem(key="next", request=image_request(tiny_registry)))
    calls.wait(3)
    assert calls.results["next"].status == "complete"
    assert max(calls.steps.get(k, 0) for k in ("m0", "m1")) < 50


def test_what_may_share_a_call(tiny_registry):
    base = {"steps": 2, "width": 64, "height": 64, "guidance": 7.0}
    same = compatible_key("image", "tiny-image", {**base, "prompt": "a", "seed": 1})
    assert same == compatible_key("image", "tiny-image", {**base, "prompt": "b", "seed": 9, "count": 2})
    assert same != compatible_key("image", "tiny-image", {**base, "steps": 3})
    assert same != compatible_key("image", "other", base)
    assert compatible_key("video", "tiny-video", {**base, "image": "abc"}) is None
    with pytest.raises(ValueError, match="share"):
        batched_request([image_request(tiny_registry), image_request(tiny_registry, width=48)])


def test_a_batch_out_of_memory_runs_again_as_halves_in_the_same_memory_mode(
    runner_and_calls, tiny_registry, pipeline_manager
):
    runner, calls = runner_and_calls
    budget = {"ooms": 1}

    def oom(info: StepInfo) -> None:
        if budget["ooms"] > 0:
            budget["ooms"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    mode = pipeline_manager.memory_mode("tiny-image")
    pipeline_manager.step_hooks.append(oom)
    try:
        requests = [image_request(tiny_registry, seed=s) for s in (1, 2, 3)]
        runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
        calls.wait(3)
    finally:
        pipeline_manager.step_hooks.remove(oom)
    assert budget["ooms"] == 0
    assert {r.status for r in calls.results.values()} == {"complete"}
    assert pipeline_manager.memory_mode("tiny-image") == mode  # split first, no leaner mode
    assert all(r.report.oom_retries == 0 and r.report.batch_size == 3 for r in calls.results.values())
    split = {k: pixels(r) for k, r in calls.results.items()}
    calls.results.clear()
    runner.submit(RunItem(key="alone", request=requests[2]))
    calls.wait(1)
    assert np.abs(split["m2"] - pixels(calls.results["alone"])).max() <= MAX_PIXEL_DIFF


def test_a_member_cancelled_before_the_call_ends_at_once_and_the_rest_run(
    runner_and_calls, tiny_registry, pipeline_manager
):
    runner, calls = runner_and_calls
    entered, opened = threading.Event(), threading.Event()

    def hold_the_first_run(info: StepInfo) -> None:
        if info.total == 4 and not entered.is_set():
            entered.set()
            opened.wait(30)

    pipeline_manager.step_hooks.append(hold_the_first_run)
    try:
        runner.submit(RunItem(key="ahead", request=image_request(tiny_registry, steps=4)))
        assert entered.wait(30)
        requests = [image_request(tiny_registry, seed=s) for s in (1, 2, 3)]
        runner.submit_batch([RunItem(key=f"m{i}", request=r) for i, r in enumerate(requests)])
        assert runner.cancel("m1")  # the batch waits behind "ahead": its call has not begun
        calls.wait(1)
        assert calls.results["m1"].status == "cancelled" and "ahead" not in calls.results
    finally:
        opened.set()
        pipeline_manager.step_hooks.remove(hold_the_first_run)
    calls.wait(4)
    assert calls.results["m0"].status == calls.results["m2"].status == "complete"
    assert "m1" not in calls.started and "m1" not in calls.steps
