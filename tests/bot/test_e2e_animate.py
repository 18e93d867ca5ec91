"""Image-to-video through the bot: `/video image:` and the Animate button on an image result."""

from __future__ import annotations

import io
import logging
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from generation.media import have_ffprobe
from generation.media_probe import probe
from tests.bot.conftest import BotProcess
from tests.bot.test_e2e import QUEUED, TINY, ask, job_id_of, private_reply, queue_job, result_message
from tests.fake_discord import FakeAttachment, FakeMessage

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 220)).save(out, format="PNG")
    return out.getvalue()


def jobs_stored(bot: BotProcess) -> int:
    with sqlite3.connect(bot.workdir / "bot.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def kept_inputs(bot: BotProcess) -> list[Path]:
    folder = bot.workdir / "results" / "inputs"
    return sorted(folder.iterdir()) if folder.exists() else []


def assert_h264_mp4(message: FakeMessage) -> dict[str, str]:
    mp4 = message.attachment
    assert mp4 is not None and mp4.filename.endswith(".mp4") and mp4.data[4:8] == b"ftyp"
    if have_ffprobe():
        info = probe(mp4.data)
        assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    return {f["name"]: f["value"] for f in message.embed["fields"]}


async def test_video_with_an_attached_picture_animates_it_on_the_i2v_model(running_bot: BotProcess) -> None:
    bot = running_bot
    picture = png()
    attachment = FakeAttachment(filename="boat.png", data=picture)
    short = await queue_job(
        bot,
        "video",
        {"prompt": "a boat sails away", "model": "tiny-wan-i2v", "image": attachment},
        user="alice",
    )
    message = await result_message(bot, short)
    fields = assert_h264_mp4(message)
    assert fields["Model"] == "tiny-wan-i2v"
    assert picture in [p.read_bytes() for p in kept_inputs(bot)]  # kept under RESULTS_DIR for a rerun


async def test_a_text_model_with_a_picture_goes_to_its_image_to_video_partner(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    attachment = FakeAttachment(filename="still.png", data=png())
    interaction = await ask(
        bot, "video", {"prompt": "leaves fall", "model": "tiny-wan", "image": attachment}, user="bob"
    )
    reply = await private_reply(interaction)
    assert "tiny-wan animates a picture through tiny-wan-i2v" in reply.content
    short = QUEUED.search(reply.content).group(1)  # type: ignore[union-attr]
    fields = assert_h264_mp4(await result_message(bot, short))
    assert fields["Model"] == "tiny-wan-i2v"


async def test_a_text_file_as_image_is_refused_politely_and_nothing_is_queued(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    jobs_before, inputs_before = jobs_stored(bot), kept_inputs(bot)
    notes = FakeAttachment(filename="notes.png", data=b"this is not a picture\n", content_type="image/png")
    interaction = await ask(bot, "video", {"prompt": "a cat", "image": notes}, user="carol")
    reply = await private_reply(interaction)
    assert "not a readable PNG, JPEG or WebP picture" in reply.content and "Traceback" not in reply.content
    assert jobs_stored(bot) == jobs_before and kept_inputs(bot) == inputs_before


async def test_animate_on_an_image_result_delivers_an_mp4_with_its_prompt(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "a red kite", **TINY, "seed": 4}, user="dave")
    image_message = await result_message(bot, short)
    job_id = job_id_of(image_message)
    assert [c["label"] for c in image_message.buttons] == ["Reroll", "Edit", "Delete", "Animate", "Upscale"]

    click = await bot.discord.click(image_message, f"job:animate1:{job_id}", user=bot.members["erin"])
    reply = await private_reply(click)
    animate_short = QUEUED.search(reply.content).group(1)  # type: ignore[union-attr]
    video = await result_message(bot, animate_short)
    fields = assert_h264_mp4(video)
    assert fields["Model"] == "tiny-wan-i2v"  # I2V_MODEL
    assert video.embed["title"] == "a red kite"
    assert "Animate" not in [c["label"] for c in video.buttons]  # videos are not animated again
    assert video.pings().users == {bot.members["erin"].user.id}
