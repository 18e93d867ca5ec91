"""The refusals a member or REST caller can get from the queue, each with a code the web API maps
to an HTTP status (`bot.web.errors`) and a message safe to show as it is."""

from __future__ import annotations

import logging

from generation.errors import UserError

log = logging.getLogger(__name__)


class QueueFull(UserError):
    code = "queue_full"


class TooManyQueued(UserError):
    code = "too_many_queued"


class QuotaExceeded(UserError):
    code = "quota_exceeded"


class Banned(UserError):
    code = "banned"


class QueuePaused(UserError):
    code = "queue_paused"


class JobNotFound(UserError):
    code = "not_found"


class NotAllowed(UserError):
    code = "forbidden"


class AlreadyFinished(UserError):
    code = "already_finished"
