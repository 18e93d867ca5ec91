"""The OpenAPI 3.1 description of the web server, built from the live model registry.

Written by hand next to the handlers it describes (tests/web run schemathesis against the
running server to keep the two in step). Parameter bounds come from the registry, so the
document states the widest limits any configured model accepts; a model's own, narrower
limits are enforced by `validate_request` and answered with 400 naming the parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bot.web.keys import REGISTRY_KEY, SETTINGS_KEY
from generation.models import ModelSpec
from generation.params import ASPECTS, MAX_COUNT, MAX_PROMPT_CHARS, MAX_SEED

log = logging.getLogger(__name__)

ERROR_CODES_DOC = (
    "invalid_request, invalid_json, model_unavailable, prompt_blocked, unauthorized, banned, job_not_found, "
    "already_finished, not_ready, gone, too_many_queued, quota_exceeded, queue_full, queue_paused, "
    "store_unavailable, ..."
)


async def openapi_handler(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    doc = build_openapi(
        request.app[REGISTRY_KEY],
        default_ids={"image": settings.image_model, "video": settings.video_model, "i2v": settings.i2v_model},
        public_url=settings.public_url,
    )
    return web.json_response(doc)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema["type"]
    return {**schema, "type": [kind, "null"]}


#: JSON type of every request field, shared with the API's strict body check
FIELD_TYPES: dict[str, str] = {
    "prompt": "string",
    "negative_prompt": "string",
    "model": "string",
    "seed": "integer",
    "steps": "integer",
    "guidance": "number",
    "width": "integer",
    "height": "integer",
    "aspect": "string",
    "frames": "integer",
    "fps": "integer",
    "count": "integer",
    "strength": "number",
    "image": "string",
    "preset": "string",
    "job_id": "string",
    "n": "integer",
}
ASPECT_VALUES = tuple(ASPECTS)
# at least one character that is neither whitespace nor a control character (those are removed)
PROMPT_PATTERN = r"[^\s\x00-\x1f\x7f-\x9f]"


def request_fields(kind: str) -> tuple[str, ...]:
    if kind == "upscale":
        return ("prompt", "image", "job_id", "n")
    common = ("prompt", "negative_prompt", "model", "seed", "steps", "guidance", "width", "height", "preset")
    return (
        (*common, "aspect", "count", "image", "strength")
        if kind == "image"
        else (*common, "frames", "fps", "image")
    )


def _limits(spec: ModelSpec) -> dict[str, Any]:
    """The per-model bounds of a request, as JSON Schema properties."""
    out: dict[str, Any] = {
        "steps": _nullable({"type": "integer", "minimum": spec.min_steps, "maximum": spec.max_steps}),
        "guidance": _nullable({"type": "number", "minimum": spec.min_guidance, "maximum": spec.max_guidance}),
        "width": _nullable({"type": "integer", "minimum": spec.min_width, "maximum": spec.max_width}),
        "height": _nullable({"type": "integer", "minimum": spec.min_height, "maximum": spec.max_height}),
    }
    if spec.kind == "video":
        out["frames"] = _nullable({"type": "integer", "minimum": spec.min_frames, "maximum": spec.max_frames})
        out["fps"] = _nullable({"type": "integer", "minimum": spec.min_fps, "maximum": spec.max_fps})
    return out


def _model_branches(specs: list[ModelSpec], default_id: str | None) -> list[dict[str, Any]]:
    """One branch per model: the default's accepts a missing model, the others require their id."""
    branches = []
    for spec in specs:
        limits = _limits(spec)
        if spec.id == default_id:
            branch = {"properties": {"model": {"enum": [spec.id, None]}, **limits}}
        else:
            branch = {"required": ["model"], "properties": {"model": {"const": spec.id}, **limits}}
        branch["title"] = spec.id + (" (default)" if spec.id == default_id else "")
        branches.append(branch)
    return branches


# Sizes off a model's multiple (8, 16 or 32) are accepted and snapped, so the schema states no multipleOf.
SNAPPED = (
    "Pixels; snapped to the nearest multiple the model needs (8, 16 or 32), and the job's `notes` say so."
)

