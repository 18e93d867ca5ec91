"""The fake Discord runs a real discord.py 2.7 client, and imitates Discord's failure modes.

A small demo bot (slash commands, a command group, a persistent button) is pointed at the
fake through `bot.discord_ui.discord_endpoint`, exactly as the real bot is; the tests then act as
members and assert on what the channel shows. A few tests talk raw HTTP/websocket to check
protocol details discord.py would hide (exact Content-Type, close codes, replay on RESUME).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.discord_ui.discord_endpoint import (
    DEFAULT_API_BASE,
    DEFAULT_GATEWAY_URL,
    GatewayLookupError,
    configure_discord_endpoint,
    normalise_api_base,
    reset_discord_endpoint,
)
from tests.fake_discord import (
    MIB,
    FakeDiscord,
    FakeGuild,
    FakeMessage,
    FakeUser,
    InvalidInteraction,
    Perm,
)
from tests.fake_discord.rest import ROUTES
from tests.fake_discord.spec_check import find_operation, source_commit
from tests.fake_discord.state import TALLY
from tests.fake_discord.trim_spec import TRIMMED, find_commit, trim

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(30)

BUTTON_ID = "demo:reroll"


def blob(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


# the demo bot ------------------------------------------------------------------------------


class RerollView(discord.ui.View):
    """Persistent: a fixed custom_id and no timeout, registered in setup_hook."""

    def __init__(self, bot: DemoBot) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    @discord.ui.button(label="Reroll", custom_id=BUTTON_ID, style=discord.ButtonStyle.primary)
    async def reroll(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.bot.clicks.append(interaction.user.id)
        await interaction.response.send_message(f"rerolled for {interaction.user.name}", ephemeral=True)


class DemoBot(discord.Client):
    def __init__(self) -> None:
        super().__init__(
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.05,
        )
        self.tree = app_commands.CommandTree(self)
        self.ready = asyncio.Event()
        self.proceed = asyncio.Event()
        self.clicks: list[int] = []
        self.errors: list[Exception] = []
        self._add_commands()

    async def setup_hook(self) -> None:
        self.add_view(RerollView(self))
        await self.tree.sync()

    async def on_ready(self) -> None:
        self.ready.set()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY (Discord's rate limit); not against the fake."""

    def _add_commands(self) -> None:
        tree = self.tree

        @tree.command()
        @app_commands.describe(prompt="What to draw", steps="Denoising steps")
        async def imagine(
            interaction: discord.Interaction, prompt: str, steps: app_commands.Range[int, 1, 50] = 20
        ) -> None:
            """Draw a picture."""
            await interaction.response.defer(thinking=True)
            embed = discord.Embed(title="Result", description=prompt)
            embed.add_field(name="steps", value=str(steps))
            await interaction.followup.send(f"{interaction.user.mention} asked: {prompt}", embed=embed)

        @tree.command()
        async def post(interaction: discord.Interaction, size_kib: int) -> None:
            """Post a file of this size to the channel with the bot token."""
            await interaction.response.defer(ephemeral=True)
            file = discord.File(io.BytesIO(blob(size_kib * 1024)), filename="blob.bin")
            try:
                await interaction.channel.send("here is your file", file=file)
            except discord.HTTPException as exc:
                await interaction.followup.send(f"failed {exc.status} {exc.code}", ephemeral=True)
                return
            await interaction.followup.send("posted", ephemeral=True)

        @tree.command()
        async def later(interaction: discord.Interaction) -> None:
            """Defer, wait for the test, then follow up (falling back to the channel)."""
            await interaction.response.defer()
            await self.proceed.wait()
            try:
                await interaction.followup.send("done via webhook")
            except discord.HTTPException as exc:
                await interaction.channel.send(f"done via channel after {exc.status} {exc.code}")

        @tree.command()
        async def slow(interaction: discord.Interaction, delay_ms: int) -> None:
            """Answer only after delay_ms (too late if that is past the deadline)."""
            await asyncio.sleep(delay_ms / 1000)
            try:
                await interaction.response.send_message("finally")
            except discord.NotFound as exc:
                self.errors.append(exc)

        @tree.command()
        async def whisper(interaction: discord.Interaction) -> None:
            """Defer in public, then follow up twice asking for ephemeral messages."""
            await interaction.response.defer()
            await interaction.followup.send("first", ephemeral=True)
            await interaction.followup.send("second", ephemeral=True)

        @tree.command()
        async def progress(interaction: discord.Interaction) -> None:
            """Edit the reply as work goes on, then tidy up a follow-up."""
            await interaction.response.defer()
            for step in (1, 2, 3):
                await interaction.edit_original_response(content=f"step {step}/3")
            original = await interaction.original_response()
            extra = await interaction.followup.send(f"extra after {original.content}", wait=True)
            await extra.delete()
            result = await interaction.channel.send("result", file=discord.File(io.BytesIO(b"v1"), "v1.txt"))
            await result.edit(content="result v2", attachments=[discord.File(io.BytesIO(b"v2"), "v2.txt")])

        async def model_names(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            names = ["sd15", "damo", "zeroscope"]
            return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

        @tree.command()
        @app_commands.autocomplete(name=model_names)
        async def model(interaction: discord.Interaction, name: str) -> None:
            """Pick a model."""
            await interaction.response.send_message(f"model {name}")

        class Feedback(discord.ui.Modal, title="Feedback"):
            text = discord.ui.TextInput(label="What went wrong?", custom_id="feedback:text")

            async def on_submit(self, interaction: discord.Interaction) -> None:
                await interaction.response.send_message(f"thanks: {self.text.value}", ephemeral=True)

        @tree.command()
        async def feedback(interaction: discord.Interaction) -> None:
            """Open a form."""
            await interaction.response.send_modal(Feedback())

        queue = app_commands.Group(name="queue", description="Your jobs")

        @queue.command(name="cancel")
        async def queue_cancel(interaction: discord.Interaction, job: int) -> None:
            """Cancel a job."""
            await interaction.response.send_message(f"cancelled job {job}", ephemeral=True)

        tree.add_command(queue)

        admin = app_commands.Group(
            name="admin", description="Moderation", default_permissions=discord.Permissions(manage_guild=True)
        )

        @admin.command(name="pause")
        async def admin_pause(interaction: discord.Interaction) -> None:
            """Pause the queue."""
            allowed = interaction.permissions.manage_guild
            await interaction.response.send_message("paused" if allowed else "not allowed", ephemeral=True)

        tree.add_command(admin)


async def start_bot(fake: FakeDiscord) -> tuple[DemoBot, asyncio.Task]:
    bot = DemoBot()
    task = asyncio.create_task(bot.start(fake.token))
    ready = asyncio.create_task(bot.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what went wrong
        raise TimeoutError("demo bot did not become ready")
    return bot, task


async def stop_bot(bot: DemoBot, task: asyncio.Task) -> None:
    await bot.close()
    await asyncio.wait_for(task, 5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    guild = FakeGuild(name="Art Club")
    guild.add_member("alice")
    async with FakeDiscord(guilds=[guild]) as fake:
        yield fake
    reset_discord_endpoint()


@pytest.fixture
async def bot(fake: FakeDiscord, caplog: pytest.LogCaptureFixture) -> AsyncIterator[DemoBot]:
    await configure_discord_endpoint(fake.api_base, None, token=fake.token)
    bot, task = await start_bot(fake)
    yield bot
    await stop_bot(bot, task)
    # a payload discord.py cannot parse shows up as a logged error, not as a failed call
    errors = [
        r.getMessage() for r in caplog.records if r.name.startswith("discord") and r.levelno >= logging.ERROR
    ]
    assert errors == []


# bot.discord_endpoint ----------------------------------------------------------------------


def test_api_base_accepts_a_bare_host_and_reset_restores_discord() -> None:
    assert normalise_api_base("http://proxy:8080") == "http://proxy:8080/api/v10"
    assert normalise_api_base("http://proxy:8080/api/v10/") == "http://proxy:8080/api/v10"
    with pytest.raises(ValueError, match="absolute"):
        normalise_api_base("proxy:8080")
    reset_discord_endpoint()
    assert Route.BASE == DEFAULT_API_BASE
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == DEFAULT_GATEWAY_URL


async def test_endpoint_takes_gateway_from_lookup_or_from_the_setting(fake: FakeDiscord) -> None:
    endpoint = await configure_discord_endpoint(fake.api_base, None, token=fake.token)
    assert (Route.BASE, str(DiscordWebSocket.DEFAULT_GATEWAY)) == (fake.api_base, fake.gateway_url)
    assert len(fake.calls_to("GET", "^/gateway/bot$")) == 1
    assert endpoint.gateway_url == fake.gateway_url

    explicit = "ws://127.0.0.1:1/elsewhere"
    await configure_discord_endpoint(fake.api_base, explicit, token=fake.token)
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == explicit
    assert len(fake.calls_to("GET", "^/gateway/bot$")) == 1  # no second lookup

    with pytest.raises(GatewayLookupError, match="DISCORD_TOKEN"):
        await configure_discord_endpoint(fake.api_base, None, token="not-the-token")


# connecting ----------------------------------------------------------------------------------


async def test_bot_connects_with_compression_and_sees_the_guild(fake: FakeDiscord, bot: DemoBot) -> None:
    session = await fake.wait_until_connected()
    assert fake.identifies == 1 and session.intents == discord.Intents.default().value
    # zstd-stream when zstandard imports (the dev extra installs it), zlib-stream otherwise
    asked = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
    assert asked in ("zstd-stream", "zlib-stream") and fake.gateway.compressions == [asked]
    assert fake.calls_to("GET", "^/users/@me$")[0].status == 200
    guild = bot.get_guild(fake.guild.id)
    assert guild is not None and guild.name == "Art Club"
    assert [c.name for c in guild.text_channels] == ["general"]
    assert guild.me is not None and guild.me.guild_permissions.attach_files
    assert guild.filesize_limit == fake.guild.filesize_limit == 10 * MIB
    await fake.wait_until(lambda: fake.heartbeats, what="a heartbeat")


async def test_command_sync_is_recorded_with_typed_options(fake: FakeDiscord, bot: DemoBot) -> None:
    commands = await fake.wait_for_commands("imagine", "queue", "admin")
    imagine = fake.command("imagine")
    steps = next(o for o in imagine["options"] if o["name"] == "steps")
    assert (steps["type"], steps["min_value"], steps["max_value"], steps.get("required", False)) == (
        4,
        1,
        50,
        False,
    )
    queue = fake.command("queue")
    assert [(o["name"], o["type"]) for o in queue["options"]] == [("cancel", 1)]
    assert fake.command("admin")["default_member_permissions"] == str(int(Perm.MANAGE_GUILD))
    assert {c["name"] for c in commands} >= {"imagine", "post", "later", "slow", "queue", "admin", "model"}


# interactions --------------------------------------------------------------------------------


async def test_slash_defer_then_followup_replaces_thinking_and_pings_nobody(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    prompt = "a cat @everyone <@&123> <@456>"
    interaction = await fake.invoke_slash("imagine", {"prompt": prompt, "steps": 30}, user="alice")

    response = await interaction.wait_for_response()
    assert response.deferred and not response.ephemeral and response.latency_s < 3.0
    result = await interaction.wait_for_original()
    alice = fake.guild.member("alice")
    assert result.content == f"<@{alice.id}> asked: {prompt}"
    assert result.embed["fields"] == [{"name": "steps", "value": "30", "inline": True}]
    assert result.allowed_mentions == {"parse": []}
    assert not result.pings()
    assert fake.messages(fake.guild.channel()) == [result]  # the follow-up became the reply
    assert interaction.messages == [result] and interaction.followups == [result]


async def test_first_followup_after_a_defer_edits_the_thinking_message_and_keeps_its_visibility(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    interaction = await fake.invoke_slash("whisper")
    second = await interaction.wait_for_followup(lambda m: m.content == "second")
    first = interaction.original
    assert (first.content, first.ephemeral, first.loading) == ("first", False, False)
    assert [v.content for v in first.versions] == ["", "first"]  # edited, not posted anew
    assert second.ephemeral and second.id != first.id
    assert fake.messages() == [first]


async def test_options_are_checked_like_discord_unless_told_otherwise(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    with pytest.raises(InvalidInteraction, match="outside"):
        await fake.invoke_slash("imagine", {"prompt": "x", "steps": 500})
    with pytest.raises(InvalidInteraction, match="missing required"):
        await fake.invoke_slash("imagine", {"steps": 5})
    with pytest.raises(InvalidInteraction, match="lacks permissions"):
        await fake.invoke_slash("admin pause", user="alice")

    forced = await fake.invoke_slash("admin pause", user="alice", validate=False)
    assert (await forced.wait_for_original()).content == "not allowed"
    owner = await fake.invoke_slash("admin pause", user=fake.guild.owner)
    assert (await owner.wait_for_original()).content == "paused"


async def test_subcommand_in_a_group_gets_an_ephemeral_reply(fake: FakeDiscord, bot: DemoBot) -> None:
    interaction = await fake.invoke_slash("/queue cancel", {"job": 42})
    response = await interaction.wait_for_response()
    assert (response.kind, response.ephemeral, response.content) == ("message", True, "cancelled job 42")
    assert fake.messages() == []  # ephemeral replies are not in the channel
    assert interaction.messages[0].ephemeral


async def test_progress_edits_are_kept_as_history_and_deletes_recorded(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    interaction = await fake.invoke_slash("progress")
    result = await fake.wait_for_message(lambda m: m.content == "result v2")
    original = interaction.original
    assert [v.content for v in original.versions] == ["", "step 1/3", "step 2/3", "step 3/3"]
    assert original.versions[0].flags & 128 and not original.loading  # "thinking" until the first edit
    times = [v.at for v in original.versions]
    assert times == sorted(times)
    [extra] = interaction.followups
    assert extra.deleted and extra.content == "extra after step 3/3"
    assert [a.filename for a in result.attachments] == ["v2.txt"] and result.attachment.data == b"v2"
    assert [a.filename for a in result.versions[0].attachments] == ["v1.txt"]
    assert fake.messages(include_deleted=True) == [original, extra, result]
    assert fake.messages() == [original, result]


async def test_autocomplete_modal_and_dm_interactions(fake: FakeDiscord, bot: DemoBot) -> None:
    typing = await fake.autocomplete("model", {"name": "d"}, focused="name")
    assert [c["value"] for c in (await typing.wait_for_response()).choices] == ["damo"]

    form = await fake.invoke_slash("feedback")
    assert (await form.wait_for_response()).kind == "modal"
    submitted = await fake.submit_modal(form, {"feedback:text": "too slow"})
    assert (await submitted.wait_for_response()).content == "thanks: too slow"

    in_dm = await fake.invoke_slash("queue cancel", {"job": 3}, user=FakeUser(username="carol"), dm=True)
    reply = await in_dm.wait_for_original()
    assert reply.guild_id is None and reply.content == "cancelled job 3"


async def test_channel_message_carries_a_large_attachment(fake: FakeDiscord, bot: DemoBot) -> None:
    interaction = await fake.invoke_slash("post", {"size_kib": 1536})
    message = await fake.wait_for_message(lambda m: m.attachments)
    assert message.author.id == bot.user.id and message.interaction_id is None
    attachment = message.attachment
    assert (attachment.filename, attachment.size) == ("blob.bin", 1536 * 1024)
    assert attachment.data == blob(1536 * 1024)
    async with aiohttp.ClientSession() as http:  # the CDN stand-in serves what the bot uploaded
        url = attachment.url(fake.http_base, message.channel_id)
        async with http.get(url) as response:
            assert await response.read() == attachment.data
    assert (await interaction.wait_for_followup()).content == "posted"


async def test_upload_over_the_guild_limit_is_refused_with_40005(fake: FakeDiscord, bot: DemoBot) -> None:
    interaction = await fake.invoke_slash("post", {"size_kib": 10 * 1024 + 1})
    reply = await interaction.wait_for_followup()
    assert reply.content == "failed 413 40005" and reply.ephemeral
    assert fake.messages() == []


async def test_persistent_button_works_after_a_restart(fake: FakeDiscord, bot: DemoBot) -> None:
    channel = bot.get_channel(fake.guild.channel().id)
    sent = await channel.send("your picture", view=RerollView(bot))
    message = fake.message(sent.id)
    assert message.custom_ids == [BUTTON_ID]

    await bot.close()
    restarted, task = await start_bot(fake)  # only the setup_hook registration knows the button now
    try:
        alice = fake.guild.member("alice")
        click = await fake.click(message, BUTTON_ID, user=alice)
        response = await click.wait_for_response()
        assert (response.content, response.ephemeral) == ("rerolled for alice", True)
        assert restarted.clicks == [alice.id]
    finally:
        await stop_bot(restarted, task)


# the bot's permissions per channel -----------------------------------------------------------

SEND_ONLY = int(Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES)


async def test_channel_permissions_reach_interactions_and_discord_py(fake: FakeDiscord, bot: DemoBot) -> None:
    everywhere = fake.bot_permissions(fake.guild.channel())
    studio = fake.guild.add_channel("studio")
    fake.set_bot_permissions(fake.guild.channel(), SEND_ONLY)
    assert fake.bot_permissions(fake.guild.channel()) == SEND_ONLY

    interaction = await fake.invoke_slash("post", {"size_kib": 1})
    assert int(interaction.payload["app_permissions"]) == SEND_ONLY
    reply = await interaction.wait_for_followup()  # the follow-up itself needs no channel permission
    assert reply.content == "failed 403 50013" and fake.messages(include_ephemeral=False) == []

    channel = bot.get_channel(fake.guild.channel().id)
    await fake.wait_until(
        lambda: channel.permissions_for(channel.guild.me).value == SEND_ONLY, what="the CHANNEL_UPDATE"
    )
    elsewhere = await fake.invoke_slash("queue cancel", {"job": 1}, channel=studio)
    assert int(elsewhere.payload["app_permissions"]) == everywhere
    await elsewhere.wait_for_response()


async def test_history_needs_view_channel_and_shows_nothing_without_read_history(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    channel = bot.get_channel(fake.guild.channel().id)
    await channel.send("one")
    assert [m.content async for m in channel.history(limit=5)] == ["one"]

    fake.set_bot_permissions(channel.id, SEND_ONLY)
    assert [m async for m in channel.history(limit=5)] == []  # Discord answers 200 [] here

    fake.set_bot_permissions(channel.id, 0)
    with pytest.raises(discord.Forbidden) as caught:
        [m async for m in channel.history(limit=5)]
    assert (caught.value.status, caught.value.code) == (403, 50001)
    with pytest.raises(discord.Forbidden) as caught:
        await channel.send("cannot")
    assert caught.value.code == 50001


async def test_sending_needs_send_messages_and_embeds_need_embed_links(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    channel = bot.get_channel(fake.guild.channel().id)
    fake.set_bot_permissions(channel.id, int(Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY))
    with pytest.raises(discord.Forbidden) as caught:
        await channel.send("no send")
    assert caught.value.code == 50013

    fake.set_bot_permissions(channel.id, SEND_ONLY)
    sent = await channel.send("text stays", embed=discord.Embed(title="dropped"))
    assert fake.message(sent.id).embeds == [] and fake.message(sent.id).content == "text stays"
    with pytest.raises(discord.HTTPException) as caught:
        await channel.send(embed=discord.Embed(title="only an embed"))
    assert (caught.value.status, caught.value.code) == (400, 50006)
    with pytest.raises(discord.Forbidden) as caught:
        await channel.send("file", file=discord.File(io.BytesIO(b"x"), "x.txt"))
    assert caught.value.code == 50013
    assert [c.response["code"] for c in fake.take_invalid_requests()] == [50006]


# Discord's failure modes ---------------------------------------------------------------------


async def test_429_and_502_are_retried_and_the_message_arrives_once(fake: FakeDiscord, bot: DemoBot) -> None:
    channel = bot.get_channel(fake.guild.channel().id)
    limited = fake.fail_next("POST", r"^/channels/\d+/messages$", 429, retry_after=0.05)
    await channel.send("after a 429")
    assert limited.hits == 1
    assert [c.status for c in fake.calls_to("POST", r"^/channels/\d+/messages$")] == [429, 200]

    fake.fail_next("POST", r"^/channels/\d+/messages$", 502)
    await channel.send("after a 502")  # discord.py waits 1 s before its retry
    assert [m.content for m in fake.messages(channel.id)] == ["after a 429", "after a 502"]


async def test_429_without_via_is_taken_for_a_cloudflare_ban(fake: FakeDiscord, bot: DemoBot) -> None:
    fake.fail_next("POST", r"/messages$", 429, headers={"Via": ""})
    with pytest.raises(discord.HTTPException) as caught:
        await bot.get_channel(fake.guild.channel().id).send("never")
    assert caught.value.status == 429 and fake.messages() == []


async def test_expired_token_gets_50027_and_the_bot_falls_back_to_the_channel(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    interaction = await fake.invoke_slash("later")
    await interaction.wait_for_response()
    interaction.expire_token()
    bot.proceed.set()
    message = await fake.wait_for_message(lambda m: m.content.startswith("done via"))
    assert message.content == "done via channel after 401 50027"
    assert fake.calls_to("POST", r"^/webhooks/")[-1].status == 401


async def test_late_initial_response_gets_10062(fake: FakeDiscord, bot: DemoBot) -> None:
    fake.interaction_deadline_s = 0.1
    interaction = await fake.invoke_slash("slow", {"delay_ms": 300})
    await fake.wait_until(lambda: interaction.late_callbacks, what="the late callback")
    await fake.wait_until(lambda: bot.errors, what="the bot to see NotFound")
    assert interaction.response is None
    assert bot.errors[0].code == 10062


async def test_injected_callback_fault_reaches_the_bot(fake: FakeDiscord, bot: DemoBot) -> None:
    rule = fake.fail_next("POST", r"^/interactions/\d+/.+/callback$", 404, code=10062)
    interaction = await fake.invoke_slash("slow", {"delay_ms": 0})
    await fake.wait_until(lambda: bot.errors, what="the bot to see NotFound")
    assert rule.hits == 1 and interaction.response is None and bot.errors[0].code == 10062


async def test_gateway_drop_is_resumed_and_events_sent_meanwhile_arrive(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    first = await fake.wait_until_connected()
    await fake.drop_gateway()
    assert not fake.connected
    interaction = await fake.invoke_slash("queue cancel", {"job": 7})  # sent while disconnected
    response = await interaction.wait_for_response()
    assert response.content == "cancelled job 7"
    assert (fake.resumes, fake.identifies) == (1, 1)
    assert await fake.wait_until_connected() is first

    after = await fake.invoke_slash("queue cancel", {"job": 8})
    assert (await after.wait_for_response()).content == "cancelled job 8"


async def test_invalidated_session_reidentifies_through_the_configured_gateway(
    fake: FakeDiscord, bot: DemoBot
) -> None:
    await fake.wait_until_connected()
    await fake.invalidate_session()
    await fake.wait_until(lambda: fake.identifies == 2, what="a second IDENTIFY")
    await fake.wait_until_connected()
    interaction = await fake.invoke_slash("queue cancel", {"job": 9})
    assert (await interaction.wait_for_response()).content == "cancelled job 9"


# protocol details discord.py would hide ------------------------------------------------------


async def test_rest_replies_are_exact_json_with_rate_limit_headers(fake: FakeDiscord) -> None:
    headers = {"Authorization": f"Bot {fake.token}"}
    channel = fake.guild.channel()
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{fake.api_base}/users/@me") as response:
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["X-RateLimit-Remaining"] == "4"
            assert (await response.json())["id"] == str(fake.bot_user.id)
        async with http.get(f"{fake.api_base}/users/@me", headers={"Authorization": "Bot wrong"}) as response:
            assert response.status == 401
        url = f"{fake.api_base}/channels/{channel.id}/messages"
        async with http.post(url, json={"content": "x" * 2001}) as response:
            assert (response.status, (await response.json())["code"]) == (400, 50035)
        async with http.post(url, json={"content": ""}) as response:
            assert (response.status, (await response.json())["code"]) == (400, 50006)
        commands = f"{fake.api_base}/applications/{fake.application_id}/commands"
        async with http.put(commands, json=[{"name": "Imagine", "description": "d"}]) as response:
            body = await response.json()
            assert (response.status, body["code"]) == (400, 50035) and "0" in body["errors"]
        assert fake.registered_commands() == []
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps({"content": "raw", "attachments": [{"id": 0}]}))
        form.add_field("files[0]", b"\x89PNG", filename="a.png", content_type="application/octet-stream")
        async with http.post(url, data=form) as response:
            assert response.status == 200
    assert [(c.status, c.response["code"]) for c in fake.take_invalid_requests()] == [
        (400, 50035),
        (400, 50006),
        (400, 50035),
    ]
    message: FakeMessage = fake.messages(channel)[0]
    assert message.attachment.content_type == "image/png" and message.attachment.data == b"\x89PNG"
    assert message.allowed_mentions is None  # nothing sent: Discord would parse every mention


async def gateway_frames(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict]:
    inflate = zlib.decompressobj()
    async for frame in ws:
        if frame.type is aiohttp.WSMsgType.BINARY:
            yield json.loads(inflate.decompress(frame.data))
        elif frame.type is aiohttp.WSMsgType.TEXT:
            yield json.loads(frame.data)


async def test_raw_gateway_resume_replays_missed_dispatches(fake: FakeDiscord) -> None:
    identify = {"op": 2, "d": {"token": fake.token, "intents": 513, "properties": {}}}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json&compress=zlib-stream") as ws:
            frames = gateway_frames(ws)
            hello = await anext(frames)
            assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41_250
            await ws.send_json(identify)
            ready = await anext(frames)
            guild_create = await anext(frames)
            assert (ready["t"], ready["s"], guild_create["t"]) == ("READY", 1, "GUILD_CREATE")
            session_id = ready["d"]["session_id"]
            assert ready["d"]["resume_gateway_url"] == fake.gateway_url
        # offline now: this event waits in the session for a RESUME
        await fake.gateway.dispatch("TYPING_START", {"channel_id": "1"}, guild_id=fake.guild.id)
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws:  # plain text frames
            frames = gateway_frames(ws)
            await anext(frames)
            await ws.send_json({"op": 6, "d": {"token": fake.token, "session_id": session_id, "seq": 2}})
            replayed, resumed = await anext(frames), await anext(frames)
            assert (replayed["t"], replayed["s"]) == ("TYPING_START", 3)
            assert (resumed["t"], resumed["s"]) == ("RESUMED", 4)
            await ws.send_json({"op": 6, "d": {"token": fake.token, "session_id": "nope", "seq": 0}})
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws:
            frames = gateway_frames(ws)
            await anext(frames)
            await ws.send_json({"op": 6, "d": {"token": fake.token, "session_id": "unknown", "seq": 1}})
            assert await anext(frames) == {"op": 9, "d": False}


async def test_raw_gateway_refuses_bad_tokens_and_silent_clients() -> None:
    async with (
        FakeDiscord(heartbeat_interval_ms=100) as fake,
        aiohttp.ClientSession() as http,
    ):
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws:
            await ws.receive()
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 1, "properties": {}}})
            await ws.receive()
            assert ws.close_code == 4004
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws:
            await ws.receive()
            await ws.send_json({"op": 2, "d": {"token": fake.token, "intents": 1, "properties": {}}})
            async for _ in ws:  # never heartbeat: Discord gives up on us
                pass
            assert ws.close_code == 4009 and fake.gateway.heartbeat_timeouts == 1
        privileged = FakeDiscord(privileged_intents=0)
        async with privileged, http.ws_connect(f"{privileged.gateway_url}?v=10&encoding=json") as ws:
            await ws.receive()
            intents = discord.Intents.default()
            intents.message_content = True
            await ws.send_json({"op": 2, "d": {"token": privileged.token, "intents": intents.value}})
            await ws.receive()
            assert ws.close_code == 4014


async def test_boost_tier_raises_the_upload_limit() -> None:
    async with FakeDiscord(guilds=[FakeGuild(name="Boosted", premium_tier=2)]) as fake:
        await configure_discord_endpoint(fake.api_base, None, token=fake.token)
        bot, task = await start_bot(fake)
        try:
            assert bot.get_guild(fake.guild.id).filesize_limit == 50 * MIB
            interaction = await fake.invoke_slash(
                "post", {"size_kib": 12 * 1024}, user=FakeUser(username="bob")
            )
            assert interaction.payload["attachment_size_limit"] == 50 * MIB
            message = await fake.wait_for_message(lambda m: m.attachments)
            assert message.attachment.size == 12 * MIB
        finally:
            await stop_bot(bot, task)
            reset_discord_endpoint()


async def test_zstd_stream_when_the_client_can_decompress_it(fake: FakeDiscord) -> None:
    """discord.py asks for zstd-stream exactly when `zstandard` imports (the dev extra installs it)."""
    zstandard = pytest.importorskip("zstandard")
    decompress = zstandard.ZstdDecompressor().decompressobj()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json&compress=zstd-stream") as ws,
    ):
        hello = await ws.receive_bytes()
        assert json.loads(decompress.decompress(hello))["op"] == 10


# Discord's validation of what the bot sends ------------------------------------------------


def field_errors(body: dict, path: str) -> list[str]:
    """The error codes Discord files under dotted `path` of an Invalid Form Body answer."""
    node = body["errors"]
    for part in filter(None, path.split(".")):
        node = node.get(part, {})
    return [e["code"] for e in node.get("_errors", [])]


async def send_raw(fake: FakeDiscord, method: str, url: str, body: object) -> tuple[dict, int]:
    headers = {"Authorization": f"Bot {fake.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, url, json=body) as response,
    ):
        return await response.json(), response.status


def button(custom_id: str, label: str = "Go") -> dict:
    return {"type": 2, "style": 1, "custom_id": custom_id, "label": label}


BAD_MESSAGES = [
    ({"components": [{"type": 1, "components": [button("x" * 101)]}]}, "components.0.components.0.custom_id"),
    ({"components": [{"type": 1, "components": [button("a", "y" * 81)]}]}, "components.0.components.0.label"),
    (
        {"components": [{"type": 1, "components": [button(str(i)) for i in range(6)]}]},
        "components.0.components",
    ),
    ({"components": [{"type": 1, "components": [button(f"r{i}")]} for i in range(6)]}, "components"),
    (
        {"components": [{"type": 1, "components": [button("same"), button("same")]}]},
        "components.0.components.1.custom_id",
    ),
    ({"embeds": [{"title": "t", "color": "red"}]}, "embeds.0.color"),
    ({"embeds": [{"title": "t", "image": {"url": "result.png"}}]}, "embeds.0.image.url"),
    ({"embeds": [{"title": "t", "timestamp": "yesterday"}]}, "embeds.0.timestamp"),
    ({"embeds": [{"description": "d" * 4097}]}, "embeds.0.description"),
    ({"embeds": [{"title": "t" * 257}]}, "embeds.0.title"),
    ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, "embeds.0.fields.0.value"),
    ({"embeds": [{"footer": {"text": "f" * 2049}}]}, "embeds.0.footer.text"),
    ({"embeds": [{"author": {"name": "a" * 257}}]}, "embeds.0.author.name"),
    ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, "embeds.0.fields"),
    ({"embeds": [{"description": "d" * 3001}, {"description": "d" * 3000}]}, "embeds"),
    ({"embeds": [{"title": str(i)} for i in range(11)]}, "embeds"),
    ({"content": "c" * 2001}, "content"),
    ({"content": "hi", "nonce": "n" * 26}, "nonce"),
]


@pytest.mark.parametrize(("body", "path"), BAD_MESSAGES, ids=[p for _, p in BAD_MESSAGES])
async def test_messages_discord_would_refuse_get_its_400(fake: FakeDiscord, body: dict, path: str) -> None:
    url = f"{fake.api_base}/channels/{fake.guild.channel().id}/messages"
    answer, status = await send_raw(fake, "POST", url, body)
    assert (status, answer["code"], answer["message"]) == (400, 50035, "Invalid Form Body")
    assert field_errors(answer, path), answer
    [refused] = fake.take_invalid_requests()
    assert refused.response == answer and fake.messages() == []


def option(name: str, **extra: object) -> dict:
    return {"type": 3, "name": name, "description": "d", **extra}


def command(*options: dict, name: str = "draw", description: str = "Draw") -> dict:
    return {"type": 1, "name": name, "description": description, "options": list(options)}


CHOICES = [{"name": "a", "value": "a"}]
BAD_COMMANDS = [
    ([command(option("style", choices=CHOICES, autocomplete=True))], "0.options.0.autocomplete"),
    ([command(option("style", choices=[{"name": "n" * 101, "value": "v"}]))], "0.options.0.choices.0.name"),
    ([command(option("style", choices=[{"name": "n", "value": "v" * 101}]))], "0.options.0.choices.0.value"),
    (
        [command({"type": 4, "name": "steps", "description": "d", "min_value": 9, "max_value": 2})],
        "0.options.0.min_value",
    ),
    ([command(option("style", min_length=9, max_length=2))], "0.options.0.min_length"),
    ([command(option("style"), option("style"))], "0.options.1.name"),
    (
        [
            command(
                *(
                    option(f"o{i}", choices=[{"name": "n" * 99, "value": f"{i}{j}"} for j in range(4)])
                    for i in range(21)
                )
            )
        ],
        "0",
    ),
    ([command(name="Draw")], "0.name"),
    ([command(name="draw now")], "0.name"),
    ([command(description="d" * 101)], "0.description"),
    ([command(*(option(f"o{i}") for i in range(26)))], "0.options"),
    (
        [command(option("style", choices=[{"name": str(i), "value": str(i)} for i in range(26)]))],
        "0.options.0.choices",
    ),
    ([command(option("later"), option("first", required=True))], "0.options.1"),
    ([command(), command()], "1.name"),
    ([command({"type": 1, "name": "sub", "description": "d"}, option("loose"))], "0.options"),
]


@pytest.mark.parametrize(("commands", "path"), BAD_COMMANDS, ids=[p for _, p in BAD_COMMANDS])
async def test_command_definitions_discord_would_refuse_get_its_400(
    fake: FakeDiscord, commands: list, path: str
) -> None:
    url = f"{fake.api_base}/applications/{fake.application_id}/commands"
    answer, status = await send_raw(fake, "PUT", url, commands)
    assert (status, answer["code"]) == (400, 50035)
    assert field_errors(answer, path), answer
    assert len(fake.take_invalid_requests()) == 1 and fake.registered_commands() == []


async def test_more_than_ten_files_in_one_message_are_refused(fake: FakeDiscord, bot: DemoBot) -> None:
    channel = bot.get_channel(fake.guild.channel().id)
    files = [discord.File(io.BytesIO(b"x"), f"{i}.txt") for i in range(11)]
    with pytest.raises(discord.HTTPException) as caught:
        await channel.send("eleven", files=files[:10] + files[10:])
    assert (caught.value.status, caught.value.code) == (400, 50035)
    assert [c.files[-1][0] for c in fake.take_invalid_requests()] == ["10.txt"]


async def test_query_and_path_parameters_are_checked_too(fake: FakeDiscord) -> None:
    channel = fake.guild.channel()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as http:
        async with http.get(f"{fake.api_base}/channels/{channel.id}/messages?limit=101") as response:
            assert field_errors(await response.json(), "limit") == ["NUMBER_TYPE_MAX"]
        async with http.get(f"{fake.api_base}/channels/{channel.id}/messages?limit=100") as response:
            assert response.status == 200
    assert len(fake.take_invalid_requests()) == 1


def test_every_route_of_the_fake_has_its_operation_in_the_trimmed_description() -> None:
    missing = [
        f"{method} {pattern}"
        for method, pattern, _, _ in ROUTES
        if find_operation(method, re.sub(r"\{\w+\}", "1", pattern)) is None
    ]
    assert missing == []
    assert re.fullmatch(r"[0-9a-f]{40}", source_commit())


def test_trimmed_description_is_what_the_script_makes_from_the_full_one() -> None:
    full = Path("/work/shared/discord-api-spec/openapi.json")
    if not full.exists():
        pytest.skip("the full description is not on this machine")
    assert trim(json.loads(full.read_text()), find_commit(full)) == json.loads(TRIMMED.read_text())


async def test_an_invalid_request_left_behind_fails_the_test_that_caused_it() -> None:
    mark = len(TALLY.invalid)
    with pytest.raises(AssertionError, match=r"(?s)refused 1 request.*BASE_TYPE_MAX_LENGTH"):
        async with FakeDiscord() as fake:
            url = f"{fake.api_base}/channels/{fake.guild.channel().id}/messages"
            _, status = await send_raw(fake, "POST", url, {"content": "x" * 2001})
            assert status == 400
            [left] = fake.invalid_requests
            assert TALLY.unexpected_since(mark) == [left]  # what the autouse fixture would report
    assert TALLY.unexpected_since(mark) == []  # reported once, by leaving `async with`
