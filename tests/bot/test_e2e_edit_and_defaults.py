"""Iterating through saved choices: Edit on a result (a prefilled form, queued again with the same
seed), and saved defaults: /settings, /admin defaults and /preset applied to the next request."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.bot.conftest import BotProcess
from tests.bot.test_e2e import QUEUED, TINY, ask, job_id_of, private_reply, queue_job, result_message
from tests.fake_discord import FakeInteraction

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def text_inputs(components: list[dict]) -> Iterator[dict]:
    """The form's inputs, whether wrapped in action rows or in labels (type 18)."""
    for row in components:
        yield from row.get("components") or []
        if row.get("component"):
            yield row["component"]


async def test_edit_opens_a_prefilled_form_and_queues_the_new_wording_with_the_same_seed(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    options = {"prompt": "a red fox", "negative_prompt": "blurry", **TINY, "seed": 4321}
    short = await queue_job(bot, "imagine", options, user="erin")
    original = await result_message(bot, short)
    job_id = job_id_of(original)
    assert [c["label"] for c in original.buttons] == ["Reroll", "Edit", "Delete", "Animate", "Upscale"]

    click = await bot.discord.click(original, f"job:edit:{job_id}", user=bot.members["erin"])
    form = await click.wait_for_response()
    assert form.kind == "modal" and form.data["custom_id"] == f"edit:{job_id}"
    prefilled = {c["custom_id"]: c.get("value") for c in text_inputs(form.data["components"])}
    assert prefilled == {"edit:prompt": "a red fox", "edit:negative_prompt": "blurry"}

    submitted: FakeInteraction = await bot.discord.submit_modal(
        click, {"edit:prompt": "a blue fox", "edit:negative_prompt": "dark"}
    )
    reply = await submitted.wait_for_followup(timeout=15)
    assert reply.ephemeral and "same seed" in reply.content
    match = QUEUED.search(reply.content)
    assert match, reply.content
    edited = await result_message(bot, match.group(1))
    picture = Image.open(io.BytesIO(edited.attachment.data))
    assert picture.text["seed"] == "4321"
    assert picture.text["prompt"] == "a blue fox" and picture.text["negative_prompt"] == "dark"
    assert picture.size == (64, 64)

    # /history names the result it was edited from, as a jump link to that message
    history = await private_reply(await ask(bot, "history", {}, user="erin"))
    fields = {f["name"].split("`")[1]: f["value"] for f in history.embed["fields"]}
    original_link = f"https://discord.com/channels/{bot.art.id}/{original.channel_id}/{original.id}"
    assert f"edited from [`{short}`]({original_link})" in fields[match.group(1)]


async def test_an_edit_with_an_empty_prompt_is_refused_privately(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "a green fox", **TINY}, user="frank")
    original = await result_message(bot, short)
    click = await bot.discord.click(original, f"job:edit:{job_id_of(original)}", user=bot.members["frank"])
    await click.wait_for_response()
    submitted = await bot.discord.submit_modal(click, {"edit:prompt": "\x07", "edit:negative_prompt": ""})
    reply = await submitted.wait_for_followup(timeout=15)
    assert reply.ephemeral and "prompt is empty" in reply.content.lower()
    assert not QUEUED.search(reply.content)


SIZE = {"width": 64, "height": 64}


def stored_params(bot: BotProcess, short: str) -> dict:
    with sqlite3.connect(bot.workdir / "bot.db") as db:
        (data,) = db.execute("SELECT data FROM jobs WHERE id LIKE ?", (f"{short}%",)).fetchone()
    return json.loads(data)["params"]


async def answer(bot: BotProcess, command: str, options: dict, *, user: str, channel: str = "general") -> str:
    """The private answer of a command that replies at once (no deferral)."""
    response = await (await ask(bot, command, options, user=user, channel=channel)).wait_for_response()
    assert response.ephemeral, response
    return response.content


