"""One error shape for every response: `{"error": {"code": ..., "message": ...}}`.

REST clients (Postman, scripts) parse errors without guessing: aiohttp's own 404/405/413
pages, our `UserError`s and unexpected exceptions all leave the server in this shape. Only
`UserError` messages are shown as they are; anything else is logged with a request id and
the client gets a short apology naming that id, never a traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.core import metrics
from generation.errors import UserError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: HTTP status for each `UserError.code` the queue, store, moderation and generation raise
STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "invalid_request": 400,
    "invalid_json": 400,
    "model_unavailable": 400,
    "prompt_blocked": 400,
    "channel_not_allowed": 403,
    "unauthorized": 401,
    "banned": 403,
    "forbidden": 403,
    "not_yours": 403,
    "not_found": 404,
    "job_not_found": 404,
    "gone": 410,
    "link_expired": 410,
    "method_not_allowed": 405,
    "conflict": 409,
    "not_ready": 409,
    "already_finished": 409,
    "not_cancellable": 409,
    "cancelled": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "too_many_queued": 429,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "queue_full": 503,
    "queue_paused": 503,
    "paused": 503,
    "store_unavailable": 503,
    "not_ready_service": 503,
    "timeout": 504,
}

#: fallback by class name, for UserError subclasses whose code is not in the table above
_STATUS_BY_CLASS: dict[str, int] = {
    "QueueFull": 503,
    "QueuePaused": 503,
    "TooManyQueued": 429,
    "QuotaExceeded": 429,
    "Banned": 403,
    "JobNotFound": 404,
    "NotCancellable": 409,
    "StoreUnavailable": 503,
}


class ApiError(Exception):
    """An error the web layer itself raises, with its HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def status_for(exc: UserError) -> int:
    """The HTTP status for a user error: by its code, else by class name, else 400."""
    status = STATUS_BY_CODE.get(exc.code)
    if status is not None:
        return status
    for cls in type(exc).__mro__:
        status = _STATUS_BY_CLASS.get(cls.__name__)
        if status is not None:
            return status
    return 400


def _code_for_http(exc: web.HTTPException) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        410: "gone",
        413: "payload_too_large",
        415: "unsupported_media_type",
        416: "range_not_satisfiable",
    }.get(exc.status, "http_error")


def _route_name(request: web.Request) -> str:
    """A bounded label for metrics: the route's pattern, never the raw (unbounded) path."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical or "unmatched"


#: request methods counted by name; any other token is counted as "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method_name(request: web.Request) -> str:
    """A bounded label: the method is client-chosen text (any token with the pure-Python parser)."""
    return request.method if request.method in _METHODS else "other"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape, and count requests for /metrics."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)
    except UserError as exc:
        status = status_for(exc)
        return error_response(status, exc.code, exc.message)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:  # redirects and the like pass through untouched
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        return error_response(exc.status, _code_for_http(exc), message or exc.reason, headers=headers)
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s in %s %s", error_id, request.method, request.path)
        return error_response(
            500,
            "internal_error",
            f"Something went wrong on our side (error id {error_id}); it has been logged.",
        )
    finally:
        metrics.HTTP_REQUESTS.labels(
            route=_route_name(request), method=_method_name(request), status=str(status)
        ).inc()
