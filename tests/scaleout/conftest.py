"""Real parts for the scale-out tests: a `redis-server` on 127.0.0.1 (random port, no persistence)
and `python -m generation.worker` processes on the tiny twins, shared by a test module.

The workers load the twins the session already built (`pipeline_manager`), on the CPU, with
downloads forbidden and one torch thread each, and run in a scratch folder so no developer's
`.env` reaches them. Each test gets its own store and JobQueue with the arq executor, stopped
afterwards. Tests that kill a worker or Redis leave the cluster to be mended by the next
`cluster.ensure()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from bot.core.arq_executor import ArqExecutor
from bot.core.queue import JobQueue
from bot.core.store.sqlite import SQLiteStore
from generation.pipelines import PipelineManager
from generation.scaleout import Keys
from generation.settings import GenerationSettings
from tests.queue.conftest import Recorder, queue_settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
#: short so that the lost-worker test is quick; every rule scales with it
HEALTH_CHECK_S = 2.0
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One `redis-server` child without persistence, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None, "redis-server is not installed (bash .ci/setup dev)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]  # fmt: skip
        with (self.workdir / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        client = redis_sync.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except redis_sync.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.log_tail()}") from None
                time.sleep(0.05)
        client.close()

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.port)

    def log_tail(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    worker_id: str = ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    """Redis plus named worker processes; `ensure()` brings back whatever a test broke."""

    redis: RedisServer
    workdir: Path
    cache: Path
    names: tuple[str, ...] = ("w1", "w2")
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    keys: Keys = field(default_factory=Keys)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
        env.update(
            QUEUE_URL=self.redis.url,
            MODEL_CACHE_DIR=str(self.cache),
            DEVICE="cpu",
            DTYPE="fp32",
            HF_OFFLINE="1",
            HF_HUB_OFFLINE="1",
            IMAGE_MODEL="tiny-image",
            VIDEO_MODEL="tiny-video",
            SAFETY_CHECKER="false",
            EXTRA_MODELS="{}",
            PREVIEW_EVERY_STEPS="2",
            JOB_TIMEOUT_S="60",
            STEP_WATCHDOG_S="30",
            WORKER_HEALTH_CHECK_S=str(HEALTH_CHECK_S),
            WORKER_PROGRESS_INTERVAL_S="0.1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_worker(self, name: str) -> WorkerProc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "generation.worker", "--name", name],
                cwd=self.workdir,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(name=name, proc=proc, log_path=log_path, worker_id=f"{name}:{proc.pid}")
        self.workers[name] = worker
        return worker

    def wait_registered(self, names: list[str], within_s: float = 120.0) -> None:
        client = self.redis.client()
        deadline = time.monotonic() + within_s
        try:
            for name in names:
                worker = self.workers[name]
                while not client.exists(self.keys.worker(worker.worker_id)):
                    if not worker.alive:
                        raise RuntimeError(f"worker {name} exited: {self.log_tail(name)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker {name} did not register: {self.log_tail(name)}")
                    time.sleep(0.1)
        finally:
            client.close()

    def ensure(self) -> None:
        """Redis up, every named worker alive and registered (restarting what a test killed)."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        started = [n for n in self.names if n not in self.workers or not self.workers[n].alive]
        for name in started:
            self.start_worker(name)
        self.wait_registered(list(self.names))

    def by_id(self, worker_id: str) -> WorkerProc:
        for worker in self.workers.values():
            if worker.worker_id == worker_id:
                return worker
        raise KeyError(worker_id)

    def kill(self, name: str) -> None:
        worker = self.workers[name]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers.values():
            try:
                worker.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(timeout=10)
        self.redis.stop()

    def log_tail(self, name: str) -> str:
        path = self.workers[name].log_path
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_cache: Path,
    pipeline_manager: PipelineManager,
) -> Iterator[Cluster]:
    """Redis and two workers for the module (`pipeline_manager`: the twins are built first)."""
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (bash .ci/setup dev installs the Debian package)")
    workdir = tmp_path_factory.mktemp("scaleout")
    cluster = Cluster(redis=RedisServer(workdir / "redis"), workdir=workdir, cache=tiny_model_cache)
    try:
        cluster.redis.start()
        for name in cluster.names:
            cluster.start_worker(name)
        cluster.wait_registered(list(cluster.names))
        yield cluster
    finally:
        cluster.stop_all()


@dataclass
class Bot:
    """The bot's half: a JobQueue with the arq executor over a fresh SQLite store."""

    queue: JobQueue
    executor: ArqExecutor
    recorder: Recorder
    store: SQLiteStore
    settings: Any
    #: (monotonic time, job id, worker id) for every job_started the executor reported
    starts: list[tuple[float, str, str]] = field(default_factory=list)


@pytest.fixture
async def bot(cluster: Cluster, tiny_settings: GenerationSettings, tmp_path: Path) -> AsyncIterator[Bot]:
    cluster.ensure()
    settings = queue_settings(
        tiny_settings,
        tmp_path,
        queue_url=cluster.redis.url,
        worker_health_check_s=HEALTH_CHECK_S,
        job_timeout_s=60.0,
    )
    store = SQLiteStore(path=tmp_path / "bot.db")
    await store.open()
    executor = ArqExecutor(settings=settings)
    queue = JobQueue(settings=settings, store=store, executor=executor)
    recorder = Recorder()
    queue.add_listener(recorder)
    found = Bot(queue=queue, executor=executor, recorder=recorder, store=store, settings=settings)
    job_started = queue.job_started

    def spy(job_id: str, *, worker_id: str) -> None:  # the seam itself: who started what, when
        found.starts.append((time.monotonic(), job_id, worker_id))
        job_started(job_id, worker_id=worker_id)

    queue.job_started = spy  # type: ignore[method-assign]
    await queue.start()
    try:
        yield found
    finally:
        with contextlib.suppress(Exception):
            await queue.stop(graceful=False, timeout_s=5.0)
        await store.close()
