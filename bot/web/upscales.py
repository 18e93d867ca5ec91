"""`POST /api/v1/upscales`: a picture made `UPSCALE_MODEL`'s factor wider and taller, as Discord's Upscale.

The picture comes either as base64 `image`, checked and kept exactly like the input picture of
`POST /images`, or as image `n` of one of the key's own finished results (`job_id`), copied into
the inputs folder as the Upscale button does, so the upscale keeps its source even if that
result is deleted. The job then takes the path of every REST create (`api.submit_job`):
validation, moderation, the fair queue and its quotas, and the request log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from bot.core.inputs import DEFAULT_UPSCALE_PROMPT, keep_result_picture, upscale_params
from bot.core.jobs import Job, JobState
from bot.web.api import (
    PREFIX,
    authorize,
    check_body,
    discard_input,
    json_object,
    keep_image,
    own_job,
    submit_job,
)
from bot.web.auth import ApiCaller
from bot.web.errors import ApiError
from bot.web.keys import SETTINGS_KEY
from generation.errors import InvalidRequest

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/upscales", create_upscale, name="create_upscale")


async def create_upscale(request: web.Request) -> web.Response:
    caller = await authorize(request)
    body = await json_object(request)
    check_body("upscale", body)
    prompt = body.get("prompt")
    parent: Job | None = None
    if body.get("job_id") is not None:
        if body.get("image") is not None:
            raise InvalidRequest("Send either image (a picture) or job_id (one of your results), not both.")
        parent, kept = await _keep_result(request, caller, body["job_id"], body.get("n"))
        prompt = parent.prompt if prompt is None else prompt
    elif body.get("image") is not None:
        if body.get("n") is not None:
            raise InvalidRequest("n picks an image of job_id's result; leave it out when you send image.")
        kept = await keep_image(request, body)
    else:
        raise InvalidRequest(
            "Send the picture to upscale: image (base64 PNG, JPEG or WebP), or job_id (and n) "
            "of one of your finished image results."
        )
    prompt = DEFAULT_UPSCALE_PROMPT if prompt is None else prompt
    try:
        raw = await asyncio.to_thread(upscale_params, kept, prompt)
    except Exception:
        await discard_input(kept)
        raise
    parent_id = None if parent is None else parent.id
    return await submit_job(
        request, caller, kind="upscale", body=raw, kept=kept, parent_id=parent_id, lineage="upscaled"
    )


async def _keep_result(request: web.Request, caller: ApiCaller, job_id: str, n: Any) -> tuple[Job, str]:
    """The caller's finished image job and a kept copy of its image `n` (1 when not given)."""
    job = await own_job(request, caller, job_id)
    if job.kind != "image":
        raise InvalidRequest(f"Job {job.id} made {_article(job.kind)}; only pictures can be upscaled.")
    if job.state is not JobState.COMPLETE:
        raise ApiError(
            409,
            "not_ready",
            f"Job {job.id} is {job.state.value}; only a complete job's picture can be upscaled.",
        )
    n = 1 if n is None else int(n)
    if not 1 <= n <= job.units:
        raise InvalidRequest(f"n must be from 1 to {job.units}: job {job.id} made {job.units} image(s).")
    settings = request.app[SETTINGS_KEY]
    kept = await asyncio.to_thread(
        keep_result_picture, settings.results_dir, job, n, settings.input_limits, use="upscaled"
    )
    return job, kept


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
