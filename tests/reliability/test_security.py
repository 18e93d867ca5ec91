"""The security review's claims (the README's Security section), checked against the real bot process.

Admin commands are refused to members without Manage Server; a ban stops a job that was
already queued when it was made (checked again at claim, not only at enqueue); an admin can
delete a member's data; and no secret the bot was given ever reaches its log or its database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.core.jobs import JobState
from bot.core.store.sqlite import SQLiteStore
from tests.bot.test_e2e import TINY, ask, private_reply, queue_job, result_message, status_message
from tests.reliability.conftest import Deployment, deployment, results_for, wait_for

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, pytest.mark.timeout(300)]

API_KEY = "sk-security-test-5f0e2a9c41b7d3e8"
LINK_SECRET = "link-secret-9d1c77a04be35f62a8c0"
LONG_VIDEO = {"steps": 30, "frames": 64, "fps": 8}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> AsyncIterator[Deployment]:
    env = {"API_KEYS": json.dumps({"partner": API_KEY}), "LINK_SECRET": LINK_SECRET}
    async with deployment(tmp_path_factory.mktemp("security"), tiny_model_cache, env=env) as running:
        yield running


def admin_leaves(definition: dict[str, Any], prefix: str = "admin") -> list[tuple[str, list[dict]]]:
    """Every /admin subcommand as registered ("admin blocklist add", …) with its option definitions."""
    leaves = []
    for option in definition.get("options", []):
        if option["type"] == 1:
            leaves.append((f"{prefix} {option['name']}", option.get("options", [])))
        elif option["type"] == 2:
            leaves += admin_leaves(option, f"{prefix} {option['name']}")
    return leaves


async def test_every_admin_command_is_refused_to_a_member_without_manage_server(bot: Deployment) -> None:
    samples = {3: "x", 4: 1, 5: True, 6: bot.members["bob"], 7: bot.art.channel("studio"), 10: 1.0}
    leaves = admin_leaves(bot.discord.command("admin"))
    assert len(leaves) >= 15, [name for name, _ in leaves]
    for name, options in leaves:
        values = {
            o["name"]: o["choices"][0]["value"] if o.get("choices") else samples[o["type"]]
            for o in options
            if o.get("required")
        }
        # validate=False: Discord's client hides admin commands from such members; we send anyway
        interaction = await bot.discord.invoke_slash(
            name, values, user=bot.members["stranger"], guild=bot.art, validate=False
        )
        response = await interaction.wait_for_response()
        text = response.content or (await interaction.wait_for_followup()).content
        assert "Manage Server" in text, (name, text)
    async with SQLiteStore(path=bot.db_path) as store:
        assert await store.list_audit() == []  # nothing was done
        assert not (await store.get_user(str(bot.members["bob"].user.id))).banned
        assert await store.get_meta("queue_paused") is None


async def test_a_ban_made_after_queueing_stops_the_job_before_it_runs(bot: Deployment) -> None:
    busy = await queue_job(bot, "video", {"prompt": "keeps the GPU busy", **LONG_VIDEO}, user="alice")
    waiting = await queue_job(bot, "imagine", {"prompt": "queued before the ban", **TINY}, user="dave")
    dave = str(bot.members["dave"].user.id)
    # banned behind the queue's back (another bot instance, or a database tool): no purge ran
    async with SQLiteStore(path=bot.db_path) as store:
        await store.set_ban(dave, banned=True, reason="spam", by="another instance")
    await result_message(bot, busy, timeout=90)
    status = status_message(bot, waiting)
    await bot.discord.wait_until(lambda: "Cancelled" in status.content, timeout=30, what="the job cancelled")
    assert not results_for(bot.discord, waiting)
    async with SQLiteStore(path=bot.db_path) as store:
        job = next(j for j in await store.user_history(dave) if j.id.startswith(waiting))
        assert job.state is JobState.CANCELLED and job.started_at is None and "banned" in (job.error or "")
        await store.set_ban(dave, banned=False, reason=None, by="test")


async def test_an_admin_can_delete_a_members_data_and_the_ban_and_audit_stay(bot: Deployment) -> None:
    short = await queue_job(bot, "imagine", {"prompt": "my private sketch", **TINY}, user="carol")
    await result_message(bot, short)
    carol = bot.members["carol"].user
    async with SQLiteStore(path=bot.db_path) as store:
        (job,) = await store.user_history(str(carol.id))
    assert job.result_path and await asyncio.to_thread(Path(job.result_path).exists)

    await private_reply(
        await ask(bot, "admin ban", {"user": bot.members["carol"], "reason": "x"}, user="admin")
    )
    reply = await private_reply(
        await ask(bot, "admin forget", {"user": bot.members["carol"], "reason": "her request"}, user="admin")
    )
    assert "Deleted 1 request(s)" in reply.content, reply.content

    async with SQLiteStore(path=bot.db_path) as store:
        assert await store.user_history(str(carol.id)) == []
        assert (await store.get_user(str(carol.id))).banned  # moderation survives a deletion request
        actions = [entry.action for entry in await store.list_audit(target=str(carol.id))]
    assert "forget" in actions and "ban" in actions
    assert not await asyncio.to_thread(Path(job.result_path).exists)
    history = await private_reply(await ask(bot, "history", user="carol"))
    assert "my private sketch" not in history.text
    await private_reply(await ask(bot, "admin unban", {"user": bot.members["carol"]}, user="admin"))


async def test_no_secret_reaches_the_log_or_the_database(bot: Deployment) -> None:
    # exercise what handles secrets: API auth (right and wrong key), signed links, the gateway
    async with aiohttp.ClientSession() as http:
        for key in (API_KEY, API_KEY[:-1] + "x", "Bearer " + API_KEY):
            async with http.post(
                f"{bot.web_url}/api/v1/images",
                json={"prompt": "a key test", **TINY},
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status in (202, 401)
    short = await queue_job(bot, "imagine", {"prompt": "linked", **TINY}, user="erin")
    bot.discord.fail_next("POST", r"/channels/\d+/messages$", 413, code=40005, times=1)
    message = await result_message(bot, short)
    link = next(f["value"] for f in message.embed["fields"] if f["name"] == "Download")
    assert LINK_SECRET not in link and re.search(r"[?&]s=", link)
    await bot.discord.drop_gateway()  # the reconnect resends the token in IDENTIFY/RESUME
    await wait_for(lambda: bot.discord.connected, timeout=30, what="the reconnect")

    assert not bot.leaked_secrets()
    for path in bot.workdir.glob("bot.db*"):
        data = path.read_bytes()
        for secret in bot.secrets():
            assert secret.encode() not in data, f"{secret[:6]}… stored in {path.name}"
