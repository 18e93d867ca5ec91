"""Iterating on a result: a grid of several images, and U1..U4 posting one of them alone."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from generation.media import GRID_PADDING
from tests.bot.conftest import BotProcess
from tests.bot.test_e2e import QUEUED, TINY, ask, job_id_of, private_reply, queue_job, result_message
from tests.fake_discord import FakeMessage
from tests.fake_discord.messages import FakeAttachment

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def jobs_stored(bot: BotProcess) -> int:
    with sqlite3.connect(bot.workdir / "bot.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def inputs_kept(bot: BotProcess) -> list[str]:
    return [p.name for p in (bot.workdir / "results" / "inputs").glob("*.png")]


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 90).save(out, format="PNG")
    return out.getvalue()


def labels(message: FakeMessage) -> list[str]:
    return [c["label"] for c in message.buttons]


async def test_count_four_posts_one_grid_and_u2_posts_image_two_alone_without_a_job(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    short = await queue_job(
        bot, "imagine", {"prompt": "four foxes", **TINY, "seed": 500, "count": 4}, user="alice"
    )
    grid_message = await result_message(bot, short)
    job_id = job_id_of(grid_message)

    grid = Image.open(io.BytesIO(grid_message.attachment.data))
    assert grid.size == (2 * 64 + GRID_PADDING, 2 * 64 + GRID_PADDING)
    assert labels(grid_message) == [
        *(f"U{n}" for n in range(1, 5)),
        *(f"V{n}" for n in range(1, 5)),
        "Reroll",
        "Edit",
        "Delete",
        "Animate",
    ]
    assert len(grid_message.components) == 3  # U row, V row, Reroll, Edit, Delete and Animate (image 1)
    fields = {f["name"]: f["value"] for f in grid_message.embed["fields"]}
    assert fields["Seeds"] == "500, 501, 502, 503"
    kept = sorted(p.name for p in (bot.workdir / "results").rglob(f"{job_id}.*.png"))
    assert kept == [f"{job_id}.{n}.png" for n in range(1, 5)]

    jobs_before = jobs_stored(bot)
    click = await bot.discord.click(grid_message, f"job:u2:{job_id}", user=bot.members["bob"])
    reply = await private_reply(click)
    assert "image 2" in reply.content

    def is_image_two(m: FakeMessage) -> bool:
        found = {f["name"]: f["value"] for f in (m.embed or {}).get("fields", [])}
        return found.get("Image") == f"2 of 4 from `{short}`"

    alone = await bot.discord.wait_for_message(is_image_two, timeout=15)
    picture = Image.open(io.BytesIO(alone.attachment.data))
    assert picture.size == (64, 64)
    assert picture.text["seed"] == "501"
    assert {f["name"]: f["value"] for f in alone.embed["fields"]}["Seed"] == "501"
    assert labels(alone) == ["Reroll", "Edit", "Delete", "Animate", "Upscale"]
    assert f"job:animate2:{job_id}" in [c["custom_id"] for c in alone.buttons]  # animates image 2
    assert alone.pings().users == {bot.members["bob"].user.id}
    # the same pixels as tile 2 of the grid (top right): no new generation
    tile = grid.convert("RGB").crop((64 + GRID_PADDING, 0, 2 * 64 + GRID_PADDING, 64))
    assert tile.tobytes() == picture.convert("RGB").tobytes()
    assert jobs_stored(bot) == jobs_before


async def test_a_count_over_four_is_refused_privately_and_queues_nothing(running_bot: BotProcess) -> None:
    bot = running_bot
    jobs_before = jobs_stored(bot)
    with pytest.raises(Exception, match="count"):  # Discord itself enforces the declared range
        await ask(bot, "imagine", {"prompt": "nine cats", **TINY, "count": 9}, user="carol")
    assert jobs_stored(bot) == jobs_before


async def test_v1_queues_a_variation_of_image_one_with_a_new_seed_and_the_same_count(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    options = {"prompt": "two owls", **TINY, "seed": 70, "count": 2}
    short = await queue_job(bot, "imagine", options, user="carol")
    original = await result_message(bot, short)
    inputs_before = len(inputs_kept(bot))
    click = await bot.discord.click(original, f"job:v1:{job_id_of(original)}", user=bot.members["dave"])
    reply = await private_reply(click)
    assert "variation of image 1" in reply.content.lower()
    variation = await result_message(bot, QUEUED.search(reply.content).group(1))
    fields = {f["name"]: f["value"] for f in variation.embed["fields"]}
    assert fields["Variation of"] == f"`{short}`"
    assert fields["Seeds"] != "70, 71"
    assert labels(variation)[:4] == ["U1", "U2", "V1", "V2"]
    grid = Image.open(io.BytesIO(variation.attachment.data))
    assert grid.size == (2 * 64 + GRID_PADDING, 64)
    assert variation.pings().users == {bot.members["dave"].user.id}
    # the picture it started from is kept under the results folder, for a restart or a worker
    assert len(inputs_kept(bot)) == inputs_before + 1


async def test_imagine_from_an_uploaded_picture_keeps_it_under_the_results_folder(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    inputs_before = len(inputs_kept(bot))
    upload = FakeAttachment(filename="start.png", data=png((80, 60)))
    options = {"prompt": "the same scene at night", **TINY, "steps": 4, "image": upload, "strength": 0.5}
    short = await queue_job(bot, "imagine", options, user="erin")
    message = await result_message(bot, short)
    picture = Image.open(io.BytesIO(message.attachment.data))
    assert picture.size == (64, 64)
    kept = inputs_kept(bot)
    assert len(kept) == inputs_before + 1
    with sqlite3.connect(bot.workdir / "bot.db") as db:
        (data,) = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id_of(message),)).fetchone()
    params = json.loads(data)["params"]
    assert params["strength"] == 0.5
    assert Path(params["image"]).name in kept  # listed from the disk


@pytest.mark.parametrize(
    ("upload", "words"),
    [
        (FakeAttachment(filename="notes.png", data=b"just some text, not a picture\n"), "not a readable"),
        (FakeAttachment(filename="huge.png", data=png((8000, 6400), mode="L")), "pixels"),
    ],
    ids=["text-file", "50-megapixels"],
)
async def test_a_bad_picture_is_refused_privately_and_queues_nothing(
    running_bot: BotProcess, upload: FakeAttachment, words: str
) -> None:
    bot = running_bot
    jobs_before, inputs_before = jobs_stored(bot), len(inputs_kept(bot))
    interaction = await ask(bot, "imagine", {"prompt": "from this", **TINY, "image": upload}, user="frank")
    reply = await private_reply(interaction)
    assert words in reply.content and "Traceback" not in reply.content
    assert jobs_stored(bot) == jobs_before and len(inputs_kept(bot)) == inputs_before


async def test_a_strength_over_one_is_refused_before_the_bot_sees_it(running_bot: BotProcess) -> None:
    bot = running_bot
    jobs_before = jobs_stored(bot)
    with pytest.raises(Exception, match="strength"):
        await ask(bot, "imagine", {"prompt": "x", **TINY, "strength": 2}, user="carol")
    assert jobs_stored(bot) == jobs_before


async def test_upscale_on_a_single_image_posts_a_four_times_larger_png_upscaled_from_it(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "a lighthouse", **TINY, "seed": 9}, user="alice")
    original = await result_message(bot, short)
    job_id = job_id_of(original)
    assert f"job:upscale1:{job_id}" in [c["custom_id"] for c in original.buttons]
    click = await bot.discord.click(original, f"job:upscale1:{job_id}", user=bot.members["bob"])
    reply = await private_reply(click)
    upscaled = await result_message(bot, QUEUED.search(reply.content).group(1))
    picture = Image.open(io.BytesIO(upscaled.attachment.data))
    assert picture.format == "PNG" and picture.size == (4 * 64, 4 * 64)  # the tiny twin's VAE is x4
    fields = {f["name"]: f["value"] for f in upscaled.embed["fields"]}
    assert fields["Model"] == "tiny-upscale" and fields["Upscaled from"] == f"`{short}`"
    assert "Upscale" not in labels(upscaled) and "Animate" not in labels(upscaled)
    assert upscaled.pings().users == {bot.members["bob"].user.id}


async def test_the_upscale_message_command_downloads_the_picture_and_upscales_it(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    assert bot.discord.command("Upscale")["type"] == 3  # a message command, accepted by the fake's checks
    short = await queue_job(bot, "imagine", {"prompt": "a harbour", **TINY, "seed": 4}, user="carol")
    original = await result_message(bot, short)
    inputs_before = len(inputs_kept(bot))
    interaction = await bot.discord.invoke_message_command("Upscale", original, user=bot.members["dave"])
    reply = await private_reply(interaction)
    upscaled = await result_message(bot, QUEUED.search(reply.content).group(1))
    assert Image.open(io.BytesIO(upscaled.attachment.data)).size == (256, 256)
    assert {f["name"]: f["value"] for f in upscaled.embed["fields"]}["Model"] == "tiny-upscale"
    assert len(inputs_kept(bot)) == inputs_before + 1  # downloaded and kept like any input


async def test_the_upscale_message_command_on_a_message_without_a_picture_is_refused_privately(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    await queue_job(bot, "imagine", {"prompt": "a quay", **TINY, "seed": 6}, user="carol")
    text_only = next(m for m in bot.discord.messages() if not m.attachments and not m.deleted)
    jobs_before = jobs_stored(bot)
    interaction = await bot.discord.invoke_message_command("Upscale", text_only, user=bot.members["dave"])
    reply = await private_reply(interaction)
    assert "no picture to upscale" in reply.content and "Traceback" not in reply.content
    assert jobs_stored(bot) == jobs_before


async def test_the_upscaler_is_not_offered_or_accepted_as_a_text_to_image_model(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    suggestions = await bot.discord.autocomplete("imagine", {"model": "tiny"}, focused="model", user="carol")
    offered = [c["value"] for c in (await suggestions.wait_for_response()).choices]
    assert "tiny-image" in offered and "tiny-upscale" not in offered
    jobs_before = jobs_stored(bot)
    interaction = await ask(bot, "imagine", {"prompt": "x", **TINY, "model": "tiny-upscale"}, user="carol")
    assert "makes upscales" in (await private_reply(interaction)).content
    assert jobs_stored(bot) == jobs_before
