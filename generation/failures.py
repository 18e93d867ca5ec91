"""Every failure text a member or API caller may read, in one place, for every way a job can end badly.

The GPU thread, the runner, both executors and the arq worker pick their words from here, so the
same failure reads the same whichever path ran the job. Texts with ``{placeholders}`` are
formatted by the caller. Why a model could not load, in words naming the setting to change, is
:mod:`generation.load_errors`'s.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

DAMAGED = "This request's stored parameters are damaged."
CRASHED = "Something went wrong while generating (job {job_id}); the admins can find it in the log."
NOT_SAVED = "The result could not be saved (job {job_id}); the admins can find it in the log."
NOT_TAKEN = "The worker could not take job {job_id}."
OUT_OF_MEMORY = (
    "The GPU ran out of memory, even in its leanest memory mode. "
    "Try a smaller size, fewer frames or fewer steps."
)
#: what a member is told; the reason (paths, settings to change) goes to the log and /readyz
UNAVAILABLE = (
    "The model {model} is not available right now (it could not be loaded). "
    "The admins can see why in the bot's log; please try another model or try again later."
)
WRONG_KIND = "Model {model!r} makes {makes}s, not {asked}s."
TIMED_OUT = "The job ran past the {limit_s:g} s time limit and was stopped."
TIMED_OUT_AFTER_OOM = (
    "The GPU ran out of memory, and the job ran past the {limit_s:g} s time limit while retrying "
    "in leaner memory modes. Try a smaller size, fewer frames or fewer steps."
)
HUNG_PAST_LIMIT = (
    "The job ran past the {limit_s:g} s time limit and the GPU stopped responding; "
    "the job was stopped and the worker restarted."
)
HUNG = (
    "The GPU stopped responding ({what} took over {watchdog_s:g} s); "
    "the job was stopped and the worker restarted."
)
LOST = "The GPU worker running this job stopped, and it could not be finished elsewhere. Please try again."
CANCELLED = "Cancelled."
CANCELLED_BEFORE_START = "Cancelled before it started."
CANCELLED_AT_STEP = "Cancelled after step {step} of {total}."
