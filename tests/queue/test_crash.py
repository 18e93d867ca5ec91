"""Kill the bot mid-job (SIGKILL, no goodbye) and start it again: the job completes exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.jobs import JobState
from bot.core.store.sqlite import SQLiteStore
from generation.pipelines import PipelineManager

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def child(mode: str, tmp_path: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.queue.crash_child",
        mode,
        "--db",
        str(tmp_path / "bot.db"),
        "--results",
        str(tmp_path / "results"),
        "--cache",
        str(cache),
        "--deliveries",
        str(tmp_path / "deliveries.txt"),
    ]


def run_to_end(mode: str, tmp_path: Path, cache: Path) -> list[str]:
    done = subprocess.run(
        child(mode, tmp_path, cache), cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def kill_mid_job(tmp_path: Path, cache: Path) -> tuple[str, int]:
    """Start `submit`, wait until its job has done a few steps, SIGKILL it."""
    proc = subprocess.Popen(
        child("submit", tmp_path, cache),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    job_id = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            if words[:1] == ["QUEUED"]:
                job_id = words[1]
            if words[:1] == ["STEP"] and int(words[1]) >= 3:
                break
        else:
            raise AssertionError("the child ended before its job got going")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert job_id
    return job_id, proc.pid


async def test_sigkill_mid_job_then_restart_completes_it_exactly_once(
    tmp_path: Path, tiny_model_cache: Path, pipeline_manager: PipelineManager
) -> None:
    # (pipeline_manager: makes sure the tiny twins are built in the cache the children share)
    job_id, pid = await asyncio.to_thread(kill_mid_job, tmp_path, tiny_model_cache)

    store = SQLiteStore(path=tmp_path / "bot.db")
    await store.open()
    try:
        killed = await store.get_job(job_id)
        assert killed is not None and killed.state is JobState.IN_PROGRESS and killed.attempts == 1
        assert killed.lease_owner is not None and f":{pid}:" in killed.lease_owner

        out = await asyncio.to_thread(run_to_end, "resume", tmp_path, tiny_model_cache)
        assert f"DONE {job_id} complete" in out
        assert [line for line in out if line.startswith("FINISHED")] == [f"FINISHED {job_id} complete"]

        done = await store.get_job(job_id)
        assert done is not None and done.state is JobState.COMPLETE
        assert done.attempts == 2
        assert done.result_message_id == f"message-for-{job_id[:8]}"
        files = await asyncio.to_thread(lambda: sorted(p.name for p in (tmp_path / "results").rglob("*")))
        assert [f for f in files if f.startswith(job_id) and f.endswith(".mp4")] == [f"{job_id}.mp4"]
        assert not [f for f in files if f.endswith(".tmp")]

        # a third start finds nothing to deliver: the result was posted once, and stays posted once
        out = await asyncio.to_thread(run_to_end, "idle", tmp_path, tiny_model_cache)
        assert "OFFERED 0" in out
        lines = await asyncio.to_thread((tmp_path / "deliveries.txt").read_text)
        assert lines.splitlines() == [f"{job_id} {done.result_path}"]
    finally:
        await store.close()
