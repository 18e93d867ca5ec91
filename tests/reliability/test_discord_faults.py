"""Discord's own failure modes, imitated by the fake, against the real bot process.

Already covered in tests/bot/test_e2e.py and not repeated here: 413/40005 on upload (the
result arrives as a signed link with a poster) and 50027 after the interaction token expired
(the result is posted with the bot token). Here: an interaction Discord no longer knows
(10062), rate limits and server errors on the calls that carry results and progress, and the
gateway connection dropped or invalidated while a job runs.
"""

from __future__ import annotations

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
from tests.fake_discord import FakeMessage
from tests.reliability.conftest import Deployment, deployment, results_for, wait_for

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, pytest.mark.timeout(300)]

#: several seconds on the tiny twin, so faults can land while it runs
LONG_VIDEO = {"steps": 50, "frames": 64, "fps": 8}
CHANNEL_MESSAGES = r"/channels/\d+/messages$"
STATUS_EDIT = r"/channels/\d+/messages/\d+$"
STEP = re.compile(r"step (\d+)/")
#: what the bot logs when it gives up an interaction Discord no longer knows (10062)
EXPIRED = "the interaction expired before it was answered (10062)"


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
        # the error handler's last act on this interaction: after this line it returns, sending nothing
        await wait_for(
            lambda: EXPIRED in bot.log_text()[log_mark:],
            timeout=15,
            what="the bot to give the interaction up",
        )
    finally:
        bot.discord.interaction_deadline_s = 3.0
    calls = bot.discord.calls[calls_before:]
    about_it = [c for c in calls if interaction.token in c.path]
    assert len(about_it) == 1 and interaction.late_callbacks == 1, about_it  # the deferral, no retry
    assert interaction.response is None
    assert not [c for c in calls if re.search(CHANNEL_MESSAGES, c.path)]  # nothing was queued
    assert bot.log_text()[log_mark:].count(EXPIRED) == 1  # logged once
    assert not bot.bad_log_lines(since=log_mark), bot.bad_log_lines(since=log_mark)
    # the next member is served as usual
    short = await queue_job(bot, "imagine", {"prompt": "on time", **TINY}, user="bob")
    assert (await result_message(bot, short)).attachment is not None


async def wait_for_status_message(bot: Deployment, short: str) -> FakeMessage:
    await bot.discord.wait_until(
        lambda: any(f"`{short}`" in m.versions[0].content for m in bot.discord.messages()),
        timeout=15,
        what=f"the status message of {short}",
    )
    return status_message(bot, short)


async def wait_delivered(bot: Deployment, short: str, status: FakeMessage) -> FakeMessage:
    """The result, once delivery is over: the bot deletes the status message after the result
    is posted and recorded, so nothing of this delivery is still under way after that."""
    message = await result_message(bot, short, timeout=90)
    await bot.discord.wait_until(lambda: status.deleted, timeout=30, what=f"status of {short} replaced")
    return message


async def test_a_progress_edit_that_meets_a_server_error_is_retried_and_the_member_sees_it(
    bot: Deployment,
) -> None:
    log_mark = len(bot.log_text())
    short = await queue_job(bot, "video", {"prompt": "a shaky link", **LONG_VIDEO}, user="grace")
    status = await wait_for_status_message(bot, short)
    # the job runs for several progress intervals: its next progress edit meets the 500
    edits = bot.discord.fail_next("PATCH", STATUS_EDIT, 500, times=1)
    try:
        message = await wait_delivered(bot, short, status)
    finally:
        bot.discord.clear_faults()
    assert edits.hits == 1
    patches = bot.discord.calls_to("PATCH", rf"/channels/\d+/messages/{status.id}$")
    # an edit already in flight when the fault was armed may come first: judge the one that met it
    statuses = [c.status for c in patches]
    assert statuses.count(500) == 1, patches
    failed, retry = patches[statuses.index(500)], patches[statuses.index(500) + 1]
    assert retry.status == 200, patches
    # the same edit went through on the retry, and the member saw it before the result replaced it
    assert retry.body["content"] == failed.body["content"]
    assert failed.body["content"] in [v.content for v in status.versions]
    assert message.attachment is not None and len(results_for(bot.discord, short)) == 1
    new_log = bot.log_text()[log_mark:]
    assert "status edit failed" not in new_log  # discord.py's retry absorbed it; nothing was skipped
    assert not bot.bad_log_lines(since=log_mark), bot.bad_log_lines(since=log_mark)


async def test_rate_limits_and_server_errors_on_the_result_post_are_retried_and_it_arrives_once(
    bot: Deployment,
) -> None:
    short = await queue_job(
        bot, "video", {"prompt": "through the storm", **TINY_VIDEO, "steps": 20}, user="carol"
    )
    status = await wait_for_status_message(bot, short)
    # the status message is up; the next post to the channel is the result
    limited = bot.discord.fail_next("POST", CHANNEL_MESSAGES, 429, retry_after=0.3, times=2)
    broken = bot.discord.fail_next("POST", CHANNEL_MESSAGES, 502, times=1)
    try:
        message = await wait_delivered(bot, short, status)
    finally:
        bot.discord.clear_faults()
    assert limited.hits == 2 and broken.hits == 1
    assert message.attachment is not None and len(results_for(bot.discord, short)) == 1
    posts = bot.discord.calls_to("POST", CHANNEL_MESSAGES)[-4:]
    assert [c.status for c in posts] == [429, 429, 502, 200], posts


async def test_gateway_drop_and_invalidated_session_leave_the_queue_and_progress_untouched(
    bot: Deployment,
) -> None:
    resumes, identifies = bot.discord.resumes, bot.discord.identifies
    since = time.monotonic()
    long = await queue_job(bot, "video", {"prompt": "a long take", **LONG_VIDEO}, user="dave")
    behind = await queue_job(bot, "imagine", {"prompt": "next in line", **TINY}, user="erin")
    status = status_message(bot, long)
    await bot.discord.wait_until(  # running, and long enough for the heartbeat check below to judge
        lambda: (m := STEP.search(status.content)) is not None
        and int(m.group(1)) >= 1
        and sum(h.at >= since for h in bot.discord.heartbeats) >= 3,
        timeout=60,
        what="the long job to run through three heartbeats",
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
        await wait_delivered(bot, short, status_message(bot, short))
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
