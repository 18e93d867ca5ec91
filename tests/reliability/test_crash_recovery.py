"""Pulling the plug: `python -m bot` is SIGKILLed mid-job, or asked to stop with SIGTERM, and
started again on the same data. Members must get every result, each exactly once.

The crash story has 21 jobs: one long video that is on the GPU when the process dies, and 20
jobs that three members queued behind it. "21 of 21 delivered exactly once" counts all of
them: the interrupted one (run again, its second attempt) and the 20 that were waiting.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from bot.core.jobs import JobState
from tests.bot.test_e2e import (
    QUEUED,
    TINY,
    TINY_VIDEO,
    private_reply,
    queue_job,
    result_message,
    status_message,
)
from tests.fake_discord import BOT_PERMISSIONS, Perm
from tests.reliability.conftest import Deployment, deployment, results_for

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: a clip that keeps the tiny worker busy for several seconds (about 0.15 s a step here)
LONG_VIDEO = {"steps": 30, "frames": 64, "fps": 8}
MEMBERS = ("alice", "bob", "carol")
STEP = re.compile(r"step (\d+)/(\d+)")


async def wait_until_running(bot: Deployment, short: str, *, past_step: int = 1) -> None:
    """Until the job's public status message shows it past `past_step` (it is on the GPU)."""
    status = status_message(bot, short)

    def running() -> bool:
        match = STEP.search(status.content)
        return match is not None and int(match.group(1)) >= past_step

    await bot.discord.wait_until(running, timeout=90, what=f"job {short} to be running")


def still_running(bot: Deployment, short: str) -> bool:
    match = STEP.search(status_message(bot, short).content)
    return (
        match is not None
        and int(match.group(1)) < int(match.group(2))
        and not results_for(bot.discord, short)
    )


async def test_sigkill_mid_job_then_restart_delivers_21_of_21_exactly_once(
    workdir: Path, tiny_model_cache: Path
) -> None:
    async with deployment(workdir, tiny_model_cache) as bot:
        long = await queue_job(
            bot, "video", {"prompt": "a long storm", **LONG_VIDEO, "seed": 11}, user="alice"
        )
        waiting: dict[str, tuple[str, str]] = {}  # short id -> (member, prompt)
        for i in range(20):  # queued while the long job runs (it came first and started at once)
            member = MEMBERS[i % 3]
            prompt = f"crowd {i} of {member}"
            options = {"prompt": prompt, **(TINY_VIDEO if i % 5 == 4 else TINY), "seed": i}
            waiting[await queue_job(bot, "video" if i % 5 == 4 else "imagine", options, user=member)] = (
                member,
                prompt,
            )
        await wait_until_running(bot, long)
        assert still_running(bot, long), "the long job finished before the kill: make it longer"
        await bot.kill()
        killed = time.monotonic()
        delivered_before = {s for s in [long, *waiting] if results_for(bot.discord, s)}
        assert long not in delivered_before

        ready_s = await bot.start()
        interrupted = await result_message(bot, long, timeout=180)
        interrupted_s = time.monotonic() - killed
        for short in waiting:
            await result_message(bot, short, timeout=120)
        all_s = time.monotonic() - killed

        everything = [long, *waiting]
        # every status message made way for its result, the interrupted one's included
        for short in everything:
            await bot.discord.wait_until(
                lambda s=short: status_message(bot, s).deleted, timeout=10, what=f"status of {short} deleted"
            )
        assert interrupted.pings().users == {bot.members["alice"].user.id}
        rc, _ = await bot.terminate()
        assert rc == 0
        # the bot is gone: whatever it posted is all it will ever post
        for short in everything:
            copies = results_for(bot.discord, short)
            assert len(copies) == 1, f"job {short} was posted {len(copies)} times"
            assert not copies[0].deleted
        posted = [m for m in bot.discord.messages(include_deleted=True) if m.embed and "job " in str(m.embed)]
        assert len(posted) == 21
        jobs = await bot.read_jobs()
        assert "1 recovered from a previous run" in bot.log_text()

    by_short = {job.id[:8]: job for job in jobs.values()}
    assert len(jobs) == 21 and set(by_short) == set(everything)
    for short, job in by_short.items():
        assert job.state is JobState.COMPLETE, (short, job.state, job.error)
        message = results_for(bot.discord, short)[0]
        assert job.result_message_id == str(message.id)  # the log says where it was posted
        assert job.finished_at is not None and job.gpu_seconds and job.gpu_seconds > 0
        assert job.attempts == (2 if short == long else 1), (short, job.attempts)
    for short, (member, prompt) in waiting.items():
        job = by_short[short]
        assert job.user_id == str(bot.members[member].user.id) and job.prompt == prompt
    assert by_short[long].params["steps"] == 30 and by_short[long].seed == 11
    log.info(
        "SIGKILL recovery: ready again %.1f s after restart, interrupted job delivered %.1f s and all 21 "
        "%.1f s after the kill",
        ready_s,
        interrupted_s,
        all_s,
    )


