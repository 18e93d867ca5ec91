"""The runner: what runs a request on the GPU. One validated request in; the encoded file, its
poster and a report (timings, memory modes, attempts) out.

Every way in uses it: the bot's in-process executor (:mod:`bot.core.executor`), the arq worker
process (``python -m generation.worker``) and the CLI (``python -m generation``). It owns

- the GPU thread (:mod:`generation.gpu_thread`): one job at a time on the device, cancel at the
  next step, the time limit, the step watchdog (a fresh thread after a hang), the out-of-memory
  fallback through leaner memory modes, and models that cannot load;
- the encode thread: PNG with the parameters, or H.264 MP4 with a poster (:mod:`generation.media`),
  so that encoding job k overlaps generating job k+1.

Callbacks run on the runner's threads, never on an event loop (forwarding them to a loop is the
caller's business): ``on_start(key)``, ``on_step(key, StepInfo)``, ``on_gpu_done(key)`` when the
device is done with a run that produced something (only its encoding is left), exactly one
``on_done(RunResult)`` per submitted item, and ``on_ready()`` whenever a GPU thread is ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from generation import failures
from generation.batching import Batches, batched_request, member_outputs
from generation.gpu_thread import GPUThread, WorkItem
from generation.media import (
    DoesNotFit,
    EncodedMedia,
    EncodeError,
    EncodeOptions,
    FitResult,
    compose_grid,
    encode_mp4,
    encode_png,
    fit_to_size,
    poster_frame,
)
from generation.outputs import GenerationOutput, Status, StepInfo, WorkOutcome
from generation.params import GenerationRequest

if TYPE_CHECKING:  # the manager's module loads torch; a worker may run with another manager
    from generation.pipelines import PipelineManager

log = logging.getLogger(__name__)

#: how long one look at the GPU thread's readiness blocks a pool thread (see `Runner.wait_loaded`)
READY_SLICE_S = 0.2


@dataclass(frozen=True)
class RunItem:
    """One request for the runner."""

    #: the caller's handle for this run (cancel, callbacks): the bot's job id, or arq's
    key: str
    request: GenerationRequest
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    #: overrides the runner's `job_timeout_s`
    timeout_s: float | None = None
    #: the job id the member knows, named in failure texts (default: `key`)
    job_id: str = ""


@dataclass(frozen=True)
class RunReport:
    """What a run took: for logs, metrics, the ETA model and the store."""

    worker_id: str = ""
    #: seconds loading the model (0 when it was resident)
    load_s: float = 0.0
    #: seconds the device spent on the job (generation and out-of-memory retries)
    gpu_seconds: float = 0.0
    #: seconds encoding (None when nothing was encoded)
    encode_s: float | None = None
    #: memory modes tried, in order: one per attempt
    memory_modes: tuple[str, ...] = ()
    oom_retries: int = 0
    #: the pipeline's own split: load, denoise, decode, total
    stages: dict[str, float] = field(default_factory=dict)
    device: str = ""
    #: members in the pipeline call this run shared (its `gpu_seconds` is its 1/N share)
    batch_size: int = 1

    @property
    def attempts(self) -> int:
        return len(self.memory_modes)

    def timings(self) -> dict[str, float]:
        """The job's timings as the bot records them."""
        found = {"load_s": self.load_s, "generate_s": self.gpu_seconds}
        if self.oom_retries:
            found["oom_retries"] = float(self.oom_retries)
        if self.encode_s is not None:
            found["encode_s"] = self.encode_s
        if self.batch_size > 1:
            found["batch_size"] = float(self.batch_size)
        return found


@dataclass(frozen=True)
class RunResult:
    """How one run ended. `error` is safe to show the member; `exception` is for the log."""

    key: str
    status: Status
    report: RunReport
    encoded: EncodedMedia | None = None
    error: str | None = None
    exception: BaseException | None = None


