"""A server owner's first day: channel permissions, the invite link, and settings that do what they say.

One `python -m bot` for the module (the same world as the e2e stories), with the safety checker
on, so the tiny twin whose checker flags every picture (`tiny-image-flagged`) exercises the NSFW
policies through the real diffusers safety-checker code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.core.store.sqlite import SQLiteStore
from tests.bot.conftest import BotProcess, bot_process
from tests.bot.test_e2e import TINY, ask, private_reply, queue_job, result_message, status_message
from tests.fake_discord import BOT_PERMISSIONS, Perm

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> AsyncIterator[BotProcess]:
    async with bot_process(
        tmp_path_factory.mktemp("setup"), tiny_model_cache, env={"SAFETY_CHECKER": "true"}
    ) as running:
        yield running


async def jobs_of(bot: BotProcess, member: str) -> list:
    async with SQLiteStore(path=bot.workdir / "bot.db") as store:
        return await store.user_history(str(bot.members[member].user.id), limit=100)


def history_reads(bot: BotProcess, channel_id: int) -> list:
    return bot.discord.calls_to("GET", rf"/channels/{channel_id}/messages$")


# -- permissions at the door ------------------------------------------------------------------------


async def test_a_channel_without_read_message_history_gets_its_result_exactly_once(bot: BotProcess) -> None:
    channel = bot.art.channel("no-history")
    bot.discord.set_bot_permissions(channel, BOT_PERMISSIONS & ~Perm.READ_MESSAGE_HISTORY)
    short = await queue_job(
        bot, "imagine", {"prompt": "a quiet room", **TINY}, user="alice", channel="no-history"
    )
    message = await result_message(bot, short)
    assert message.channel_id == channel.id and message.attachment is not None
    await bot.discord.wait_until(lambda: status_message(bot, short).deleted, what="the status message gone")
    posted = [m for m in bot.discord.messages(channel, include_deleted=True) if m.embed]
    assert posted == [message]
    assert history_reads(bot, channel.id) == []  # delivery never needed the history


@pytest.mark.parametrize(
    ("denied", "named"),
    [
        (Perm.ATTACH_FILES, ["Attach Files"]),
        (Perm.SEND_MESSAGES | Perm.EMBED_LINKS, ["Send Messages", "Embed Links"]),
    ],
)
async def test_a_channel_the_bot_cannot_post_in_gets_a_private_refusal_and_no_gpu_work(
    bot: BotProcess, denied: Perm, named: list[str]
) -> None:
    channel = bot.art.channel("no-files")
    bot.discord.set_bot_permissions(channel, BOT_PERMISSIONS & ~denied)
    before = len(bot.discord.messages(channel, include_deleted=True))
    interaction = await ask(bot, "imagine", {"prompt": "lost work", **TINY}, user="bob", channel="no-files")
    reply = await private_reply(interaction)
    for name in named:
        assert f"**{name}**" in reply.content
    assert "nothing was queued" in reply.content and "Permissions" in reply.content
    assert await jobs_of(bot, "bob") == []
    assert len(bot.discord.messages(channel, include_deleted=True)) == before  # no status message


async def test_reroll_in_a_channel_that_lost_attach_files_is_refused_the_same_way(bot: BotProcess) -> None:
    channel = bot.art.channel("read-only")
    bot.discord.set_bot_permissions(channel, BOT_PERMISSIONS)
    short = await queue_job(
        bot, "imagine", {"prompt": "first try", **TINY}, user="carol", channel="read-only"
    )
    original = await result_message(bot, short)
    bot.discord.set_bot_permissions(channel, BOT_PERMISSIONS & ~Perm.ATTACH_FILES)
    job_id = original.embed["footer"]["text"].split()[1]
    reply = await private_reply(
        await bot.discord.click(original, f"job:reroll:{job_id}", user=bot.members["carol"])
    )
    assert "**Attach Files**" in reply.content and "nothing was queued" in reply.content
    assert [j.id for j in await jobs_of(bot, "carol")] == [job_id]


async def test_help_shows_the_invite_link_with_exactly_the_needed_permissions(bot: BotProcess) -> None:
    reply = await (await ask(bot, "help", user="dave")).wait_for_response()
    link = re.search(r"<(https://discord\.com/oauth2/authorize\?[^>]+)>", reply.content)
    assert link, reply.content
    needed = Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.EMBED_LINKS | Perm.ATTACH_FILES
    assert f"client_id={bot.discord.application_id}" in link.group(1)
    assert f"permissions={int(needed)}" in link.group(1)
    assert "scope=bot+applications.commands" in link.group(1)
    # and logged once the bot is ready (discord.py waits for every guild first)
    await bot.discord.wait_until(lambda: link.group(1) in bot.log_text(), timeout=15, what="invite logged")
