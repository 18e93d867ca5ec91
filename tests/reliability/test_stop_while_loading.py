"""An admin stops the bot while it is still loading its models: the process must go at once.

Loading real weights takes minutes and cannot be interrupted, so a SIGTERM (or Ctrl-C) that
waited for it would leave the admin staring at a process that ignores them. Each entry point
(`python -m bot.web`, `python -m bot`, `python -m generation.worker`) is started with model
loading made slow the way a real one is: a `sitecustomize.py` on the child's PYTHONPATH makes
diffusers' `DiffusionPipeline.from_pretrained` sit for a minute first, nothing in the product
knows. Once the child is inside that load it gets SIGTERM, and must exit 0 within seconds, say
so in one line naming the model, close the store as on any stop (WAL checkpointed), print no
traceback, and leave the jobs that were queued queued for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync
from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, result_key_prefix

from bot.core.jobs import JobState
from bot.core.store.sqlite import SQLiteStore
from generation.models import ModelSpec
from generation.scaleout import JOB_FUNCTION, Keys
from generation.tiny import ensure_tiny
from tests.bot.conftest import API_SECRET, bot_env
from tests.bot.test_startup import FakeDiscordStub, until_line
from tests.fake_discord import FakeDiscord
from tests.processes import child, free_port
from tests.queue.conftest import make_job
from tests.reliability.conftest import read_jobs
from tests.scaleout.conftest import REDIS_SERVER, Cluster, RedisServer

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SLOW_LOAD_MARK = "slow-load: from_pretrained sits"
STOPPED_LINE = "stopped while loading models (tiny-image was loading"
#: what "at once" means on a busy 2-core machine (about 1 s here: see the figures in the log)
EXIT_WITHIN_S = 5.0

SITECUSTOMIZE = f'''
"""Test only: every diffusers pipeline load first sits for a minute, as real weights take."""
import importlib.abc
import importlib.machinery
import sys
import time

MODULE = "diffusers.pipelines.pipeline_utils"


def _slow(cls):
    load = cls.from_pretrained.__func__

    def from_pretrained(klass, *args, **kwargs):
        sys.stderr.write("{SLOW_LOAD_MARK} for 60 s\\n")
        sys.stderr.flush()
        time.sleep(60)
        return load(klass, *args, **kwargs)

    cls.from_pretrained = classmethod(from_pretrained)


class _SlowLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _slow(module.DiffusionPipeline)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _SlowLoads())
'''


@pytest.fixture
def slow_loads(tmp_path: Path, tiny_model_cache: Path) -> str:
    """A PYTHONPATH entry whose sitecustomize slows every pipeline load, for the child only;
    the twins are built first, so the child goes straight to loading them."""
    folder = tmp_path / "slow-loads"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    for twin in ("tiny-image", "tiny-video"):
        ensure_tiny(twin, tiny_model_cache)
    return str(folder)


async def stop_inside_the_load(proc: asyncio.subprocess.Process, seen: list[str]) -> float:
    """Wait until the child sits in the slow load, SIGTERM it, and return how long it took to exit."""
    assert proc.stdout is not None
    async with asyncio.timeout(40):
        await until_line(proc.stdout, SLOW_LOAD_MARK, seen)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    took = time.monotonic() - t0
    seen.append(rest.decode(errors="replace"))
    return took


def assert_stopped_while_loading(rc: int | None, took: float, output: str) -> None:
    assert rc == 0, output
    assert took < EXIT_WITHIN_S, f"exit took {took:.1f} s:\n{output}"
    assert "loading model tiny-image" in output.split(SLOW_LOAD_MARK)[0], output
    assert [line for line in output.splitlines() if STOPPED_LINE in line], output
    assert "Traceback" not in output and "ERROR" not in output, output
    assert "loaded model" not in output, output  # it really was stopped inside the load


def assert_store_closed_cleanly(db: Path) -> None:
    """The last connection closed: the WAL was checkpointed into the file, and the file is sound."""
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_bot_web_stops_at_once_while_loading_and_keeps_the_job_queued(
    tmp_path: Path, tiny_model_cache: Path, slow_loads: str
) -> None:
    port = free_port()
    env = bot_env(FakeDiscordStub(), tmp_path, tiny_model_cache, port)  # REST only: no Discord
    env["PYTHONPATH"] = f"{slow_loads}:{env['PYTHONPATH']}"
    seen: list[str] = []
    async with child(sys.executable, "-m", "bot.web", env=env, cwd=tmp_path) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(40):
            await until_line(proc.stdout, "loading model tiny-image", seen)
        # the web server answers while the models load: a member's request is taken and queued
        auth = {"Authorization": f"Bearer {API_SECRET}"}
        async with aiohttp.ClientSession() as http:
            body = {"prompt": "queued while loading", "steps": 2, "width": 64, "height": 64}
            async with http.post(f"http://127.0.0.1:{port}/api/v1/images", json=body, headers=auth) as resp:
                assert resp.status == 202, await resp.text()
                job_id = (await resp.json())["id"]
        took = await stop_inside_the_load(proc, seen)
    output = "".join(seen)
    assert_stopped_while_loading(proc.returncode, took, output)
    assert_store_closed_cleanly(tmp_path / "bot.db")
    (job,) = (await read_jobs(tmp_path / "bot.db")).values()
    assert job.id == job_id and job.prompt == "queued while loading"
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.started_at is None, job
    assert not any((tmp_path / "results").rglob("*.*"))  # nothing half-written
    log.info("python -m bot.web: SIGTERM while loading -> exit 0 after %.2f s", took)


async def test_the_discord_bot_stops_at_once_while_loading_and_keeps_the_job_queued(
    tmp_path: Path, tiny_model_cache: Path, tiny_registry: dict[str, ModelSpec], slow_loads: str
) -> None:
    """`python -m bot` loads the models in `setup_hook`, during log-in to Discord."""
    db = tmp_path / "bot.db"
    async with SQLiteStore(path=db) as store:  # a job queued before this start
        waiting = make_job(tiny_registry, "alice", kind="image", prompt="left from yesterday")
        await store.insert_job(waiting)
    seen: list[str] = []
    async with FakeDiscord() as discord:
        env = bot_env(discord, tmp_path, tiny_model_cache, free_port())
        env["PYTHONPATH"] = f"{slow_loads}:{env['PYTHONPATH']}"
        async with child(sys.executable, "-m", "bot", env=env, cwd=tmp_path) as proc:
            took = await stop_inside_the_load(proc, seen)
        assert discord.identifies == 0  # it never went on to open the gateway
    output = "".join(seen)
    assert_stopped_while_loading(proc.returncode, took, output)
    assert_store_closed_cleanly(db)
    (job,) = (await read_jobs(db)).values()
    assert job.id == waiting.id and job.state is JobState.QUEUED and job.attempts == 0, job
    log.info("python -m bot: SIGTERM while loading -> exit 0 after %.2f s", took)


async def test_a_gpu_worker_stops_at_once_while_loading_and_leaves_arqs_queue_alone(
    tmp_path: Path, tiny_model_cache: Path, slow_loads: str
) -> None:
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (bash .ci/setup dev installs the Debian package)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    keys = Keys()
    try:
        pool = await create_pool(RedisSettings(host="127.0.0.1", port=server.port))
        try:  # a job the bot handed over before this worker started
            await pool.enqueue_job(
                JOB_FUNCTION, {"job_id": "waiting"}, _job_id="arq-waiting", _queue_name=keys.queue
            )
        finally:
            await pool.aclose()
        env = Cluster(redis=server, workdir=tmp_path, cache=tiny_model_cache).env()
        env["PYTHONPATH"] = f"{slow_loads}:{env['PYTHONPATH']}"
        seen: list[str] = []
        worker = (sys.executable, "-m", "generation.worker", "--name", "w9")
        async with child(*worker, env=env, cwd=tmp_path) as proc:
            took = await stop_inside_the_load(proc, seen)
        output = "".join(seen)
        assert_stopped_while_loading(proc.returncode, took, output)
        client: redis_sync.Redis = server.client()
        try:
            assert client.zscore(keys.queue, "arq-waiting") is not None  # still queued for another worker
            assert not client.exists(in_progress_key_prefix + "arq-waiting")
            assert not client.exists(result_key_prefix + "arq-waiting")
            assert not client.smembers(keys.workers)  # it never announced itself, and left nothing
        finally:
            client.close()
    finally:
        server.stop()
    log.info("python -m generation.worker: SIGTERM while loading -> exit 0 after %.2f s", took)