NO_IMAGE = {"image": {"type": "null"}}
AN_IMAGE = {"image": {"type": "string", "contentEncoding": "base64"}}


def _video_branches(
    specs: list[ModelSpec], default_id: str | None, i2v_id: str | None
) -> list[dict[str, Any]]:
    """Video branches follow the routing: without `image`, a text-to-video model with its own limits
    (image-to-video models need one); with `image`, the model that animates it, with that model's
    limits: the named one, its partner, or I2V_MODEL when none is named."""
    by_id = {s.id: s for s in specs}
    branches = []
    for spec in specs:
        named = {"model": {"const": spec.id}}
        if not spec.takes_image:
            branch = {"required": ["model"], "properties": {**named, **NO_IMAGE, **_limits(spec)}}
            if spec.id == default_id:
                branch = {"properties": {"model": {"enum": [spec.id, None]}, **NO_IMAGE, **_limits(spec)}}
            branches.append({"title": spec.id + " (text)", **branch})
        animator = spec if spec.takes_image else by_id.get(spec.i2v_model or "")
        if animator is not None and animator.takes_image:
            props = {**named, **AN_IMAGE, **_limits(animator)}
            branches.append(
                {"title": f"{spec.id} (picture)", "required": ["model", "image"], "properties": props}
            )
    default_i2v = by_id.get(i2v_id or "")
    if default_i2v is not None and default_i2v.takes_image:
        props = {"model": {"type": "null"}, **AN_IMAGE, **_limits(default_i2v)}
        branches.append(
            {"title": f"picture, no model ({default_i2v.id})", "required": ["image"], "properties": props}
        )
    return branches


def _request_schema(
    kind: str, specs: list[ModelSpec], default_id: str | None, i2v_id: str | None = None
) -> dict[str, Any]:
    """Common fields, plus one `anyOf` branch per model with that model's own limits.

    Leaving `model` out (or null) selects the default model, so the default's branch accepts a
    missing model while every other branch requires its id: a schema-valid request is one the
    server accepts, which schemathesis checks.
    """
    ids = [s.id for s in specs]
    props: dict[str, Any] = {
        "prompt": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_PROMPT_CHARS,
            "pattern": PROMPT_PATTERN,
            "description": "What to generate. Control characters are removed; surrounding spaces trimmed.",
        },
        "negative_prompt": _nullable(
            {"type": "string", "maxLength": MAX_PROMPT_CHARS, "description": "What to avoid."}
        ),
        "model": {
            "enum": [*ids, None],
            "description": f"Model id; null or absent: the default {kind} model"
            + (f" ({default_id})" if default_id else "")
            + ". Each model has its own limits (see anyOf).",
        },
        "seed": _nullable(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEED,
                "description": "Omit for a random seed; the job reports the seed used.",
            }
        ),
        "steps": _nullable({"type": "integer", "description": "Denoising steps."}),
        "guidance": _nullable({"type": "number", "description": "Classifier-free guidance scale."}),
        "width": _nullable({"type": "integer", "description": SNAPPED}),
        "height": _nullable({"type": "integer", "description": SNAPPED}),
    }
    props["preset"] = _nullable(
        {
            "type": "string",
            "maxLength": 32,
            "description": "One of the presets of this key's owner (user id `api:<key name>`): its saved "
            "options fill in what the request leaves out, after the owner's own defaults.",
        }
    )
    if kind == "image":
        props["aspect"] = {
            "enum": [*ASPECT_VALUES, None],
            "description": "Shape at about the model's default pixel count; "
            "ignored when width or height is given.",
        }
        props["count"] = _nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_COUNT,
                "description": "Images in one job (a grid).",
            }
        )
        props["image"] = _nullable(
            {
                "type": "string",
                "contentEncoding": "base64",
                "description": "A PNG, JPEG or WebP picture to start from (image-to-image), as base64 "
                "(a data: URL prefix is allowed); within INPUT_IMAGE_MAX_BYTES and INPUT_IMAGE_MAX_PIXELS.",
            }
        )
        props["strength"] = _nullable(
            {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "How much of `image` to repaint: 0 keeps it, 1 ignores it (default 0.6).",
            }
        )
    else:
        props["frames"] = _nullable({"type": "integer", "description": "Number of frames."})
        props["fps"] = _nullable({"type": "integer", "description": "Frames per second of the MP4."})
        props["image"] = _nullable(
            {
                "type": "string",
                "contentEncoding": "base64",
                "description": "A PNG, JPEG or WebP picture to animate (its first frame), as base64 (a data: "
                "URL prefix is allowed); within INPUT_IMAGE_MAX_BYTES and INPUT_IMAGE_MAX_PIXELS. An "
                "image-to-video model requires it; a text-to-video model given one hands the job to its "
                "image-to-video partner (with that model's limits); no model: I2V_MODEL.",
            }
        )
    branches = (
        _model_branches(specs, default_id) if kind == "image" else _video_branches(specs, default_id, i2v_id)
    )
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": props,
    }
    # no models of this kind: nothing can be valid, which `not: {}` says
    schema["anyOf"] = branches or [{"not": {}}]
    return schema