async def test_sigterm_lets_the_running_job_finish_closes_the_store_and_exits_within_30_s(
    workdir: Path, tiny_model_cache: Path
) -> None:
    async with deployment(workdir, tiny_model_cache) as bot:
        long = await queue_job(bot, "video", {"prompt": "last orders", **LONG_VIDEO}, user="bob")
        await wait_until_running(bot, long)
        behind = [
            await queue_job(bot, "imagine", {"prompt": f"after hours {i}", **TINY}, user="carol")
            for i in range(3)
        ]

        rc, took = await bot.terminate(timeout=30)
        assert rc == 0 and took < 30, (rc, took)
        log_text = bot.log_text()
        assert "stopped cleanly" in log_text
        # the store was closed: its last connection checkpointed the WAL into the database file
        wal = bot.db_path.with_name(bot.db_path.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0

        jobs = {job.id[:8]: job for job in (await bot.read_jobs()).values()}
        running = jobs[long]
        if running.state is JobState.COMPLETE:  # finished within the grace period, and delivered
            assert running.attempts == 1 and running.result_message_id is not None
            assert len(results_for(bot.discord, long)) == 1
        else:  # stopped at a step and put back without losing a try
            assert running.state is JobState.QUEUED and running.attempts == 0, running
        for short in behind:  # nothing new starts once the stop was asked for
            assert jobs[short].state is JobState.QUEUED and jobs[short].attempts == 0

        # back up: what was left is served
        await bot.start()
        for short in [long, *behind]:
            await result_message(bot, short, timeout=120)
        # a member can still use the bot as usual after the restart
        reply = await private_reply(
            await bot.discord.invoke_slash(
                "queue status",
                {},
                user=bot.members["carol"],
                guild=bot.art,
                channel=bot.art.channel("general"),
            )
        )
        assert "**Queue:**" in reply.content and not QUEUED.search(reply.content)
        for short in [long, *behind]:
            await bot.discord.wait_until(
                lambda s=short: status_message(bot, s).deleted, timeout=10, what=f"status of {short} deleted"
            )
        assert (await bot.terminate())[0] == 0
        # the bot is gone: whatever it posted is all it will ever post, once per job
        for short in [long, *behind]:
            assert len(results_for(bot.discord, short)) == 1
    log.info("SIGTERM: exited with %d after %.1f s (running job: %s)", rc, took, running.state.value)


async def test_a_result_posted_just_before_a_crash_is_not_posted_again_where_history_is_closed(
    workdir: Path, tiny_model_cache: Path
) -> None:
    """The upload reached Discord, its answer never reached the bot, and the bot died: on restart the
    result is offered again, and its nonce makes Discord hand back the first message, although the
    bot may not read that channel's history to look for it."""
    async with deployment(workdir, tiny_model_cache, module="tests.reliability.faulty_bot") as bot:
        channel = bot.art.channel("no-history")
        bot.discord.set_bot_permissions(channel, BOT_PERMISSIONS & ~Perm.READ_MESSAGE_HISTORY)
        short = await queue_job(
            bot, "imagine", {"prompt": "a last picture [slow:1]", **TINY}, user="dave", channel="no-history"
        )
        # the status message is out; the next post there is the result: serve it, hold its answer
        bot.discord.fail_next(
            "POST", rf"/channels/{channel.id}/messages$", 500, after_serving=True, delay_s=120
        )
        posted = await result_message(bot, short, timeout=60)
        await bot.kill()

        await bot.start()
        await bot.discord.wait_until(
            lambda: status_message(bot, short).deleted, timeout=60, what="delivery after the restart"
        )
        assert results_for(bot.discord, short) == [posted]
        assert bot.discord.calls_to("GET", rf"/channels/{channel.id}/messages$") == []
        await bot.terminate()
    (job,) = [j for j in (await bot.read_jobs()).values() if j.id.startswith(short)]
    assert job.result_message_id == str(posted.id)
