"""Members and admins using the real bot process through the fake Discord.

Each test is a short story: someone types a command or presses a button, and we assert on
what they would see in the channel (or privately), and on what the bot refuses.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import time

import aiohttp
import pytest
import yarl
from PIL import Image

from bot.core.store.sqlite import SQLiteStore
from generation.media import have_ffprobe
from generation.media_probe import probe
from tests.bot.conftest import API_SECRET, SMALL_UPLOAD_LIMIT, BotProcess, start_bot, stop_bot
from tests.fake_discord import FakeInteraction, FakeMessage

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

TINY = {"steps": 2, "width": 64, "height": 64}
TINY_VIDEO = {"steps": 2, "frames": 16, "fps": 8}
#: a clip that keeps the tiny worker busy for several seconds (about 0.15 s per step here)
SLOW_VIDEO = {"steps": 50, "frames": 64, "fps": 8}
QUEUED = re.compile(r"Queued `([0-9a-f]{8})`")


async def ask(
    bot: BotProcess,
    command: str,
    options: dict | None = None,
    *,
    user: str,
    channel: str = "general",
    guild: str = "art",
) -> FakeInteraction:
    target = bot.art if guild == "art" else bot.small
    return await bot.discord.invoke_slash(
        command, options or {}, user=bot.members[user], guild=target, channel=target.channel(channel)
    )


async def private_reply(interaction: FakeInteraction, timeout: float = 15.0) -> FakeMessage:
    """The ephemeral answer a deferred command ends with."""
    response = await interaction.wait_for_response()
    assert response.deferred and response.ephemeral, response
    message = await interaction.wait_for_followup(timeout=timeout)
    assert message.ephemeral
    return message


async def queue_job(bot: BotProcess, command: str, options: dict, *, user: str, **where: str) -> str:
    """Runs /imagine or /video and returns the 8-character job id the member was told."""
    interaction = await ask(bot, command, options, user=user, **where)
    reply = await private_reply(interaction)
    match = QUEUED.search(reply.content)
    assert match, f"expected a queued answer, got {reply.content!r}"
    return match.group(1)


async def result_message(bot: BotProcess, short: str, timeout: float = 60.0) -> FakeMessage:
    def is_result(m: FakeMessage) -> bool:
        embed = m.embed
        return embed is not None and f"job {short}" in (embed.get("footer") or {}).get("text", "")

    return await bot.discord.wait_for_message(is_result, timeout=timeout)


def status_message(bot: BotProcess, short: str) -> FakeMessage:
    matches = [
        m
        for m in bot.discord.state.messages.values()
        if not m.ephemeral and f"`{short}`" in m.versions[0].content and not m.embeds
    ]
    assert len(matches) == 1, matches
    return matches[0]


def job_id_of(message: FakeMessage) -> str:
    return message.embed["footer"]["text"].split()[1]


# -- generation ------------------------------------------------------------------------------------


async def test_imagine_posts_a_png_with_every_parameter_and_pings_only_the_member(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    short = await queue_job(
        bot, "imagine", {"prompt": "a red fox @everyone <@&123>", **TINY, "seed": 1234}, user="alice"
    )
    message = await result_message(bot, short)

    png = message.attachment
    assert png is not None and png.filename.endswith(".png")
    image = Image.open(io.BytesIO(png.data))
    assert image.size == (64, 64)
    assert image.text["seed"] == "1234"  # parameters ride along inside the PNG
    fields = {f["name"]: f["value"] for f in message.embed["fields"]}
    assert fields["Seed"] == "1234" and fields["Steps"] == "2" and fields["Size"] == "64×64"
    assert fields["Model"] == "tiny-image" and "GPU time" in fields
    assert message.embed["image"]["url"] == f"attachment://{png.filename}"
    actions = {c["custom_id"].split(":")[1] for c in message.iter_components()}
    assert actions == {"reroll", "edit", "delete", "animate1", "upscale1"}
    # the member is mentioned; @everyone and the role in the prompt ping nobody
    alice = bot.members["alice"].user.id
    pings = message.pings()
    assert pings.users == {alice} and not pings.everyone and not pings.roles
    for m in bot.discord.messages(include_deleted=True):
        assert not m.pings().everyone and not m.pings().roles
    # the status message is replaced by the result
    status = status_message(bot, short)
    await bot.discord.wait_until(lambda: status.deleted, timeout=10, what="status message deleted")


async def test_video_posts_a_playable_h264_mp4(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "video", {"prompt": "waves rolling in", **TINY_VIDEO, "seed": 7}, user="bob")
    message = await result_message(bot, short)
    mp4 = message.attachment
    assert mp4 is not None and mp4.filename.endswith(".mp4")
    assert mp4.data[4:8] == b"ftyp"
    fields = {f["name"]: f["value"] for f in message.embed["fields"]}
    assert fields["Frames"] == "16 @ 8 fps"
    if have_ffprobe():
        info = probe(mp4.data)
        assert (info["codec"], info["pix_fmt"], info["frames"]) == ("h264", "yuv420p", 16)


async def test_video_on_wan_snaps_the_frame_count_tells_the_member_and_delivers_it(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    interaction = await ask(
        bot, "video", {"prompt": "a paper boat", "model": "tiny-wan", "frames": 10, "steps": 2}, user="bob"
    )
    reply = await private_reply(interaction)
    assert "tiny-wan makes 4k+1 frames: using 9 (asked 10)." in reply.content
    short = QUEUED.search(reply.content).group(1)  # type: ignore[union-attr]
    message = await result_message(bot, short)
    mp4 = message.attachment
    assert mp4 is not None and mp4.filename.endswith(".mp4")
    fields = {f["name"]: f["value"] for f in message.embed["fields"]}
    assert fields["Model"] == "tiny-wan" and fields["Frames"] == "9 @ 16 fps"
    if have_ffprobe():
        info = probe(mp4.data)
        assert (info["codec"], info["frames"]) == ("h264", 9)


async def test_progress_and_preview_edited_no_more_than_every_two_seconds_and_heartbeats_on_time(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    since = time.monotonic()
    short = await queue_job(bot, "video", {"prompt": "slow clouds", "steps": 40, "frames": 64}, user="carol")
    await result_message(bot, short, timeout=120)
    status = status_message(bot, short)
    progress = [v for v in status.versions if "step" in v.content]
    assert len(progress) >= 2, [v.content for v in status.versions]
    gaps = [b.at - a.at for a, b in itertools.pairwise(progress)]
    assert min(gaps) >= 1.8, gaps  # the queue throttles edits to PROGRESS_EDIT_INTERVAL_S
    assert re.search(r"step \d+/40", progress[-1].content)
    # the latent preview (the clip's middle frame) rides on those same throttled edits
    pictures = [v.attachments[0] for v in progress if v.attachments]
    assert pictures, [v.content for v in status.versions]
    assert all(p.filename.startswith("preview-") for p in pictures)
    assert Image.open(io.BytesIO(pictures[-1].data)).format == "PNG"
    # the result replaces it
    await bot.discord.wait_until(lambda: status.deleted, what="the status message deleted")
    # generation ran in the worker thread: the gateway heard every heartbeat on time (1 s interval)
    assert bot.discord.max_heartbeat_gap(since=since) < 1.8


async def test_a_bad_option_gets_a_polite_private_error_and_nothing_is_queued(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    dave = str(bot.members["dave"].user.id)
    # (a size off the model's multiple is snapped, not refused; a prompt of control characters is)
    interaction = await ask(bot, "imagine", {"prompt": "\x07\x07", "width": 64, "height": 64}, user="dave")
    reply = await private_reply(interaction)
    assert "prompt is empty" in reply.content.lower() and "characters" in reply.content
    assert "Traceback" not in reply.content
    interaction = await ask(bot, "imagine", {"prompt": "a cat", "model": "no-such-model"}, user="dave")
    reply = await private_reply(interaction)
    assert "no-such-model" in reply.content and "tiny-image" in reply.content
    # no public status message for refused requests
    assert not [m for m in bot.discord.messages(include_deleted=True) if dave in m.versions[0].content]


async def test_a_job_that_outlives_its_interaction_token_is_still_delivered(running_bot: BotProcess) -> None:
    bot = running_bot
    interaction = await ask(bot, "imagine", {"prompt": "a long wait", **TINY}, user="erin")
    reply = await private_reply(interaction)
    short = QUEUED.search(reply.content).group(1)
    interaction.expire_token()  # Discord's 15 minutes are over: webhook calls now get 401/50027
    message = await result_message(bot, short)
    assert message.attachment is not None and message.webhook_id is None  # posted with the bot token


# -- buttons ---------------------------------------------------------------------------------------


async def test_reroll_queues_the_same_parameters_with_a_new_seed(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "a blue bird", **TINY, "seed": 99}, user="frank")
    original = await result_message(bot, short)
    click = await bot.discord.click(original, f"job:reroll:{job_id_of(original)}", user=bot.members["grace"])
    reply = await private_reply(click)
    reroll_short = QUEUED.search(reply.content).group(1)
    reroll = await result_message(bot, reroll_short)
    fields = {f["name"]: f["value"] for f in reroll.embed["fields"]}
    assert fields["Seed"] != "99" and fields["Steps"] == "2" and fields["Size"] == "64×64"
    assert fields["Reroll of"] == f"`{short}`"
    assert reroll.pings().users == {bot.members["grace"].user.id}


async def test_only_the_owner_or_an_admin_can_delete_a_result(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "a teapot", **TINY}, user="heidi")
    message = await result_message(bot, short)
    custom_id = f"job:delete:{job_id_of(message)}"

    refused = await bot.discord.click(message, custom_id, user=bot.members["stranger"])
    response = await refused.wait_for_response()
    assert response.ephemeral and "Only the member who asked" in response.content
    assert not message.deleted

    allowed = await bot.discord.click(message, custom_id, user=bot.members["heidi"])
    await private_reply(allowed)
    assert message.deleted


async def test_cancel_buttons_stop_a_queued_job_at_once_and_a_running_one_at_its_next_step(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    running = await queue_job(bot, "video", {"prompt": "a long take", **SLOW_VIDEO}, user="carol")
    waiting = await queue_job(bot, "imagine", {"prompt": "never mind", **TINY}, user="alice")
    for short, owner in ((waiting, "alice"), (running, "carol")):
        status = status_message(bot, short)
        cancel_id = next(
            c["custom_id"] for c in status.iter_components() if c["custom_id"].startswith("job:cancel")
        )
        refusal = await private_reply(
            await bot.discord.click(status, cancel_id, user=bot.members["stranger"])
        )
        assert "cancelled" not in refusal.content and "being cancelled" not in refusal.content
        reply = await private_reply(await bot.discord.click(status, cancel_id, user=bot.members[owner]))
        assert f"`{short}` is" in reply.content
        await bot.discord.wait_until(
            lambda s=status: "Cancelled" in s.content, timeout=20, what="status: cancelled"
        )
        assert status.components == []  # no buttons left on a finished job
    assert "step" in "".join(v.content for v in status_message(bot, running).versions)  # it had started


# -- member lookups -----------------------------------------------------------------------------------


async def test_history_lists_a_members_request_with_its_seed(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "history lesson", **TINY, "seed": 4242}, user="bob")
    await result_message(bot, short)
    history = await private_reply(await ask(bot, "history", user="bob"))
    assert any("seed 4242" in f["name"] and "history lesson" in f["value"] for f in history.embed["fields"])


async def test_queue_status_answers_privately(running_bot: BotProcess) -> None:
    status = await private_reply(await ask(running_bot, "queue status", user="bob"))
    assert "**Queue:**" in status.content


async def test_info_shows_models_worker_and_store(running_bot: BotProcess) -> None:
    info = await private_reply(await ask(running_bot, "info", user="bob"))
    fields = {f["name"]: f["value"] for f in info.embed["fields"]}
    assert "tiny-image" in fields["Models"] and fields["Worker"] == "alive" and fields["Store"] == "ok"
    # the tuned path each resident model got (generation/tuning.py's defaults); models that other
    # tests of this bot process loaded are listed beside it
    speedups = fields["GPU workers"].split("speed-ups: ", 1)[-1]
    assert "tiny-image: sdpa · fused QKV · channels_last" in speedups.split("; "), fields["GPU workers"]


async def test_help_answers_privately(running_bot: BotProcess) -> None:
    help_reply = await (await ask(running_bot, "help", user="bob")).wait_for_response()
    assert help_reply.ephemeral and "/imagine" in help_reply.content


async def test_defer_within_three_seconds_with_fifty_jobs_waiting(running_bot: BotProcess) -> None:
    bot = running_bot
    busy = await queue_job(bot, "video", {"prompt": "keep the GPU busy", **SLOW_VIDEO}, user="erin")
    try:
        users = ["alice", "bob", "carol", "dave", "frank"]
        interactions = []
        for i in range(50):
            interactions.append(
                await ask(bot, "imagine", {"prompt": f"crowd {i}", **TINY}, user=users[i % 5])
            )
        replies = [await private_reply(i, timeout=30) for i in interactions]
        latencies = [i.response.latency_s for i in interactions]
        assert max(latencies) < 3.0, max(latencies)
        assert all(QUEUED.search(r.content) for r in replies), [
            r.content for r in replies if "Queued" not in r.content
        ]
        status = await private_reply(await ask(bot, "queue status", user="carol"))
        assert "50 waiting" in status.content and "position" in status.content
    finally:
        purge = await private_reply(await ask(bot, "admin purge", {}, user="admin"))
        await private_reply(await ask(bot, "queue cancel", {"job": busy}, user="erin"))
    assert "Cancelled 50 queued job(s)" in purge.content


# -- delivery fallbacks ------------------------------------------------------------------------------------


async def test_a_video_over_the_upload_limit_is_reencoded_to_fit(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(
        bot,
        "video",
        {"prompt": "static noise", "steps": 2, "frames": 32, "fps": 8},
        user="alice",
        guild="small",
    )
    message = await result_message(bot, short)
    assert message.attachment is not None and message.attachment.filename.endswith(".mp4")
    assert message.attachment.size <= SMALL_UPLOAD_LIMIT
    assert "re-encoded to" in bot.log_text() or "Download" in str(message.embed)


async def test_a_file_discord_refuses_as_too_large_arrives_as_a_signed_link_with_a_poster(
    running_bot: BotProcess,
) -> None:
    bot = running_bot
    short = await queue_job(bot, "video", {"prompt": "too big", **TINY_VIDEO, "steps": 20}, user="carol")
    # the status message is up; the next post is the result, which Discord will refuse
    rule = bot.discord.fail_next(
        "POST", r"/channels/\d+/messages$", 413, code=40005, message="Request entity too large", times=1
    )
    message = await result_message(bot, short)
    assert rule.hits == 1
    download = next(f for f in message.embed["fields"] if f["name"] == "Download")
    url = re.search(r"\((http[^)]+)\)", download["value"]).group(1)
    assert url.startswith(bot.web_url)
    assert message.attachment is not None and message.attachment.filename.startswith("poster-")
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200 and response.content_type == "video/mp4"
        body = await response.read()
    assert body[4:8] == b"ftyp"
    signed = yarl.URL(url)
    forged = signed.update_query(s="A" * len(signed.query["s"]))
    async with aiohttp.ClientSession() as http, http.get(forged) as response:
        assert response.status in (403, 404)  # the link cannot be guessed or altered


# -- admins -------------------------------------------------------------------------------------------------


async def test_members_without_manage_server_cannot_use_admin_commands(running_bot: BotProcess) -> None:
    bot = running_bot
    interaction = await bot.discord.invoke_slash(
        "admin ban",
        {"user": bot.members["bob"]},
        user=bot.members["stranger"],
        guild=bot.art,
        validate=False,
    )
    reply = await interaction.wait_for_response()
    text = reply.content or (await interaction.wait_for_followup()).content
    assert "Manage Server" in text


async def admin_says(bot: BotProcess, command: str, options: dict | None = None) -> str:
    return (await private_reply(await ask(bot, command, options, user="admin"))).content


async def audited(bot: BotProcess, count: int) -> list[str]:
    """The last `count` admin actions on the Art server, newest first, as /admin audit lists them."""
    return re.findall(r"\*\*(\w+)\*\*", await admin_says(bot, "admin audit", {"limit": count}))


async def test_a_ban_refuses_the_member_with_its_reason_until_it_is_lifted(running_bot: BotProcess) -> None:
    bot = running_bot
    await admin_says(bot, "admin ban", {"user": bot.members["dave"], "reason": "spam"})
    refused = await private_reply(await ask(bot, "imagine", {"prompt": "let me in", **TINY}, user="dave"))
    assert "banned" in refused.content.lower() and "spam" in refused.content
    await admin_says(bot, "admin unban", {"user": bot.members["dave"]})
    again = await private_reply(await ask(bot, "imagine", {"prompt": "let me in", **TINY}, user="dave"))
    assert QUEUED.search(again.content), again.content
    assert await audited(bot, 2) == ["unban", "ban"]
    await result_message(bot, QUEUED.search(again.content).group(1))


async def test_the_blocklist_refuses_matching_prompts_and_a_broken_pattern(running_bot: BotProcess) -> None:
    bot = running_bot
    bad = await admin_says(bot, "admin blocklist add", {"entry": "re:(unclosed"})
    assert "regular expression is invalid" in bad
    await admin_says(bot, "admin blocklist add", {"entry": "Forbidden"})
    await admin_says(bot, "admin blocklist add", {"entry": r"re:gh?ost\w*"})
    try:
        listed = await admin_says(bot, "admin blocklist list")
        assert "forbidden" in listed and "re:gh?ost" in listed
        for prompt in ("a FORBIDDEN fruit", "ghosts in the hall"):
            blocked = await private_reply(await ask(bot, "imagine", {"prompt": prompt, **TINY}, user="dave"))
            assert "does not allow" in blocked.content
    finally:
        await admin_says(bot, "admin blocklist remove", {"entry": "forbidden"})
        await admin_says(bot, "admin blocklist remove", {"entry": r"re:gh?ost\w*"})
    assert await audited(bot, 4) == ["blocklist_remove", "blocklist_remove", "blocklist_add", "blocklist_add"]


async def test_a_channel_allow_list_points_members_to_the_allowed_channel(running_bot: BotProcess) -> None:
    bot = running_bot
    studio_channel = bot.art.channel("studio")
    await admin_says(bot, "admin channels allow", {"channel": studio_channel})
    try:
        elsewhere = await private_reply(await ask(bot, "imagine", {"prompt": "here?", **TINY}, user="dave"))
        assert "can only be used in" in elsewhere.content and f"<#{studio_channel.id}>" in elsewhere.content
        short = await queue_job(
            bot, "imagine", {"prompt": "in the studio", **TINY}, user="dave", channel="studio"
        )
        await result_message(bot, short)
    finally:
        await admin_says(bot, "admin channels disallow", {"channel": studio_channel})
    assert await audited(bot, 2) == ["channel_disallow", "channel_allow"]


async def test_nsfw_only_refuses_ordinary_channels_until_it_is_turned_off(running_bot: BotProcess) -> None:
    bot = running_bot
    await admin_says(bot, "admin channels nsfw_only", {"enabled": True})
    try:
        sfw = await private_reply(await ask(bot, "imagine", {"prompt": "x", **TINY}, user="dave"))
        assert "age-restricted" in sfw.content
    finally:
        await admin_says(bot, "admin channels nsfw_only", {"enabled": False})
    assert await audited(bot, 2) == ["nsfw_only", "nsfw_only"]


async def test_a_quota_override_caps_one_members_waiting_jobs(running_bot: BotProcess) -> None:
    bot = running_bot
    quota = await admin_says(bot, "admin quota", {"user": bot.members["dave"], "max_queued": 0})
    assert "0 job(s) waiting" in quota
    try:
        over = await private_reply(await ask(bot, "imagine", {"prompt": "one more", **TINY}, user="dave"))
        assert "Queued" not in over.content
    finally:
        await admin_says(bot, "admin quota", {"user": bot.members["dave"]})
    assert await audited(bot, 2) == ["quota", "quota"]


async def test_a_pause_refuses_new_work_and_shows_in_the_queue_until_resumed(running_bot: BotProcess) -> None:
    bot = running_bot
    await admin_says(bot, "admin pause", {"reason": "maintenance"})
    try:
        paused = await private_reply(
            await ask(bot, "imagine", {"prompt": "during maintenance", **TINY}, user="dave")
        )
        assert "paused" in paused.content and "Queued" not in paused.content
        overview = await private_reply(await ask(bot, "queue status", user="dave"))
        assert "paused" in overview.content
    finally:
        await admin_says(bot, "admin resume", {})
    await result_message(
        bot, await queue_job(bot, "imagine", {"prompt": "after maintenance", **TINY}, user="dave")
    )
    assert await audited(bot, 2) == ["resume", "pause"]


JOB_TOTAL = re.compile(r"\*\*(\d+)\*\* jobs")


async def test_stats_count_a_finished_job_by_model_and_list_the_top_users(running_bot: BotProcess) -> None:
    bot = running_bot

    async def stats() -> dict:
        return (await private_reply(await ask(bot, "admin stats", {"days": 1}, user="admin"))).embed

    before = await stats()
    await result_message(bot, await queue_job(bot, "imagine", {"prompt": "counted", **TINY}, user="dave"))
    after = await stats()
    total = int(JOB_TOTAL.search(after["description"]).group(1))
    assert total == int(JOB_TOTAL.search(before["description"]).group(1)) + 1
    assert any("tiny-image" in f["name"] for f in after["fields"])
    top = next(f["value"] for f in after["fields"] if f["name"] == "Top users")
    rows = [(int(jobs), int(gpu)) for jobs, gpu in re.findall(r">: (\d+) jobs, (\d+) GPU s", top)]
    gpu = [g for _, g in rows]  # the heaviest users first
    assert 1 <= len(rows) <= 5 and gpu == sorted(gpu, reverse=True) and sum(j for j, _ in rows) <= total
    members = {f"<@{m.user.id}>" for m in bot.members.values()}
    assert set(re.findall(r"<@\d+>", top)) <= members


async def test_an_admin_ban_of_an_api_key_locks_it_out_of_the_rest_api(running_bot: BotProcess) -> None:
    bot = running_bot
    headers = {"Authorization": f"Bearer {API_SECRET}"}
    body = {"prompt": "via REST", "steps": 2, "width": 64, "height": 64}
    unknown = await private_reply(await ask(bot, "admin ban", {"api_key": "nope"}, user="admin"))
    assert "No API key is named" in unknown.content and "postman" in unknown.content
    await private_reply(await ask(bot, "admin ban", {"api_key": "postman", "reason": "leaked"}, user="admin"))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bot.web_url}/api/v1/images", json=body, headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "banned"
        await private_reply(await ask(bot, "admin unban", {"api_key": "postman"}, user="admin"))
        async with http.post(f"{bot.web_url}/api/v1/images", json=body, headers=headers) as response:
            assert response.status == 202, await response.text()


# -- restarts (keep last: it replaces the module's bot process) --------------------------------------------


async def test_buttons_on_old_messages_work_after_a_restart(running_bot: BotProcess) -> None:
    bot = running_bot
    short = await queue_job(bot, "imagine", {"prompt": "before the restart", **TINY}, user="frank")
    old = await result_message(bot, short)
    code = await stop_bot(bot.proc)
    assert code == 0
    # as if the bot had crashed between posting the result and recording that it did
    store = SQLiteStore(path=bot.workdir / "bot.db")
    async with store:
        assert (await store.update_job(job_id_of(old), result_message_id=None)) is not None
    identifies = bot.discord.identifies
    bot.proc = await start_bot(bot.discord, bot.env, bot.workdir)
    await bot.discord.wait_until(lambda: bot.discord.identifies > identifies, timeout=90, what="bot back")
    await bot.discord.wait_until_connected(timeout=60)
    click = await bot.discord.click(old, f"job:reroll:{job_id_of(old)}", user=bot.members["frank"])
    reply = await private_reply(click, timeout=30)
    again = await result_message(bot, QUEUED.search(reply.content).group(1))
    assert {f["name"]: f["value"] for f in again.embed["fields"]}["Reroll of"] == f"`{short}`"
    # the undelivered-looking result was found in the channel, not posted a second time
    footer = f"job {job_id_of(old)}"
    posted = [m for m in bot.discord.messages() if m.embed and m.embed["footer"]["text"].startswith(footer)]
    assert posted == [old]
    async with store:
        job = await store.get_job(job_id_of(old))
    assert job is not None and job.result_message_id == str(old.id)
