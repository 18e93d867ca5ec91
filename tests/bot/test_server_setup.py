"""A server owner's first day: channel permissions, the invite link, and settings that do what they say.

One `python -m bot` for the module (the same world as the e2e stories), with the safety checker
on, so the tiny twin whose checker flags every picture (`tiny-image-flagged`) exercises the NSFW
policies through the real diffusers safety-checker code.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.core.store.sqlite import SQLiteStore
from tests.bot.conftest import BotProcess, bot_process
from tests.bot.test_e2e import TINY, ask, private_reply, queue_job, result_message, status_message
from tests.fake_discord import BOT_PERMISSIONS, FakeMessage, Perm

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


# -- per-server pause ---------------------------------------------------------------------------------


async def test_an_admin_pauses_one_server_and_the_other_keeps_being_served(bot: BotProcess) -> None:
    done = await private_reply(await ask(bot, "admin pause", {"reason": "tidying up"}, user="admin"))
    assert "Paused on this server" in done.content
    try:
        refused = await private_reply(await ask(bot, "imagine", {"prompt": "not now", **TINY}, user="erin"))
        assert "paused the bot here" in refused.content and "Queued" not in refused.content
        assert await jobs_of(bot, "erin") == []
        overview = await private_reply(await ask(bot, "queue status", user="erin"))
        assert "paused on this server" in overview.content
        # alice is in the other server too: served there as usual
        short = await queue_job(bot, "imagine", {"prompt": "elsewhere", **TINY}, user="alice", guild="small")
        assert (await result_message(bot, short)).attachment is not None
    finally:
        resumed = await private_reply(await ask(bot, "admin resume", {}, user="admin"))
    assert "Resumed on this server" in resumed.content
    await result_message(bot, await queue_job(bot, "imagine", {"prompt": "now", **TINY}, user="erin"))


async def test_only_the_bots_owner_pauses_every_server(bot: BotProcess) -> None:
    everywhere = {"scope": "everywhere"}
    refused = await private_reply(await ask(bot, "admin pause", everywhere, user="admin"))
    assert "Only the bot's owner" in refused.content
    overview = await private_reply(await ask(bot, "queue status", user="frank"))
    assert "paused" not in overview.content

    owner = bot.art.owner  # the application's owner in the fake, and this server's
    art, general = bot.art, bot.art.channel("general")
    done = await private_reply(
        await bot.discord.invoke_slash("admin pause", everywhere, user=owner, guild=art, channel=general)
    )
    assert "Paused on every server" in done.content
    try:
        elsewhere = await private_reply(
            await ask(bot, "imagine", {"prompt": "x", **TINY}, user="alice", guild="small")
        )
        assert "paused" in elsewhere.content and "Queued" not in elsewhere.content
    finally:
        await private_reply(
            await bot.discord.invoke_slash("admin resume", everywhere, user=owner, guild=art, channel=general)
        )
    audit = await private_reply(await ask(bot, "admin audit", {"limit": 5}, user="admin"))
    assert "**pause**" in audit.content and "**resume**" in audit.content


# -- the public gallery ----------------------------------------------------------------------------------


async def status_page(bot: BotProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{bot.web_url}/") as response:
        assert response.status == 200
        return await response.text()


async def test_admin_gallery_puts_this_servers_results_on_the_status_page_and_takes_them_off(
    bot: BotProcess,
) -> None:
    short = await queue_job(bot, "imagine", {"prompt": "a gallery piece", **TINY}, user="frank")
    await result_message(bot, short)
    assert "a gallery piece" not in await status_page(bot)  # private until the admins say otherwise

    shown = await private_reply(await ask(bot, "admin gallery", {"public": True}, user="admin"))
    assert "now appear on the public status page" in shown.content
    assert "a gallery piece" in await status_page(bot)
    hidden = await private_reply(await ask(bot, "admin gallery", {"public": False}, user="admin"))
    assert "no longer appear" in hidden.content
    assert "a gallery piece" not in await status_page(bot)


# -- NSFW policy ------------------------------------------------------------------------------------------

FLAGGED = {**TINY, "model": "tiny-image-flagged"}


def safety_note(message: FakeMessage) -> str:
    fields = {f["name"]: f["value"] for f in message.embed["fields"]}
    return fields["⚠️ Safety checker"]


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def set_policy(bot: BotProcess, policy: str) -> None:
    reply = await private_reply(await ask(bot, "admin nsfw", {"policy": policy}, user="admin"))
    assert "Members are told which" in reply.content


async def test_a_flagged_picture_is_blacked_out_by_default_and_the_member_is_told(bot: BotProcess) -> None:
    short = await queue_job(bot, "imagine", {"prompt": "a flagged scene", **FLAGGED}, user="grace")
    message = await result_message(bot, short)
    assert "blacked out" in safety_note(message)
    assert message.attachment is not None and png_pixels(message.attachment.data).max() == 0


async def test_spoiler_policy_shows_the_picture_as_a_spoiler_only_in_age_restricted_channels(
    bot: BotProcess,
) -> None:
    await set_policy(bot, "spoiler")
    try:
        options = {"prompt": "a flagged night", **FLAGGED}
        adult = await result_message(
            bot, await queue_job(bot, "imagine", options, user="heidi", channel="after-dark")
        )
        public = await result_message(bot, await queue_job(bot, "imagine", options, user="heidi"))
    finally:
        await set_policy(bot, "blackout")
    assert adult.attachment is not None and adult.attachment.filename.startswith("SPOILER_")
    assert png_pixels(adult.attachment.data).max() > 0  # the picture as generated
    assert "image" not in adult.embed  # not shown un-spoilered in the embed
    assert "behind a spoiler" in safety_note(adult)
    assert public.attachment is not None and not public.attachment.filename.startswith("SPOILER_")
    assert png_pixels(public.attachment.data).max() == 0 and "blacked out" in safety_note(public)


async def test_refuse_policy_posts_no_picture_and_does_not_charge_the_member(bot: BotProcess) -> None:
    await set_policy(bot, "refuse")
    try:
        short = await queue_job(bot, "imagine", {"prompt": "a flagged dream", **FLAGGED}, user="stranger")
        message = await result_message(bot, short)
    finally:
        await set_policy(bot, "blackout")
    assert message.attachment is None and "image" not in message.embed
    assert "not counted against your quota" in safety_note(message)
    assert any(c["custom_id"].startswith("job:reroll:") for c in message.iter_components())
    (job,) = await jobs_of(bot, "stranger")
    assert job.nsfw_detected and job.nsfw_action == "refuse"
    assert job.gpu_seconds == 0 and job.timings["generate_s"] > 0  # the device time is still logged
