"""REST API v1: a Postman-able backend, served by the same queue and worker as Discord.

A REST caller is a user like any member: its jobs go through the same validation
(`generation.params.validate_request`), the same moderation (`bot.core.moderation`, the
bot-wide rules, since a caller is outside any server), the same fair queue with its per-user
limits and quotas, and the same request log, as `user_id = "api:<key name>"`. A key sees and cancels
only its own jobs; someone else's job id answers 404, exactly like an unknown one, so ids
cannot be probed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.core import metrics
from bot.core.defaults import Who, fill_request, saved_layers
from bot.core.inputs import decode_base64, keep_input
from bot.core.jobs import Job, JobState, Source
from bot.core.moderation import RequestContext
from bot.web.auth import ApiCaller
from bot.web.errors import ApiError
from bot.web.keys import (
    CALLER_KEY,
    KEYS_KEY,
    MODERATOR_KEY,
    QUEUE_KEY,
    REGISTRY_KEY,
    SETTINGS_KEY,
    STORE_KEY,
)
from bot.web.media import media_type
from bot.web.openapi import FIELD_TYPES, openapi_handler, request_fields
from generation.errors import InvalidRequest
from generation.models import default_model_id, get_spec, image_to_video_spec
from generation.params import ASPECTS, MAX_PROMPT_CHARS, aspect_size, validate_request
from generation.phases import JobPhase

log = logging.getLogger(__name__)

PREFIX = "/api/v1"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi_handler, name="openapi")
    r.add_post(f"{PREFIX}/images", create_image, name="create_image")
    r.add_post(f"{PREFIX}/videos", create_video, name="create_video")
    r.add_get(f"{PREFIX}/jobs/{{job_id}}", get_job, name="get_job")
    r.add_delete(f"{PREFIX}/jobs/{{job_id}}", cancel_job, name="cancel_job")
    r.add_get(f"{PREFIX}/jobs/{{job_id}}/result", get_result, name="get_result")
    r.add_get(f"{PREFIX}/queue", get_queue, name="get_queue")


# -- auth --------------------------------------------------------------------------------------


async def authorize(request: web.Request) -> ApiCaller:
    """The caller behind the request's API key: 401 without a valid key, 403 if banned."""
    caller = request.app[KEYS_KEY].authenticate(request.headers.get("Authorization"))
    user = await request.app[STORE_KEY].get_user(caller.user_id)
    if user.banned:
        reason = f" Reason: {user.ban_reason}" if user.ban_reason else ""
        raise ApiError(403, "banned", f"The owner of this API key is banned from using the bot.{reason}")
    request[CALLER_KEY] = caller
    return caller


# -- submitting --------------------------------------------------------------------------------


async def create_image(request: web.Request) -> web.Response:
    return await _create(request, kind="image")


async def create_video(request: web.Request) -> web.Response:
    return await _create(request, kind="video")


async def _create(request: web.Request, *, kind: str) -> web.Response:
    caller = await authorize(request)
    body = await json_object(request)
    check_body(kind, body)
    who = Who(user_id=caller.user_id)  # the key owner's own defaults and presets
    saved = await saved_layers(request.app[STORE_KEY], who, body.pop("preset", None))
    settings, registry = request.app[SETTINGS_KEY], request.app[REGISTRY_KEY]
    picture = kind == "video" and body.get("image") is not None
    body, _ = fill_request(body, saved, kind=kind, registry=registry, settings=settings, picture=picture)
    check_body(kind, body)
    kept = await keep_image(request, body)
    return await submit_job(request, caller, kind=kind, body=body, kept=kept)


async def submit_job(
    request: web.Request,
    caller: ApiCaller,
    *,
    kind: str,
    body: dict[str, Any],
    kept: str | None,
    parent_id: str | None = None,
    lineage: str | None = None,
) -> web.Response:
    """Validate, moderate and queue a job from a checked body, and answer 202 with it.

    A refused request keeps nothing of the caller's: `kept`, its input picture, is deleted again.
    """
    try:
        job = _build_job(request, caller=caller, kind=kind, body=body)
        job.parent_id, job.lineage = parent_id, lineage
        # the same rules as /imagine; a REST caller is outside any server, so the bot-wide ones
        ctx = RequestContext(user_id=caller.user_id, guild_id=None, channel_id=None)
        await request.app[MODERATOR_KEY].check(ctx, prompt=job.prompt, negative_prompt=job.negative_prompt)
        submitted = await request.app[QUEUE_KEY].submit(job)
    except Exception:
        await discard_input(kept)
        raise
    job = submitted.job
    metrics.API_JOBS_SUBMITTED.labels(key=caller.key_name, kind=kind).inc()
    log.info(
        "api: job %s (%s, %s) queued for key %r at position %s",
        job.id,
        kind,
        job.model,
        caller.key_name,
        submitted.position,
    )
    run_s = getattr(submitted, "run_s", None)
    live = Live(
        position=submitted.position,
        eta_s=submitted.eta_s,
        finish_in_s=None if run_s is None or submitted.eta_s is None else submitted.eta_s + run_s,
    )
    location = request.app.router["get_job"].url_for(job_id=job.id)
    return web.json_response(job_json(job, live), status=202, headers={"Location": str(location)})


