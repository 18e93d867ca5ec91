"""Discord's own failure modes, imitated by the fake, against the real bot process.

Already covered in tests/bot/test_e2e.py and not repeated here: 413/40005 on upload (the
result arrives as a signed link with a poster) and 50027 after the interaction token expired
(the result is posted with the bot token). Here: an interaction Discord no longer knows
(10062), rate limits and server errors on the calls that carry results and progress, and the
gateway connection dropped or invalidated while a job runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.core.jobs import JobState
from tests.bot.test_e2e import TINY, TINY_VIDEO, ask, queue_job, result_message, status_message
from tests.reliability.conftest import Deployment, deployment, results_for

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, pytest.mark.timeout(300)]

#: several seconds on the tiny twin, so faults can land while it runs
LONG_VIDEO = {"steps": 50, "frames": 64, "fps": 8}
CHANNEL_MESSAGES = r"/channels/\d+/messages$"
STEP = re.compile(r"step (\d+)/")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> AsyncIterator[Deployment]:
    # 1 s heartbeats, so a dropped connection and a blocked loop both show within seconds
    async with deployment(
        tmp_path_factory.mktemp("discord-faults"), tiny_model_cache, heartbeat_interval_ms=1000
    ) as running:
        yield running


async def test_an_interaction_discord_no_longer_knows_is_logged_once_without_a_retry_storm(
    bot: Deployment,
) -> None:
    log_mark = len(bot.log_text())
    calls_before = len(bot.discord.calls)
    bot.discord.interaction_deadline_s = 0.0  # every answer is too late: Discord says 10062
    try:
        interaction = await ask(bot, "imagine", {"prompt": "too late", **TINY}, user="alice")
        await bot.discord.wait_until(
            lambda: interaction.late_callbacks >= 1, timeout=10, what="the bot's (late) answer"
        )
        await asyncio.sleep(2.0)  # room for any retry or error reply the bot would still make
    finally:
        bot.discord.interaction_deadline_s = 3.0
    calls = bot.discord.calls[calls_before:]
    about_it = [c for c in calls if interaction.token in c.path]
    assert len(about_it) == 1, about_it  # the deferral, and no retry or error reply after it
    assert interaction.response is None
    assert not [c for c in calls if re.search(CHANNEL_MESSAGES, c.path)]  # nothing was queued
    new_log = bot.log_text()[log_mark:]
    assert "10062" in new_log or "Unknown interaction" in new_log
    assert not bot.bad_log_lines(since=log_mark), bot.bad_log_lines(since=log_mark)
    # the next member is served as usual
    short = await queue_job(bot, "imagine", {"prompt": "on time", **TINY}, user="bob")
    assert (await result_message(bot, short)).attachment is not None


async def test_rate_limits_and_server_errors_are_retried_and_the_result_arrives_once(
    bot: Deployment,
) -> None:
    short = await queue_job(
        bot, "video", {"prompt": "through the storm", **TINY_VIDEO, "steps": 20}, user="carol"
    )
    # the status message is up; progress edits and the result post now meet 429s and 5xxs
    edits = bot.discord.fail_next("PATCH", r"/channels/\d+/messages/\d+$", 500, times=1)
    limited = bot.discord.fail_next("POST", CHANNEL_MESSAGES, 429, retry_after=0.3, times=2)
    broken = bot.discord.fail_next("POST", CHANNEL_MESSAGES, 502, times=1)
    message = await result_message(bot, short, timeout=90)
    await asyncio.sleep(1.0)
    assert limited.hits == 2 and broken.hits == 1
    assert message.attachment is not None and len(results_for(bot.discord, short)) == 1
    posts = bot.discord.calls_to("POST", CHANNEL_MESSAGES)[-4:]
    assert [c.status for c in posts] == [429, 429, 502, 200], posts
    bot.discord.clear_faults()
    log.info("edit faults hit: %d", edits.hits)


async def test_gateway_drop_and_invalidated_session_leave_the_queue_and_progress_untouched(
    bot: Deployment,
) -> None:
    resumes, identifies = bot.discord.resumes, bot.discord.identifies
    since = time.monotonic()
    long = await queue_job(bot, "video", {"prompt": "a long take", **LONG_VIDEO}, user="dave")
    behind = await queue_job(bot, "imagine", {"prompt": "next in line", **TINY}, user="erin")
    status = status_message(bot, long)
    await bot.discord.wait_until(
        lambda: (m := STEP.search(status.content)) is not None and int(m.group(1)) >= 1,
        timeout=60,
        what="the long job to run",
    )

    dropped_at = time.monotonic()
    await bot.discord.drop_gateway()  # a network blip: discord.py reconnects and RESUMEs
    await bot.discord.wait_until(
        lambda: bot.discord.resumes > resumes and bot.discord.connected, timeout=30, what="a RESUME"
    )
    # a member's command sent right after the blip is answered
    late = await queue_job(bot, "imagine", {"prompt": "after the blip", **TINY}, user="frank")

    await bot.discord.invalidate_session()  # Discord forgets the session: a fresh IDENTIFY
    await bot.discord.wait_until(
        lambda: bot.discord.identifies > identifies and bot.discord.connected, timeout=30, what="IDENTIFY"
    )
    for short in (long, behind, late):
        await result_message(bot, short, timeout=120)
    await asyncio.sleep(1.0)
    for short in (long, behind, late):
        assert len(results_for(bot.discord, short)) == 1

    # progress kept being shown after the drop, counting up, never starting over
    steps = [int(m.group(1)) for v in status.versions if (m := STEP.search(v.content))]
    after_drop = [
        int(m.group(1)) for v in status.versions if v.at > dropped_at and (m := STEP.search(v.content))
    ]
    assert steps == sorted(steps) and after_drop, steps
    # the job ran once: the reconnects did not restart the queue or the worker
    jobs = {job.id[:8]: job for job in (await bot.read_jobs()).values()}
    assert jobs[long].state is JobState.COMPLETE and jobs[long].attempts == 1
    start_log = bot.log_text().rsplit("===== start", 1)[-1]
    assert start_log.count("queue started as") == 1
    # generation never blocked the bot's loop: heartbeats kept their 1 s beat while the job ran
    beats = [h.at for h in bot.discord.heartbeats if since <= h.at <= dropped_at]
    assert len(beats) >= 2 and max(b - a for a, b in itertools.pairwise(beats)) < 2.0, beats
