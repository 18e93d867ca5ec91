"""The GPU thread: one thread owns the pipelines and the device, and runs one request at a time.

Its feeder (the runner, :mod:`generation.runner`) hands it a :class:`WorkItem` and hears back
through callbacks called on these threads: ``on_start(job_id)``, ``on_step(job_id, StepInfo)``,
exactly one ``on_done(WorkOutcome)`` per item, and ``on_ready()`` whenever a thread (the first,
or a fresh one after a hang) is ready for work. No asyncio here, and nothing of Discord.

What it guarantees, as arq's worker does for its jobs:

- **cancel** (:meth:`GPUThread.cancel`) takes effect at the next denoising step: a running
  diffusers call cannot be interrupted from outside, so the step callback checks a flag;
- **timeout**: a run past ``job_timeout_s`` is cancelled at its next step; a step that does not come
  back within a grace period after the limit (a tenth of it, at least ``TIMEOUT_GRACE_MIN_S``, at most
  ``step_watchdog_s``) is treated as hung, as below;
- **watchdog**: a separate thread notices a step that does not come back within
  ``step_watchdog_s``. Such a job is failed at that deadline, the hung thread is abandoned (Python
  cannot kill a thread; it is a daemon and anything it reports later is dropped) and a fresh
  thread with a fresh :class:`PipelineManager` from the factory serves the next job;
- **a model that cannot load** (missing weights, wrong repo id) fails its own jobs with a message
  for the member and is listed in :attr:`GPUThread.load_errors` with the reason for the admins;
  the other models keep serving, and a later job that loads it clears the entry;
- **out of memory**: ``torch.cuda.OutOfMemoryError`` frees memory, lowers the model's memory
  mode (`PipelineManager.downgrade_memory`) and retries, once per leaner mode; when no leaner
  mode is left the job fails with a message for the member, and the worker keeps serving.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from generation import failures
from generation.batch_oom import out_of_memory, run_splitting
from generation.errors import GenerationCancelled, UserError
from generation.outputs import StepInfo, WorkOutcome
from generation.params import GenerationRequest
from generation.phases import JobPhase

if TYPE_CHECKING:
    from generation.pipelines import PipelineManager

log = logging.getLogger(__name__)

#: after a job's time limit, how long the step in flight may still take before the worker gives
#: up on it: a tenth of the limit, at least this much, at most `step_watchdog_s`
TIMEOUT_GRACE_MIN_S = 2.0


class GPUBusy(RuntimeError):
    """`submit` while a job is running and another waits: the feeder must respect the one slot."""


@dataclass(frozen=True)
class WorkItem:
    #: the feeder's key for this run (cancel, callbacks)
    job_id: str
    request: GenerationRequest
    #: overrides the thread's `job_timeout_s` for this job
    timeout_s: float | None = None
    #: the job id a member knows, for failure texts (defaults to `job_id`)
    label: str = ""

    @property
    def shown_id(self) -> str:
        return self.label or self.job_id


@dataclass
class _Thread:
    """One GPU thread's identity; `abandoned` once the watchdog gave up on it."""

    number: int
    inbox: queue.SimpleQueue[WorkItem | None]
    abandoned: bool = False
    thread: threading.Thread | None = None


@dataclass
class _Run:
    item: WorkItem
    owner: _Thread
    timeout_s: float
    started: float
    last_activity: float
    phase: JobPhase = JobPhase.LOADING
    cancel_reason: Literal["cancelled", "timeout"] | None = None
    gen_started: float | None = None
    done: bool = False

    def cancelled(self) -> bool:
        """The step callback's question: stop now (cancelled, timed out, or thread abandoned)?"""
        return self.cancel_reason is not None or self.owner.abandoned


