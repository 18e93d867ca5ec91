"""The REST API passes the same moderation as /imagine: the bot-wide blocklist and bans refuse a
request with a clear JSON error, and nothing of it is queued or stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings
from tests.web.conftest import auth, make_web_settings

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(120)

IMAGE = {"steps": 2, "width": 32, "height": 32, "seed": 5}


@pytest.fixture
def web_settings(tmp_path: Path, tiny_model_cache: Path) -> Settings:
    return make_web_settings(tmp_path, tiny_model_cache, prompt_blocklist=["Forbidden", r"re:smok\w+ gun"])


async def assert_refused(resp: Any, status: int, code: str) -> str:
    assert resp.status == status and resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["code"] == code
    return error["message"]


async def assert_nothing_queued(queue: Any, store: Any, user_id: str) -> None:
    snap = queue.snapshot()
    assert not snap.queued and not snap.running
    assert await store.user_history(user_id) == []


async def test_a_blocked_prompt_or_negative_prompt_is_refused_and_nothing_is_queued(
    make_client, real_queue, store
) -> None:
    client = await make_client(real_queue)
    for body in (
        {"prompt": "a forbidden garden", **IMAGE},  # whole word, any case
        {"prompt": "a detective with a Smoking gun", **IMAGE},  # a re: pattern
        {"prompt": "a quiet garden", "negative_prompt": "FORBIDDEN", **IMAGE},  # shown publicly too
    ):
        resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
        message = await assert_refused(resp, 400, "prompt_blocked")
        assert message == "Your prompt contains a word or phrase this bot does not allow."
        assert "forbidden" not in message.lower()  # the list itself is not revealed
    await assert_nothing_queued(real_queue, store, "api:alice")

    # the same caller with a clean prompt is served: the refusals were the prompts, not the key
    resp = await client.post(
        "/api/v1/images", json={"prompt": "forbiddenness", **IMAGE}, headers=auth("alice")
    )
    assert resp.status == 202, await resp.text()


async def test_a_banned_key_is_refused_and_nothing_is_queued(make_client, real_queue, store) -> None:
    await store.set_ban("api:bob", banned=True, reason="scraping", by="admin:1")
    client = await make_client(real_queue)
    resp = await client.post("/api/v1/images", json={"prompt": "a teapot", **IMAGE}, headers=auth("bob"))
    message = await assert_refused(resp, 403, "banned")
    assert "banned" in message and "scraping" in message
    await assert_nothing_queued(real_queue, store, "api:bob")


def test_a_bad_pattern_in_the_bot_wide_blocklist_stops_the_start_up(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    with pytest.raises(ValueError, match=r"PROMPT_BLOCKLIST: That regular expression is invalid"):
        make_web_settings(tmp_path, tiny_model_cache, prompt_blocklist=["fine", "re:(unclosed"])
