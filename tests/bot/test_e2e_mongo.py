"""The whole bot on MongoDB: `python -m bot` with `STORE_URL=mongodb://…` against the fake Discord.

Runs on the server at `MONGODB_TEST_URI` (CI starts one, see .ci/run) in a database of its own,
dropped afterwards. A member's picture, an admin's ban and the member's history all go through the
Mongo driver, and after a clean shutdown the records are read back from the server.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from pathlib import Path

import pytest

from bot.core.jobs import JobState
from bot.core.store.mongo import MongoStore, make_client
from tests.bot.conftest import BotProcess, bot_env, free_port, make_world, start_bot, stop_bot
from tests.bot.test_e2e import TINY, ask, job_id_of, private_reply, queue_job, result_message
from tests.fake_discord import FakeDiscord
from tests.real_mongodb import MONGODB_TEST_URI

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_mongodb,
    pytest.mark.skipif(
        not MONGODB_TEST_URI, reason="MONGODB_TEST_URI is not set: no MongoDB to run the bot on"
    ),
]


def store_url(db_name: str) -> str:
    base, _, query = MONGODB_TEST_URI.partition("?")
    return f"{base.rstrip('/')}/{db_name}" + (f"?{query}" if query else "")


async def test_a_member_and_an_admin_on_a_mongodb_store(tmp_path: Path, tiny_model_cache: Path) -> None:
    db_name = f"imaginebot_e2e_{uuid.uuid4().hex[:10]}"
    guilds, members = make_world()
    async with FakeDiscord(guilds=guilds, heartbeat_interval_ms=1000) as discord:
        port = free_port()
        env = bot_env(discord, tmp_path, tiny_model_cache, port)
        env["STORE_URL"] = store_url(db_name)
        bot = BotProcess(
            discord=discord,
            proc=await start_bot(discord, env, tmp_path),
            workdir=tmp_path,
            log_path=tmp_path / "bot.log",
            web_url=f"http://127.0.0.1:{port}",
            env=env,
            members=members,
        )
        try:
            await discord.wait_until_connected(timeout=90)
            await discord.wait_for_commands(timeout=30)
            short = await queue_job(bot, "imagine", {"prompt": "a harbour on mongo", **TINY}, user="alice")
            posted = await result_message(bot, short)
            assert posted.attachment is not None and posted.attachment.filename.endswith(".png")

            await private_reply(
                await ask(bot, "admin ban", {"user": members["dave"], "reason": "spam"}, user="admin")
            )
            refused = await private_reply(
                await ask(bot, "imagine", {"prompt": "me too", **TINY}, user="dave")
            )
            assert "banned" in refused.content.lower() and "spam" in refused.content
            history = await private_reply(await ask(bot, "history", user="alice"))
            assert any("a harbour on mongo" in f["value"] for f in history.embed["fields"])
            assert await stop_bot(bot.proc) == 0
            assert "Mongo store open: database " + db_name in bot.log_text()
        except BaseException:
            sys.stderr.write(bot.log_text()[-6000:])
            raise
        finally:
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await stop_bot(bot.proc)

    client = make_client(MONGODB_TEST_URI)
    try:
        async with MongoStore(client=client, db_name=db_name) as store:
            job = await store.get_job(job_id_of(posted))
            assert job is not None and job.state is JobState.COMPLETE and job.gpu_seconds
            assert job.result_message_id == str(posted.id)
            alice = members["alice"].user.id
            assert (await store.get_user(str(alice))).jobs_total == 1
            dave = await store.get_user(str(members["dave"].user.id))
            assert dave.banned and dave.ban_reason == "spam"
            assert [e.action for e in await store.list_audit(target=str(members["dave"].user.id))] == ["ban"]
        await client.drop_database(db_name)
    finally:
        client.close()
