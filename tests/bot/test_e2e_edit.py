"""Edit on a result: a form prefilled with the prompts, queued again with the same seed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.bot.conftest import BotProcess
from tests.bot.test_e2e import QUEUED, TINY, job_id_of, queue_job, result_message
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
    assert [c["label"] for c in original.buttons] == ["Reroll", "Edit", "Delete", "Animate"]

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