def _upscale_schema() -> dict[str, Any]:
    """Exactly one source: an uploaded picture, or image `n` of one of the key's finished results."""
    picture = {
        "title": "an uploaded picture",
        "required": ["image"],
        "properties": {"image": {"type": "string"}, "job_id": {"type": "null"}, "n": {"type": "null"}},
    }
    result = {
        "title": "an image of one of this key's results",
        "required": ["job_id"],
        "properties": {"job_id": {"type": "string"}, "image": {"type": "null"}},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image": _nullable(
                {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "The PNG, JPEG or WebP picture to upscale, as base64 (a data: URL prefix "
                    "is allowed); within INPUT_IMAGE_MAX_BYTES and INPUT_IMAGE_MAX_PIXELS, and within "
                    "UPSCALE_MODEL's size limits.",
                }
            ),
            "job_id": _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "description": "Instead of image: a complete image job of this API key; another key's "
                    "job answers 404, as on GET /jobs/{job_id}.",
                }
            ),
            "n": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_COUNT,
                    "description": "Which image of job_id's result (1 = first; the default).",
                }
            ),
            "prompt": _nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PROMPT_CHARS,
                    "pattern": PROMPT_PATTERN,
                    "description": "What the picture shows; the upscaler is guided by it. Default: job_id's "
                    "prompt, or a neutral one for an uploaded picture.",
                }
            ),
        },
        "oneOf": [picture, result],
    }


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json_response(description: str, ref: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        out["headers"] = headers
    return out


AUTH_ERRORS = {
    "401": _error_response("Missing, malformed or unknown API key."),
    "403": _error_response("The API key's owner is banned."),
    "503": _error_response("The store (database) is unreachable."),
}
JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    "description": "The job id returned when the job was submitted.",
}
FILE_CONTENT = {
    "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
    "video/mp4": {"schema": {"type": "string", "contentMediaType": "video/mp4"}},
}
RANGE_HEADER = {
    "name": "Range",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": r"^bytes=\d*-\d*$"},
    "description": "Byte range, e.g. `bytes=0-1023` (videos seek this way).",
}


def _file_responses(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": "The whole file.", "content": FILE_CONTENT},
        "206": {"description": "The requested byte range (see Content-Range).", "content": FILE_CONTENT},
        "416": _error_response("The requested range is outside the file."),
        **extra,
    }


def _upscale_operation(submit_errors: dict[str, Any], location: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": "create_upscale",
            "summary": "Queue an upscale (UPSCALE_MODEL's factor, x4) of a picture or of one of your images",
            "tags": ["jobs"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpscaleRequest"}}},
            },
            "responses": {
                "202": _json_response("Queued; the result is a PNG.", "Job", location),
                **submit_errors,
                "400": _error_response(
                    "No picture or both kinds of source, a picture that is not a readable PNG, JPEG or "
                    "WebP or is too large, job_id's job made a video, n out of range, or a blocked prompt."
                ),
                "404": _error_response("job_id names no job of this API key."),
                "409": _error_response("job_id's job is not complete."),
            },
        }
    }