async def discard_input(kept: str | None) -> None:
    """Delete an input picture kept for a request that was then refused."""
    if kept is not None:
        await asyncio.to_thread(Path(kept).unlink, missing_ok=True)


async def keep_image(request: web.Request, body: dict[str, Any]) -> str | None:
    """A base64 `image` checked and kept under RESULTS_DIR/inputs; the body then names its path."""
    text = body.get("image")
    if text is None:
        return None
    settings = request.app[SETTINGS_KEY]
    data = decode_base64(text)
    path = await asyncio.to_thread(keep_input, settings.results_dir, data, settings.input_limits)
    body["image"] = path
    return path


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "Send the parameters as JSON (Content-Type: application/json)."
        )
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object of parameters.")
    return body


_JSON_NAMES = {"string": "text", "integer": "a whole number", "number": "a number"}


def check_body(kind: str, body: dict[str, Any]) -> None:
    """Exact field names and JSON types, as the OpenAPI document states them.

    `validate_request` also accepts numbers written as strings and a few aliases (handy for
    the CLI); a JSON API should not, so that what the document calls invalid is refused.
    """
    allowed = request_fields(kind)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter(s) {', '.join(u[:40] for u in unknown[:5])} for a {kind}; "
            f"allowed: {', '.join(allowed)}."
        )
    for name, value in body.items():
        if value is None:
            continue
        expected = FIELD_TYPES[name]
        if expected == "string":
            ok = isinstance(value, str)
            if ok and name != "image" and len(value) > MAX_PROMPT_CHARS:  # before cleaning, as documented
                raise InvalidRequest(
                    f"{name} is {len(value)} characters long; the most allowed is {MAX_PROMPT_CHARS}."
                )
        elif isinstance(value, bool):
            ok = False
        elif expected == "integer":
            ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        else:
            ok = isinstance(value, int | float)
        if not ok:
            raise InvalidRequest(f"{name} must be {_JSON_NAMES[expected]}, not {_json_type(value)}.")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, int | float):
        return "a number with a fraction" if isinstance(value, float) else "a number"
    return "a list" if isinstance(value, list) else "an object"


def _build_job(request: web.Request, *, caller: ApiCaller, kind: str, body: dict[str, Any]) -> Job:
    settings = request.app[SETTINGS_KEY]
    registry = request.app[REGISTRY_KEY]
    raw = dict(body)
    picture = raw.get("image") is not None
    model_id = raw.pop("model", None)
    if model_id is None:
        model_id = default_model_id(settings, kind, image=picture)  # type: ignore[arg-type]
    if not isinstance(model_id, str):
        raise InvalidRequest("model must be a model id (text).")
    spec = get_spec(registry, model_id, kind=kind)  # type: ignore[arg-type]
    notes: list[str] = []
    if picture and kind == "video" and not spec.takes_image:  # a picture goes to the model's i2v partner
        spec = image_to_video_spec(registry, spec)
        notes.append(f"{model_id} animates a picture through {spec.id}")
    aspect = raw.pop("aspect", None)
    if aspect is not None:
        if kind != "image":
            raise InvalidRequest("aspect is only for images; give width and height for a video.")
        if not isinstance(aspect, str):
            raise InvalidRequest(f"aspect must be one of {', '.join(ASPECTS)}.")
        size = aspect_size(aspect, spec)
        if raw.get("width") is None and raw.get("height") is None:
            raw["width"], raw["height"] = size
    request_ = validate_request(kind, raw, spec, settings)
    return Job(
        kind=kind,
        model=spec.id,
        prompt=request_.prompt,
        negative_prompt=request_.negative_prompt,
        seed=request_.seed,
        params=request_.to_dict(),
        user_id=caller.user_id,
        user_name=caller.user_name,
        source=Source.API,
        max_tries=settings.max_tries,
        notes=notes + list(request_.notes),
    )


# -- reading and cancelling --------------------------------------------------------------------


async def own_job(request: web.Request, caller: ApiCaller, job_id: str | None = None) -> Job:
    """The caller's job named in the path (or `job_id`); anyone else's answers like an unknown one."""
    job_id = request.match_info["job_id"] if job_id is None else job_id
    job = await request.app[STORE_KEY].get_job(job_id) if plausible_job_id(job_id) else None
    if job is None or job.user_id != caller.user_id:
        raise ApiError(404, "job_not_found", f"No job {job_id[:64]!r} for this API key.")
    return job


def plausible_job_id(job_id: str) -> bool:
    """Worth a database lookup: ids are short and URL-safe, so anything else is unknown."""
    return 0 < len(job_id) <= 64 and all(c.isalnum() or c in "-_" for c in job_id)


