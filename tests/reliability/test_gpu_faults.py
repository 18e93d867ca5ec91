"""What a member sees when the GPU misbehaves, through the real bot process.

The queue's own tests (tests/queue/test_queue.py) prove the worker's mechanics in-process:
OOM fallback through every memory mode, a hung step replaced by a fresh thread, the time
limit at the next step. These stories add the bot around them: `tests.reliability.faulty_bot`
(which is `python -m bot` with faults a prompt can ask for), one deployment whose configured
image model cannot be loaded, and members who keep using the video model meanwhile.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import aiohttp
import pytest

from tests.bot.test_e2e import TINY, TINY_VIDEO, ask, private_reply, queue_job, result_message, status_message
from tests.reliability.conftest import Deployment, deployment, results_for

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOB_TIMEOUT_S = 5
BROKEN_MODEL = {
    "broken-image": {
        "repo_id": "nobody/not-in-any-cache",
        "pipeline": "StableDiffusionPipeline",
        "kind": "image",
        "description": "an image model whose weights are missing",
    }
}


async def final_status_text(bot: Deployment, short: str, *, timeout: float = 60) -> str:
    """The public status line once the job is over without a file (failed or cancelled)."""
    status = status_message(bot, short)
    await bot.discord.wait_until(
        lambda: "Failed" in status.content or "Cancelled" in status.content,
        timeout=timeout,
        what=f"job {short} to end without a result",
    )
    return status.content


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_gpu_faults_and_a_model_that_will_not_load_leave_the_bot_serving(
    workdir: Path, tiny_model_cache: Path
) -> None:
    env = {
        "IMAGE_MODEL": "broken-image",
        "EXTRA_MODELS": json.dumps(BROKEN_MODEL),
        "HF_OFFLINE": "true",
        "JOB_TIMEOUT_S": str(JOB_TIMEOUT_S),
        "STEP_WATCHDOG_S": "300",  # the default order of magnitude: the time limit must act first
    }
    async with deployment(workdir, tiny_model_cache, module="tests.reliability.faulty_bot", env=env) as bot:
        # -- a configured model that cannot be loaded: not ready, and it says why
        status, body = await http_get(f"{bot.web_url}/readyz")
        assert status == 503 and "broken-image" in body, body
        assert (await http_get(f"{bot.web_url}/healthz"))[0] == 200

        # ... and its job fails before Discord has even answered the post of its status message:
        # that message must still end up saying why
        answer = bot.discord.hold_answer("POST", r"^/channels/\d+/messages$")
        interaction = await ask(bot, "imagine", {"prompt": "a cat", **TINY}, user="alice")
        await bot.discord.wait_until(
            lambda: "failed: image broken-image" in bot.log_text(), timeout=60, what="the job to fail"
        )
        answer.set()
        reply = await private_reply(interaction)
        assert "Queued" in reply.content, reply.content  # refused by the GPU thread, not at the door
        short = re.search(r"`([0-9a-f]{8})`", reply.content).group(1)
        text = await final_status_text(bot, short)
        assert "broken-image" in text and "available" in text.lower(), text
        assert str(tiny_model_cache) not in text and "Traceback" not in text  # no server internals

        # -- the video model still works, with an out-of-memory error on the way
        oom = await queue_job(bot, "video", {"prompt": "waves [oom]", **TINY_VIDEO}, user="bob")
        message = await result_message(bot, oom)
        assert message.attachment is not None and message.attachment.filename.endswith(".mp4")
        assert "memory mode of tiny-video lowered from full to offload" in bot.log_text()
        _, metrics = await http_get(f"{bot.web_url}/metrics")
        assert re.search(r'imagine_oom_retries_total\{model="tiny-video"\} 1\.0', metrics), metrics[-2000:]

        # -- a step that never returns: failed at the time limit, and the next member is served
        t0 = time.monotonic()
        hung = await queue_job(bot, "video", {"prompt": "frozen [hang]", **TINY_VIDEO}, user="carol")
        behind = await queue_job(bot, "video", {"prompt": "after the freeze", **TINY_VIDEO}, user="dave")
        text = await final_status_text(bot, hung, timeout=JOB_TIMEOUT_S + 30)
        failed_after = time.monotonic() - t0
        assert "time limit" in text or "stopped responding" in text, text
        assert failed_after < JOB_TIMEOUT_S + 10, failed_after
        assert (await result_message(bot, behind, timeout=60)).attachment is not None
        assert not results_for(bot.discord, hung)

        # -- out of memory in every mode: a clear failure, and the worker keeps serving
        hopeless = await queue_job(bot, "video", {"prompt": "huge [oom-always]", **TINY_VIDEO}, user="erin")
        text = await final_status_text(bot, hopeless)
        assert "ran out of memory" in text and "Try a smaller size" in text, text
        after = await queue_job(bot, "video", {"prompt": "small again", **TINY_VIDEO}, user="erin")
        assert (await result_message(bot, after)).attachment is not None

        # -- still up, and it says what is wrong
        assert bot.proc.returncode is None
        info = await private_reply(await ask(bot, "info", user="frank"))
        fields = {f["name"]: f["value"] for f in info.embed["fields"]}
        assert fields["Worker"] == "alive" and "tiny-video" in fields["Models"]
    log.info(
        "hung step: job failed %.1f s after it was queued (JOB_TIMEOUT_S=%d)", failed_after, JOB_TIMEOUT_S
    )
