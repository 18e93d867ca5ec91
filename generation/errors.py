"""Errors a member or API caller can cause, with messages that are safe to show them.

Every error that should reach a user derives from :class:`UserError`; the bot and the REST
API turn these (and only these) into polite replies. Anything else is a bug: it is logged
with the job id and the user gets a short apology instead of a traceback.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class UserError(Exception):
    """Root of all errors whose message may be shown to the person who asked."""

    #: short machine-readable code used by the REST API (`{"error": {"code": ...}}`)
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(UserError):
    """A request parameter is out of range or malformed; the message names the parameter."""

    code = "invalid_request"


class ModelUnavailable(UserError):
    """A model is unknown, failed to load, or needs a setting (token, cache dir) changed."""

    code = "model_unavailable"


class GenerationCancelled(UserError):
    """The job was cancelled by its owner or an admin (raised inside the step callback)."""

    code = "cancelled"


class GenerationTimeout(UserError):
    """The job ran past `JOB_TIMEOUT_S` or a step hung past the watchdog."""

    code = "timeout"