class GPUThread:
    """One GPU, one job at a time, on a dedicated thread, with a watchdog thread beside it.

    `manager_factory` is called on the GPU thread (weights load on the thread that owns the
    device) when it starts, and again after a hang; `manager` may be given instead for the
    first thread (a test's shared manager, or one the caller already warmed up).
    """

    def __init__(
        self,
        *,
        manager_factory: Callable[[], PipelineManager] | None = None,
        manager: PipelineManager | None = None,
        job_timeout_s: float,
        step_watchdog_s: float,
        on_start: Callable[[str], None] | None = None,
        on_step: Callable[[str, StepInfo], None] | None = None,
        on_done: Callable[[WorkOutcome], None],
        on_ready: Callable[[], None] | None = None,
        name: str = "gpu",
        preload: tuple[str, ...] = (),
    ) -> None:
        if manager_factory is None and manager is None:
            raise ValueError("GPUThread needs a manager or a manager_factory")
        if manager_factory is None:
            assert manager is not None
            from generation.pipelines import PipelineManager

            settings, registry = manager.settings, manager.registry
            manager_factory = lambda: PipelineManager(settings, registry)  # noqa: E731
        self._factory = manager_factory
        self._first_manager = manager
        self.job_timeout_s = job_timeout_s
        self.step_watchdog_s = step_watchdog_s
        self._on_start = on_start
        self._on_step = on_step
        self._on_done = on_done
        self._on_ready = on_ready
        self.name = name
        self._preload = preload
        self._lock = threading.Lock()
        self._current: _Thread | None = None
        self._run: _Run | None = None
        self._pending: WorkItem | None = None
        self._cancel_pending: set[str] = set()
        self._numbers = itertools.count(1)
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._manager: PipelineManager | None = None
        self._ready = threading.Event()
        self.jobs_done = 0
        self.restarts = 0
        #: model id -> why it could not be loaded (for /readyz); cleared once it loads. Replaced
        #: whole on every change, so other threads may read it without the lock
        self.load_errors: dict[str, str] = {}
        self.last_heartbeat = time.monotonic()
        self.loading: str | None = None  # the preloaded model being loaded now, if any

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._watchdog is not None:
            raise RuntimeError("GPUThread already started")
        self._spawn(self._first_manager)
        self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
        self._watchdog.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the GPU thread has its pipeline manager (and preloaded models)."""
        return self._ready.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop after the current job (if any); True when the thread ended within `timeout`."""
        self._stop.set()
        with self._lock:
            current = self._current
        if current is None:
            return True
        current.inbox.put(None)
        if current.thread is not None:
            current.thread.join(timeout)
            return not current.thread.is_alive()
        return True

    @property
    def manager(self) -> PipelineManager | None:
        """The current thread's pipeline manager (None until it is built)."""
        return self._manager

    @property
    def alive(self) -> bool:
        with self._lock:
            current = self._current
        return bool(current and current.thread and current.thread.is_alive() and not self._stop.is_set())

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._run is not None or self._pending is not None

    @property
    def has_waiting(self) -> bool:
        """An item was handed over and has not started yet."""
        with self._lock:
            return self._pending is not None

    @property
    def running_job_id(self) -> str | None:
        with self._lock:
            return self._run.item.job_id if self._run is not None else None

    @property
    def current_job_id(self) -> str | None:
        """The running job, else the waiting one."""
        with self._lock:
            if self._run is not None:
                return self._run.item.job_id
            return self._pending.job_id if self._pending is not None else None

    # -- feeding ---------------------------------------------------------------------------

    def submit(self, item: WorkItem) -> None:
        """Hand over one item: it runs now, or right after the running one (one may wait).

        Raises GPUBusy when an item is already waiting: a feeder may claim the next job while
        the current one decodes, so the device never waits on the feeder's bookkeeping, but
        no further ahead than that.
        """
        with self._lock:
            if self._stop.is_set() or self._current is None:
                raise RuntimeError("GPUThread is not running")
            if self._pending is not None:
                raise GPUBusy(f"worker {self.name} already has a job waiting")
            self._pending = item
            self._current.inbox.put(item)

    def cancel(self, job_id: str) -> bool:
        """Ask the job to stop at its next step; False if this worker does not have it."""
        with self._lock:
            if self._run is not None and self._run.item.job_id == job_id:
                if self._run.cancel_reason is None:
                    self._run.cancel_reason = "cancelled"
                return True
            if self._pending is not None and self._pending.job_id == job_id:
                self._cancel_pending.add(job_id)
                return True
        return False

    # -- the GPU thread -----------------------------------------------------------------

    def _spawn(self, manager: PipelineManager | None) -> None:
        me = _Thread(number=next(self._numbers), inbox=queue.SimpleQueue())
        me.thread = threading.Thread(
            target=self._main, args=(me, manager), name=f"{self.name}-{me.number}", daemon=True
        )
        with self._lock:
            self._current = me
            # a job waiting in an abandoned thread's inbox moves to the new one, under the same
            # lock as the switch: a `submit` racing the restart lands in exactly one inbox
            if self._pending is not None:
                me.inbox.put(self._pending)
        me.thread.start()

    def _main(self, me: _Thread, manager: PipelineManager | None) -> None:
        manager, startup_error = self._build_manager(manager)
        self._ready.set()
        # after a watchdog restart jobs may be waiting for this thread: tell the feeder it can send
        self._call(self._on_ready)
        while True:
            item = me.inbox.get()
            run = None if item is None else self._take(me, item)
            if run is None:
                return
            if manager is None:  # the thread could not build its pipelines: every job fails
                error = getattr(startup_error, "message", None) or failures.CRASHED.format(
                    job_id=run.item.shown_id
                )
                outcome = WorkOutcome(
                    job_id=run.item.job_id, status="failed", error=error, exception=startup_error
                )
            else:
                if run.cancel_reason is None:  # a job cancelled while it waited never "starts"
                    self._call(self._on_start, run.item.job_id)
                outcome = self._execute(manager, run)
            outcome.worker_id = f"{self.name}-{me.number}"
            with self._lock:
                if run.done:  # the watchdog already failed this job and replaced this thread
                    log.warning(
                        "abandoned thread %s finished job %s late; dropped", me.number, run.item.job_id
                    )
                    return
                run.done = True
                self._run = None
                self.jobs_done += 1
            self.last_heartbeat = time.monotonic()
            self._call(self._on_done, outcome)

    def _build_manager(
        self, manager: PipelineManager | None
    ) -> tuple[PipelineManager | None, BaseException | None]:
        """This thread's pipeline manager with the preloaded models, or why it could not be built."""
        try:
            if manager is None:
                manager = self._factory()
        except Exception as exc:
            log.exception("%s could not build its pipeline manager", self.name)
            return None, exc
        # one model that cannot load (missing weights, wrong repo id) must not take the
        # others down: its jobs fail with a message, every other model keeps serving
        for model_id in self._preload:
            self.loading = model_id
            try:
                manager.load(model_id)
            except Exception as exc:
                self._load_failed(model_id, exc)
        self._manager, self.loading = manager, None
        return manager, None

    def _take(self, me: _Thread, item: WorkItem) -> _Run | None:
        """Make `item` the running job; None when this thread was abandoned meanwhile."""
        now = time.monotonic()
        timeout_s = item.timeout_s if item.timeout_s is not None else self.job_timeout_s
        run = _Run(item=item, owner=me, timeout_s=timeout_s, started=now, last_activity=now)
        with self._lock:
            if me.abandoned:
                return None
            self._run = run
            self._pending = None
            if item.job_id in self._cancel_pending:
                self._cancel_pending.discard(item.job_id)
                run.cancel_reason = "cancelled"
        self.last_heartbeat = now
        return run

    def _execute(self, manager: PipelineManager, run: _Run) -> WorkOutcome:
        item = run.item
        outcome = WorkOutcome(job_id=item.job_id, status="failed")
        try:
            if run.cancelled():
                raise GenerationCancelled(failures.CANCELLED_BEFORE_START)
            if self._load(manager, run, outcome):
                run.phase = JobPhase.RUNNING
                self._generate(manager, run, outcome)
            return outcome
        except GenerationCancelled as exc:
            outcome.gpu_seconds += _since(run.gen_started) if outcome.status != "complete" else 0.0
            if run.cancel_reason == "timeout":
                outcome.status = "timeout"
                # out of memory, then out of time in a leaner mode: memory is what the member can fix
                text = failures.TIMED_OUT_AFTER_OOM if outcome.oom_retries else failures.TIMED_OUT
                outcome.error = text.format(limit_s=run.timeout_s)
            else:
                outcome.status = "cancelled"
                outcome.error = exc.message
            return outcome
        except UserError as exc:
            outcome.error = exc.message
            outcome.exception = exc
            return outcome
        except Exception as exc:
            log.exception("job %s failed on %s", item.shown_id, self.name)
            outcome.error = failures.CRASHED.format(job_id=item.shown_id)
            outcome.exception = exc
            return outcome

    def _load(self, manager: PipelineManager, run: _Run, outcome: WorkOutcome) -> bool:
        """Make the request's model resident; False (and the outcome says why) when it cannot load."""
        model = run.item.request.model
        t0 = time.monotonic()
        try:
            manager.load(model)
        except Exception as exc:
            self._load_failed(model, exc)
            outcome.error = failures.UNAVAILABLE.format(model=model)
            outcome.exception = exc
            return False
        if model in self.load_errors:
            self.load_errors = {m: r for m, r in self.load_errors.items() if m != model}
        outcome.load_s = time.monotonic() - t0
        outcome.memory_modes.append(manager.memory_mode(model))
        return True

    def _generate(self, manager: PipelineManager, run: _Run, outcome: WorkOutcome) -> None:
        """Run the pipeline; after running out of memory, retry once in each leaner memory mode."""
        item, request = run.item, run.item.request

        def on_step(info: StepInfo) -> None:
            now = time.monotonic()
            run.last_activity = now
            self.last_heartbeat = now
            if self._on_step is not None:
                self._call(self._on_step, item.job_id, info)

        while True:
            t = time.monotonic()
            run.last_activity = run.gen_started = t
            try:
                output = run_splitting(manager, request, on_step=on_step, should_cancel=run.cancelled)
            except Exception as exc:
                if not out_of_memory(exc):
                    raise
                # pipelines.run already released the failed run's memory
                outcome.gpu_seconds += time.monotonic() - t
                lower = manager.downgrade_memory(request.model)
                log.warning(
                    "job %s: out of GPU memory in mode %s; %s",
                    item.shown_id,
                    outcome.memory_modes[-1],
                    f"retrying in {lower}" if lower else "no leaner mode left",
                )
                if lower is None:
                    outcome.error = failures.OUT_OF_MEMORY
                    outcome.exception = exc
                    return
                outcome.memory_modes.append(lower)
                outcome.oom_retries += 1
                continue
            outcome.gpu_seconds += time.monotonic() - t
            outcome.status = "complete"
            outcome.output = output
            return

    # -- the watchdog ----------------------------------------------------------------------

    def _watch(self) -> None:
        tick = max(0.02, min(0.5, self.step_watchdog_s / 5, self.job_timeout_s / 5))
        while not self._stop.wait(tick):
            with self._lock:
                run = self._run
            if run is None or run.done:
                continue
            now = time.monotonic()
            if run.cancel_reason is None and now - run.started > run.timeout_s:
                log.warning(
                    "job %s ran past %.1fs: stopping it at the next step", run.item.job_id, run.timeout_s
                )
                run.cancel_reason = "timeout"
            # loading may legitimately take long (a first download); steps may not
            stepping = run.phase == JobPhase.RUNNING
            limit = self.step_watchdog_s if stepping else max(run.timeout_s, self.step_watchdog_s)
            if now - run.last_activity > limit:
                self._abandon(run, now)
            elif stepping and now - run.started > run.timeout_s + self._timeout_grace(run):
                # past the time limit and the step in flight never came back to see the flag
                self._abandon(run, now, past_limit=True)

    def _timeout_grace(self, run: _Run) -> float:
        return min(self.step_watchdog_s, max(TIMEOUT_GRACE_MIN_S, run.timeout_s / 10))

    def _abandon(self, run: _Run, now: float, *, past_limit: bool = False) -> None:
        with self._lock:
            if run.done:
                return
            run.done = True
            run.owner.abandoned = True
            self._run = None
            self.restarts += 1
        what = "a generation step" if run.phase == JobPhase.RUNNING else "loading the model"
        log.error(
            "job %s: %s did not return within %.0fs%s; abandoning GPU thread %d and starting a fresh one",
            run.item.job_id,
            what,
            now - run.last_activity,
            f" (past the {run.timeout_s:g} s time limit)" if past_limit else "",
            run.owner.number,
        )
        if past_limit:
            error = failures.HUNG_PAST_LIMIT.format(limit_s=run.timeout_s)
        else:
            error = failures.HUNG.format(what=what, watchdog_s=self.step_watchdog_s)
        outcome = WorkOutcome(
            job_id=run.item.job_id,
            status="timeout",
            error=error,
            gpu_seconds=_since(run.gen_started),
            worker_id=f"{self.name}-{run.owner.number}",
        )
        if not self._stop.is_set():
            self._ready.clear()
            self._spawn(None)
        self._call(self._on_done, outcome)

    # -- helpers ---------------------------------------------------------------------------

    def _load_failed(self, model_id: str, exc: BaseException) -> None:
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        self.load_errors = {**self.load_errors, model_id: reason}  # replaced, never mutated: read lock-free
        log.error("worker %s: model %s could not be loaded: %s", self.name, model_id, reason)

    def _call(self, fn: Callable[..., None] | None, *args: object) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("worker %s: callback %s failed", self.name, getattr(fn, "__name__", fn))


def _since(t: float | None) -> float:
    return 0.0 if t is None else time.monotonic() - t
