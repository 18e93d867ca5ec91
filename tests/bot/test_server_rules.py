"""The rules behind the server settings, without a bot process: what the bot needs in a channel,
its invite link, and what each NSFW policy does with a flagged picture."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import discord
import pytest

from bot.core.jobs import Job
from bot.core.moderation import nsfw_action, refused_as_nsfw
from bot.core.results import JobResult
from bot.discord_ui.delivery import NONCE_CHARS, may_read_history, result_nonce
from bot.discord_ui.permissions import BotLacksPermissions, invite_url, missing_in

log = logging.getLogger(__name__)

EVERYTHING = discord.Permissions(view_channel=True, send_messages=True, embed_links=True, attach_files=True)


def test_missing_permissions_are_named_in_discords_words() -> None:
    assert missing_in(EVERYTHING) == []
    no_files = discord.Permissions(EVERYTHING.value)
    no_files.attach_files = False
    assert missing_in(no_files) == ["Attach Files"]
    assert missing_in(discord.Permissions.none()) == [
        "View Channel",
        "Send Messages",
        "Embed Links",
        "Attach Files",
    ]
    # in a thread Discord checks Send Messages in Threads instead of Send Messages
    assert missing_in(EVERYTHING, in_thread=True) == ["Send Messages in Threads"]
    text = BotLacksPermissions(["Send Messages", "Embed Links", "Attach Files"]).message
    assert "**Send Messages**, **Embed Links** and **Attach Files** permissions" in text


def test_the_invite_asks_for_exactly_what_the_bot_needs() -> None:
    query = parse_qs(urlsplit(invite_url(123)).query)
    assert query["client_id"] == ["123"]
    assert query["scope"] == ["bot applications.commands"]
    assert discord.Permissions(int(query["permissions"][0])) == EVERYTHING


def test_one_nonce_per_job_within_discords_limit() -> None:
    job_id = "0123456789abcdef0123456789abcdef"
    assert result_nonce(job_id) == result_nonce(job_id) and len(result_nonce(job_id)) == NONCE_CHARS
    assert result_nonce(job_id) != result_nonce("f" * 32)


def make_job(**fields: object) -> Job:
    return Job(kind="image", model="tiny-image", prompt="p", params={}, user_id="1", user_name="m", **fields)


def test_history_is_read_only_where_discord_said_the_bot_may() -> None:
    readable = discord.Permissions(EVERYTHING.value)
    readable.read_message_history = True
    assert may_read_history(make_job(bot_permissions=readable.value))
    assert not may_read_history(make_job(bot_permissions=EVERYTHING.value))
    assert not may_read_history(make_job(bot_permissions=None))  # asked before this was recorded


@pytest.mark.parametrize(
    ("policy", "nsfw_channel", "action"),
    [
        ("blackout", True, "blackout"),
        ("spoiler", True, "spoiler"),
        ("spoiler", False, "blackout"),
        ("refuse", False, "refuse"),
        ("block", True, "blackout"),  # an unknown stored value blacks out, as diffusers does
    ],
)
def test_each_policy_gives_its_action(policy: str, nsfw_channel: bool, action: str) -> None:
    assert nsfw_action(policy, channel_is_nsfw=nsfw_channel) == action


def test_only_a_flagged_picture_under_refuse_goes_uncharged() -> None:
    result = JobResult(
        path="x.png",
        media_type="image/png",
        size_bytes=1,
        poster_path=None,
        width=8,
        height=8,
        frames=1,
        fps=None,
    )
    flagged = JobResult(**{**result.to_dict(), "nsfw_detected": True})
    assert refused_as_nsfw(make_job(nsfw_action="refuse"), flagged)
    assert not refused_as_nsfw(make_job(nsfw_action="refuse"), result)
    assert not refused_as_nsfw(make_job(nsfw_action="spoiler"), flagged)
    assert not refused_as_nsfw(make_job(nsfw_action="refuse"), None)