async def test_settings_and_channel_defaults_apply_to_the_next_imagine_member_first(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    text = await answer(bot, "admin defaults", {"steps": 5, "guidance": 2.5}, user="admin", channel="studio")
    assert "steps: 5" in text and "guidance: 2.5" in text
    text = await answer(
        bot, "settings", {"steps": 3, "negative_prompt": "murky water", "count": 2}, user="grace"
    )
    assert "steps: 3" in text and "murky water" in text and "count: 2" in text
    assert "steps: 3" in await answer(bot, "settings", {}, user="grace")  # shown again, unchanged

    short = await queue_job(
        bot, "imagine", {"prompt": "a lighthouse", **SIZE}, user="grace", channel="studio"
    )
    grid = await result_message(bot, short)
    params = stored_params(bot, short)
    # the member's steps beat the channel's; the channel's guidance fills what the member left out
    assert (params["steps"], params["guidance"], params["count"]) == (3, 2.5, 2)
    assert params["negative_prompt"] == "murky water"
    assert [c["label"] for c in grid.buttons][:4] == ["U1", "U2", "V1", "V2"]
    history = await private_reply(await ask(bot, "history", {}, user="grace"))
    assert "grid of 2" in history.embed["fields"][0]["value"]
    # the request itself beats every default
    short = await queue_job(
        bot, "imagine", {"prompt": "a pier", **TINY, "count": 1}, user="grace", channel="studio"
    )
    await result_message(bot, short)
    assert (stored_params(bot, short)["steps"], stored_params(bot, short)["count"]) == (2, 1)


async def test_a_preset_round_trip_save_list_pick_use_delete(running_bot: BotProcess) -> None:
    bot = running_bot
    text = await answer(bot, "preset save", {"name": "quick look", "steps": 4, "guidance": 6.0}, user="heidi")
    assert "quick look" in text and "steps: 4" in text
    assert "quick look" in await answer(bot, "preset list", {}, user="heidi")
    typing = await bot.discord.autocomplete(
        "imagine", {"prompt": "x", "preset": "qu"}, focused="preset", user=bot.members["heidi"]
    )
    assert [c["value"] for c in (await typing.wait_for_response()).choices] == ["quick look"]

    short = await queue_job(
        bot, "imagine", {"prompt": "a kite", **SIZE, "preset": "quick look"}, user="heidi"
    )
    await result_message(bot, short)
    assert (stored_params(bot, short)["steps"], stored_params(bot, short)["guidance"]) == (4, 6.0)

    assert "Deleted" in await answer(bot, "preset delete", {"name": "quick look"}, user="heidi")
    refused = await ask(bot, "imagine", {"prompt": "a kite", **SIZE, "preset": "quick look"}, user="heidi")
    reply = await private_reply(refused)
    assert "no preset named" in reply.content and not QUEUED.search(reply.content)


@pytest.mark.parametrize(
    ("command", "given", "user"),
    [("settings", {}, "grace"), ("preset save", {"name": "p"}, "heidi"), ("admin defaults", {}, "admin")],
)
async def test_the_model_options_of_every_defaults_command_suggest_the_models_of_their_kind(
    running_bot: BotProcess, command: str, given: dict[str, str], user: str
) -> None:
    bot = running_bot
    offered = {}
    for option, typed in (("image_model", "tiny"), ("video_model", "tiny-v")):
        typing = await bot.discord.autocomplete(
            command, {**given, option: typed}, focused=option, user=bot.members[user], channel="studio"
        )
        offered[option] = [c["value"] for c in (await typing.wait_for_response()).choices]
    # each option offers only what it may hold: no video model for pictures, no upscaler at all
    assert "tiny-image" in offered["image_model"] and "tiny-video" not in offered["image_model"]
    assert "tiny-upscale" not in offered["image_model"]
    assert offered["video_model"] and all(v.startswith("tiny-v") for v in offered["video_model"])
    assert "tiny-video" in offered["video_model"]