@dataclass(frozen=True)
class Live:
    """Where an active job stands: place in line, seconds until it starts and until it is done."""

    position: int | None = None
    eta_s: float | None = None
    finish_in_s: float | None = None
    progress: dict[str, int] | None = None


def _live(request: web.Request, job: Job) -> Live:
    """Position, ETAs and progress of an active job, as the queue sees it right now."""
    if job.state.is_final:
        return Live()
    queue = request.app[QUEUE_KEY]
    position = queue.position(job.id)
    eta = queue.eta_s(job.id)
    progress = finish = None
    if job.state is JobState.IN_PROGRESS or position == 0:
        snap = queue.snapshot()
        progress = job_progress(snap, job.id)
        remaining = getattr(queue, "remaining_s", None)
        finish = remaining(job.id) if remaining is not None else None
    elif eta is not None:
        entries = getattr(queue.snapshot(), "queued", ())
        run_s = next((getattr(e, "run_s", None) for e in entries if e.job.id == job.id), None)
        finish = None if run_s is None else eta + run_s
    return Live(position=position, eta_s=eta, finish_in_s=finish, progress=progress)


def job_progress(snap: Any, job_id: str) -> dict[str, int] | None:
    """Step and total of a job a worker holds, from a queue snapshot (None if no worker holds it)."""
    entry = snap.running_entry(job_id)
    return None if entry is None else {"step": int(entry.step), "total": int(entry.total)}


async def get_job(request: web.Request) -> web.Response:
    caller = await authorize(request)
    job = await own_job(request, caller)
    return web.json_response(job_json(job, _live(request, job)))


async def cancel_job(request: web.Request) -> web.Response:
    caller = await authorize(request)
    job = await own_job(request, caller)
    if job.state.is_final:
        raise ApiError(
            409, "already_finished", f"Job {job.id} is already {job.state.value}; nothing to cancel."
        )
    job = await request.app[QUEUE_KEY].cancel(job.id, by_user_id=caller.user_id, is_admin=False)
    log.info("api: job %s cancelled by key %r (state now %s)", job.id, caller.key_name, job.state.value)
    return web.json_response(job_json(job, _live(request, job)))


async def get_result(request: web.Request) -> web.StreamResponse:
    caller = await authorize(request)
    job = await own_job(request, caller)
    if job.state is not JobState.COMPLETE:
        raise ApiError(409, "not_ready", f"Job {job.id} is {job.state.value}; its result is not available.")
    path = Path(job.result_path) if job.result_path else None
    if path is None or not await asyncio.to_thread(path.is_file):
        raise ApiError(410, "gone", f"The result file of job {job.id} is no longer kept.")
    return file_response(path, filename=f"{job.id}{path.suffix}")


def file_response(path: Path, *, filename: str, content_type: str | None = None) -> web.FileResponse:
    """The file with its exact type, length and byte-range support (browsers seek videos)."""
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type or media_type(path),
            "Content-Disposition": f'inline; filename="{filename}"',
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def get_queue(request: web.Request) -> web.Response:
    caller = await authorize(request)
    snap = request.app[QUEUE_KEY].snapshot()
    running_json = None
    # the REST document names one running job: the one on a GPU the longest
    entry = next((e for e in snap.running if e.phase == JobPhase.RUNNING), None)
    if entry is not None:
        running = entry.job
        running_json = {
            "kind": running.kind,
            "model": running.model,
            "mine": running.user_id == caller.user_id,
            "id": running.id if running.user_id == caller.user_id else None,
            "progress": {"step": entry.step, "total": entry.total},
        }
    mine = [
        {"id": e.job.id, "kind": e.job.kind, "model": e.job.model, "position": e.position, "eta_s": e.eta_s}
        for e in snap.queued
        if e.job.user_id == caller.user_id
    ]
    return web.json_response(
        {"paused": bool(snap.paused), "length": len(snap.queued), "running": running_json, "jobs": mine}
    )


# -- serialisation -----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def job_json(job: Job, live: Live) -> dict[str, Any]:
    result = None
    if job.state is JobState.COMPLETE and job.result_path:
        result = {
            "url": f"{PREFIX}/jobs/{job.id}/result",
            "media_type": media_type(job.result_path),
            "size_bytes": job.result_bytes,
            "nsfw_detected": job.nsfw_detected,
        }
    return {
        "id": job.id,
        "kind": job.kind,
        "model": job.model,
        "state": job.state.value,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "params": job.params,
        "notes": job.notes,
        "position": live.position,
        "eta_s": _seconds(live.eta_s),
        "finish_in_s": _seconds(live.finish_in_s),
        "progress": live.progress,
        "cancel_requested": job.cancel_requested,
        "parent_id": job.parent_id,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "queue_wait_s": job.queue_wait_s,
        "gpu_seconds": job.gpu_seconds,
        "error": job.error,
        "result": result,
    }