class Runner:
    """The GPU thread and the encode thread of one device; see the module docstring."""

    def __init__(
        self,
        *,
        manager: PipelineManager | None = None,
        manager_factory: Callable[[], PipelineManager] | None = None,
        job_timeout_s: float,
        step_watchdog_s: float,
        on_done: Callable[[RunResult], None],
        on_start: Callable[[str], None] | None = None,
        on_step: Callable[[str, StepInfo], None] | None = None,
        on_gpu_done: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        preload: tuple[str, ...] = (),
        name: str = "gpu",
    ) -> None:
        self._on_done = on_done
        self._on_gpu_done = on_gpu_done
        self._on_start = on_start
        self._on_step = on_step
        self._items: dict[str, RunItem] = {}
        self._batches = Batches()
        self._lock = threading.Lock()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        #: the device's thread: its state (busy, restarts, load errors, manager) is the runner's
        self.gpu = GPUThread(
            manager=manager,
            manager_factory=manager_factory,
            job_timeout_s=job_timeout_s,
            step_watchdog_s=step_watchdog_s,
            on_start=self._started if on_start is not None else None,
            on_step=self._stepped if on_step is not None else None,
            on_done=self._gpu_finished,
            on_ready=on_ready,
            name=name,
            preload=preload,
        )

    def start(self) -> None:
        self.gpu.start()

    async def wait_loaded(self) -> None:
        """Until the GPU thread has built its pipelines and preloaded its models (minutes with real
        weights). Cancelling this (SIGTERM during start-up) ends the wait at once, with one log line.

        Loading itself cannot be interrupted: diffusers checks no flag while it reads weights, and
        Python cannot kill a thread. So a stop does not wait for it. The GPU thread is a daemon (as
        the watchdog's abandoned ones are), `close` does not join a thread that is still loading,
        and the process exits around it; should the process outlive the load, the thread finds
        the stop and ends without taking a job. The wait looks in short slices, so no pool thread
        stays blocked on the load either: asyncio joins its pool threads when the process exits.
        """
        try:
            while not await asyncio.to_thread(self.gpu.wait_ready, READY_SLICE_S):
                pass
        except asyncio.CancelledError:
            model = self.gpu.loading
            log.info(
                "stopped while loading models (%s); not waiting for it: loading cannot be interrupted",
                f"{model} was loading" if model else "the pipelines were being set up",
            )
            raise

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop after the current job; encodes already started finish on their own thread. A GPU
        thread still loading its models is not waited for (see `wait_loaded`)."""
        stopped = self.gpu.close(timeout if self.gpu.wait_ready(0) else 0)
        self._encoder.shutdown(wait=False, cancel_futures=False)
        return stopped

    def submit(self, item: RunItem) -> None:
        """Hand over one item (see `GPUThread.submit`: one runs, at most one waits)."""
        with self._lock:
            self._items[item.key] = item
        try:
            work = WorkItem(
                job_id=item.key, request=item.request, timeout_s=item.timeout_s, label=item.job_id
            )
            self.gpu.submit(work)
        except BaseException:
            with self._lock:
                self._items.pop(item.key, None)
            raise

    def submit_batch(self, items: list[RunItem]) -> str:
        """Hand over compatible image items as one pipeline call; returns the key the GPU runs it
        under. Each member still gets its own callbacks and exactly one `on_done`."""
        if len(items) == 1:
            self.submit(items[0])
            return items[0].key
        key = f"batch:{items[0].key}"
        request = batched_request([item.request for item in items])
        limits = [item.timeout_s for item in items if item.timeout_s is not None]
        batch = RunItem(
            key=key, request=request, timeout_s=max(limits) if limits else None, job_id=items[0].job_id
        )
        with self._lock:
            self._batches.add(key, items)
        try:
            self.submit(batch)
        except BaseException:
            with self._lock:
                self._batches.settle(key)
            raise
        return key

    def cancel(self, key: str) -> bool:
        """Stop the run at its next step; False if the GPU does not hold it (or only encodes it).

        A member of a batch leaves it at once (its result, if any, is discarded, and nobody
        else's waits for it); the call itself stops only when no member is left."""
        with self._lock:
            batch_key = self._batches.batch_of(key)
            # a batch no longer held is past its call: its members' results are on their way
            found = self._batches.discard(key) if batch_key in self._items else None
        if batch_key is None:
            return self.gpu.cancel(key)
        if found is None:
            return False
        batch_key, empty = found
        self._finish(RunResult(key=key, status="cancelled", report=RunReport(), error=failures.CANCELLED))
        if empty:
            self.gpu.cancel(batch_key)
        return True

    def _live(self, key: str) -> list[str]:
        with self._lock:
            return self._batches.live(key)

    def _started(self, key: str) -> None:
        assert self._on_start is not None
        for member in self._live(key):
            self._call(self._on_start, member)

    def _stepped(self, key: str, info: StepInfo) -> None:
        assert self._on_step is not None
        for member in self._live(key):
            self._call(self._on_step, member, info)

    # -- on the GPU (or watchdog) thread ---------------------------------------------------

    def _gpu_finished(self, outcome: WorkOutcome) -> None:
        with self._lock:  # one step, so that a cancel sees the batch either held or settled
            item = self._items.pop(outcome.job_id, None)
            members = self._batches.settle(item.key) if item is not None else None
        if item is None:
            log.warning("run %s: an outcome for an item this runner does not hold", outcome.job_id)
            return
        if members is not None:
            self._batch_finished(outcome, *members)
            return
        report = RunReport(
            worker_id=outcome.worker_id,
            load_s=outcome.load_s,
            gpu_seconds=outcome.gpu_seconds,
            memory_modes=tuple(outcome.memory_modes),
            oom_retries=outcome.oom_retries,
        )
        if outcome.status != "complete" or outcome.output is None:
            result = RunResult(
                key=item.key,
                status=outcome.status,
                report=report,
                error=outcome.error,
                exception=outcome.exception,
            )
            self._finish(result)
            return
        output = outcome.output
        report = dataclasses.replace(report, stages=dict(output.timings), device=output.device)
        if self._on_gpu_done is not None:
            self._call(self._on_gpu_done, item.key)
        try:
            self._encoder.submit(self._encode, item, output, report)
        except RuntimeError as exc:  # the runner is closing: nothing will encode it
            self._finish(_not_saved(item, report, exc))

    def _batch_finished(self, outcome: WorkOutcome, members: list[RunItem], gone: set[str]) -> None:
        """Each member of a batch gets its own images, encoding and result, and 1/N of its GPU time;
        a member cancelled meanwhile (`gone`) already had its result."""
        size = len(members)
        report = RunReport(
            worker_id=outcome.worker_id,
            load_s=outcome.load_s / size,
            gpu_seconds=outcome.gpu_seconds / size,
            memory_modes=tuple(outcome.memory_modes),
            oom_retries=outcome.oom_retries,
            batch_size=size,
        )
        output = outcome.output
        if outcome.status != "complete" or output is None:
            for member in (m for m in members if m.key not in gone):
                self._finish(
                    RunResult(
                        key=member.key,
                        status=outcome.status,
                        report=report,
                        error=outcome.error,
                        exception=outcome.exception,
                    )
                )
            return
        report = dataclasses.replace(report, stages=dict(output.timings), device=output.device)
        shares = member_outputs(output, [m.request for m in members])
        for member, own in zip(members, shares, strict=True):
            if member.key in gone:
                continue
            if self._on_gpu_done is not None:
                self._call(self._on_gpu_done, member.key)
            try:
                self._encoder.submit(self._encode, member, own, report)
            except RuntimeError as exc:
                self._finish(_not_saved(member, report, exc))

    # -- on the encode thread --------------------------------------------------------------

    def _encode(self, item: RunItem, output: GenerationOutput, report: RunReport) -> None:
        t0 = time.monotonic()
        try:
            encoded = encode_output(output, item.encode)
        except Exception as exc:
            log.exception("job %s: encoding the result failed", item.job_id or item.key)
            self._finish(_not_saved(item, dataclasses.replace(report, encode_s=time.monotonic() - t0), exc))
            return
        report = dataclasses.replace(report, encode_s=encoded.encode_s, stages=dict(output.timings))
        self._finish(RunResult(key=item.key, status="complete", report=report, encoded=encoded))

    def _finish(self, result: RunResult) -> None:
        self._call(self._on_done, result)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("runner callback %s failed", getattr(fn, "__name__", fn))


def _not_saved(item: RunItem, report: RunReport, exc: BaseException) -> RunResult:
    error = failures.NOT_SAVED.format(job_id=item.job_id or item.key)
    return RunResult(key=item.key, status="failed", report=report, error=error, exception=exc)


def run_one(
    item: RunItem,
    *,
    manager: PipelineManager,
    step_watchdog_s: float,
    on_step: Callable[[StepInfo], None] | None = None,
) -> RunResult:
    """Blocking: run one item on a runner of its own and return its result (the CLI's way in).

    No time limit unless the item sets one: only a step hung past `step_watchdog_s` stops it.
    Ctrl-C cancels the run at its next step before the interrupt goes on.
    """
    results: list[RunResult] = []
    done = threading.Event()

    def finished(result: RunResult) -> None:
        results.append(result)
        done.set()

    runner = Runner(
        manager=manager,
        job_timeout_s=math.inf,
        step_watchdog_s=step_watchdog_s,
        on_done=finished,
        on_step=(lambda _key, info: on_step(info)) if on_step is not None else None,
    )
    runner.start()
    try:
        runner.gpu.wait_ready()
        runner.submit(item)
        done.wait()
    except KeyboardInterrupt:
        runner.cancel(item.key)
        done.wait(step_watchdog_s)
        raise
    finally:
        runner.close()
    return results[0]


# -- the one encoder's entry: a pipeline output to a finished file ------------------------------


def encode_output(output: GenerationOutput, options: EncodeOptions | None = None) -> EncodedMedia:
    """PNG (parameters embedded) or H.264 MP4 (+ poster) for a pipeline output; records `encode` timing.

    With `max_bytes`, a video is re-encoded to fit (`DoesNotFit` if it cannot); an image PNG
    over the limit falls back to a high-quality JPEG, then raises `DoesNotFit`.
    """
    options = options or EncodeOptions()
    t0 = time.perf_counter()
    if output.frames:
        encoded = _encode_video(output.frames, int(getattr(output.request, "fps", 8) or 8), options)
    elif output.images:
        flagged = output.nsfw_detected
        images = output.unfiltered if flagged and options.unfiltered and output.unfiltered else output.images
        encoded = dataclasses.replace(_encode_images(images, output.request, options), nsfw_detected=flagged)
    else:
        raise EncodeError("the generation produced neither frames nor images")
    encode_s = time.perf_counter() - t0
    output.timings["encode"] = encode_s
    return dataclasses.replace(encoded, encode_s=encode_s)


def _encode_video(frames: list[np.ndarray], fps: int, options: EncodeOptions) -> EncodedMedia:
    height, width = frames[0].shape[:2]
    data = encode_mp4(frames, fps=fps, crf=options.crf, preset=options.preset)
    fit: FitResult | None = None
    if options.max_bytes is not None:
        fit = fit_to_size(
            frames, fps=fps, max_bytes=options.max_bytes, crf=options.crf, preset=options.preset, first=data
        )
        data, width, height = fit.data, fit.width, fit.height
    return EncodedMedia(
        data=data,
        media_type="video/mp4",
        suffix=".mp4",
        width=int(width),
        height=int(height),
        frames=len(frames),
        fps=fps,
        poster=poster_frame(frames),
        fit=fit,
    )


def _encode_images(
    images: list[Image.Image], request: GenerationRequest, options: EncodeOptions
) -> EncodedMedia:
    """One image as it is; several as one grid, with each image kept alone (its own seed inside)."""
    if len(images) == 1:
        return _encode_image(images[0], options)
    seeds = getattr(request, "seeds", ()) or tuple(range(len(images)))
    parts = tuple(
        encode_png(image, {**options.png_metadata, "seed": str(seed)})
        for image, seed in zip(images, seeds, strict=False)
    )
    meta = {**options.png_metadata, "seeds": ",".join(str(s) for s in seeds)}
    grid = _encode_image(compose_grid(images), dataclasses.replace(options, png_metadata=meta))
    return dataclasses.replace(grid, parts=parts)


def _encode_image(image: Image.Image, options: EncodeOptions) -> EncodedMedia:
    data = encode_png(image, options.png_metadata)
    media_type, suffix = "image/png", ".png"
    limit = options.max_bytes
    if limit is not None and len(data) > limit:
        for quality in (92, 80):
            jpeg = _jpeg(image, quality)
            if len(jpeg) <= limit:
                data, media_type, suffix = jpeg, "image/jpeg", ".jpg"
                break
        else:
            best = FitResult(data=data, crf=0, scale=1.0, passes=2, width=image.width, height=image.height)
            raise DoesNotFit(f"image is {len(data)} bytes; the limit is {limit}", best)
    return EncodedMedia(
        data=data,
        media_type=media_type,
        suffix=suffix,
        width=int(image.width),
        height=int(image.height),
        frames=1,
        fps=None,
    )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