def build_openapi(
    registry: Mapping[str, ModelSpec],
    *,
    default_ids: Mapping[str, str] | None = None,
    public_url: str | None = None,
) -> dict[str, Any]:
    """The document; `default_ids` maps kind -> the model used when a request names none."""
    default_ids = default_ids or {}
    image_specs = [s for s in registry.values() if s.kind == "image"]
    video_specs = [s for s in registry.values() if s.kind == "video"]
    submit_errors = {
        "400": _error_response(
            "A parameter is out of range or malformed (the message names it), bad JSON, or the prompt "
            "contains a word the bot does not allow (prompt_blocked)."
        ),
        **AUTH_ERRORS,
        "415": _error_response("The body is not sent as application/json."),
        "429": _error_response("Too many of this key's jobs are queued, or its daily quota is used up."),
        "503": _error_response("The queue is full or paused, or the store is unreachable."),
    }
    location = {"Location": {"description": "URL of the job.", "schema": {"type": "string"}}}

    def submit(kind: str, ref: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": f"create_{kind}",
                "summary": f"Queue a {kind}",
                "tags": ["jobs"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
                },
                "responses": {"202": _json_response("Queued.", "Job", location), **submit_errors},
            }
        }

    paths: dict[str, Any] = {
        "/api/v1/images": submit("image", "ImageRequest"),
        "/api/v1/videos": submit("video", "VideoRequest"),
        "/api/v1/upscales": _upscale_operation(submit_errors, location),
        "/api/v1/jobs/{job_id}": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "get_job",
                "summary": "State, progress, queue position, ETA, parameters, seed and error of a job",
                "tags": ["jobs"],
                "responses": {
                    "200": _json_response("The job.", "Job"),
                    **AUTH_ERRORS,
                    "404": _error_response("No such job for this API key."),
                },
            },
            "delete": {
                "operationId": "cancel_job",
                "summary": "Cancel a queued job, or stop a running one at its next step",
                "tags": ["jobs"],
                "responses": {
                    "200": _json_response("Cancelled (or cancel requested, while running).", "Job"),
                    **AUTH_ERRORS,
                    "404": _error_response("No such job for this API key."),
                    "409": _error_response("The job already finished."),
                },
            },
        },
        "/api/v1/jobs/{job_id}/result": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "get_result",
                "summary": "The PNG or MP4 of a complete job (HTTP range requests supported)",
                "tags": ["jobs"],
                "parameters": [RANGE_HEADER],
                "responses": _file_responses(
                    {
                        **AUTH_ERRORS,
                        "404": _error_response("No such job for this API key."),
                        "409": _error_response("The job is not complete."),
                        "410": _error_response("The result file is no longer kept."),
                    }
                ),
            },
        },
        "/api/v1/queue": {
            "get": {
                "operationId": "get_queue",
                "summary": "Queue length, the running job, and this key's queued jobs with positions, ETAs",
                "tags": ["queue"],
                "responses": {"200": _json_response("The queue.", "Queue"), **AUTH_ERRORS},
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "get_openapi",
                "summary": "This document",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": _json_response("Up.", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Store reachable, worker alive, models loaded",
                "tags": ["ops"],
                "security": [],
                "responses": {
                    "200": _json_response("Ready.", "Readiness"),
                    "503": _json_response("Not ready; `reasons` says why.", "Readiness"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "tags": ["ops"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/dl/{job_id}": {
            "get": {
                "operationId": "signed_download",
                "summary": "A result through a signed, expiring link (as posted to Discord)",
                "tags": ["downloads"],
                "security": [],
                "parameters": [
                    JOB_ID,
                    {
                        "name": "e",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "Expiry, Unix seconds.",
                    },
                    {
                        "name": "s",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "Signature.",
                    },
                    RANGE_HEADER,
                ],
                "responses": _file_responses(
                    {
                        "403": _error_response("The link is not valid (altered or forged)."),
                        "404": _error_response("No such result."),
                        "410": _error_response("The link has expired, or the file is no longer kept."),
                    }
                ),
            }
        },
    }

    job_schema = {
        "type": "object",
        "required": [
            "id",
            "kind",
            "model",
            "state",
            "prompt",
            "seed",
            "params",
            "position",
            "eta_s",
            "finish_in_s",
            "progress",
            "created_at",
            "error",
            "result",
        ],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["image", "video", "upscale"]},
            "model": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "in_progress", "complete", "failed", "cancelled"]},
            "prompt": {"type": "string"},
            "negative_prompt": {"type": ["string", "null"]},
            "seed": {"type": ["integer", "null"]},
            "params": {"type": "object", "description": "Every validated parameter, the seed included."},
            "notes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What validation adjusted, e.g. a frame count snapped to the model's rule.",
            },
            "position": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "0 while running, 1 = next; null once finished.",
            },
            "eta_s": {
                "type": ["number", "null"],
                "description": "Estimated seconds until the job starts: 0 once it runs, null once finished.",
            },
            "finish_in_s": {
                "type": ["number", "null"],
                "description": "Estimated seconds until the job is done (waiting plus running); "
                "null once finished or when no estimate exists yet.",
            },
            "progress": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["step", "total"],
                        "properties": {"step": {"type": "integer"}, "total": {"type": "integer"}},
                    },
                ]
            },
            "cancel_requested": {"type": "boolean"},
            "parent_id": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "queue_wait_s": {"type": ["number", "null"]},
            "gpu_seconds": {"type": ["number", "null"]},
            "error": {"type": ["string", "null"]},
            "result": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["url", "media_type"],
                        "properties": {
                            "url": {"type": "string"},
                            "media_type": {"type": "string"},
                            "size_bytes": {"type": ["integer", "null"]},
                            "nsfw_detected": {
                                "type": "boolean",
                                "description": "The safety checker flagged the picture (it is blacked out).",
                            },
                        },
                    },
                ]
            },
        },
    }
    queue_schema = {
        "type": "object",
        "required": ["paused", "length", "running", "jobs"],
        "properties": {
            "paused": {"type": "boolean"},
            "length": {"type": "integer", "minimum": 0},
            "running": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["kind", "model", "mine", "progress"],
                        "properties": {
                            "kind": {"type": "string"},
                            "model": {"type": "string"},
                            "mine": {"type": "boolean"},
                            "id": {"type": ["string", "null"]},
                            "progress": {
                                "type": "object",
                                "properties": {"step": {"type": "integer"}, "total": {"type": "integer"}},
                            },
                        },
                    },
                ]
            },
            "jobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "kind", "model", "position"],
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "model": {"type": "string"},
                        "position": {"type": ["integer", "null"]},
                        "eta_s": {"type": ["number", "null"], "description": "Seconds until it starts."},
                    },
                },
            },
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "imagine-bot",
            "version": "1.0.0",
            "description": "Queue Stable Diffusion images and text-to-video jobs on the bot's GPU worker, "
            "follow them, and download results. Authenticate with `Authorization: Bearer <key>` "
            '(keys from API_KEYS). Every error is `{"error": {"code", "message"}}`; codes: '
            + ERROR_CODES_DOC,
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key from API_KEYS."}
            },
            "schemas": {
                "ImageRequest": _request_schema("image", image_specs, default_ids.get("image")),
                "UpscaleRequest": _upscale_schema(),
                "VideoRequest": _request_schema(
                    "video", video_specs, default_ids.get("video"), default_ids.get("i2v")
                ),
                "Job": job_schema,
                "Queue": queue_schema,
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "reasons"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ready", "not_ready"]},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
        },
    }
    if public_url:
        doc["servers"] = [{"url": public_url.rstrip("/")}]
    return doc
