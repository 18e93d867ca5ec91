"""What the bot and its arq workers agree on: settings, Redis key names, and the wire format.

Both sides import this module; it imports neither arq nor redis, so the bot with ``QUEUE_URL``
unset can read these settings without pulling in either. arq carries the jobs themselves
(queue, job ids, aborts, results with expiry); the few keys below are what arq has no notion of:

- ``<prefix>:worker:<id>``: one hash per live worker (host, device, GPU, busy, the arq job ids
  it holds, jobs done, last beat). It expires ``heartbeat_ttl_s`` after the last beat, so a worker
  killed without a goodbye vanishes on its own; ``<prefix>:workers`` lists the ids ever seen.
- ``<prefix>:run:<arq job id>``: progress of one run (worker, step, total, preview PNG), written by
  the worker at most every ``worker_progress_interval_s`` and read by the bot no faster than it
  edits its messages.
- ``<prefix>:events``: a capped Redis stream of ``started`` / ``gpu_soon`` / ``gpu_done`` / ``done`` and
  ``worker_up`` / ``worker_down`` events, so the bot learns of a finished job at once instead of
  polling for results. Events are a shortcut, not the truth: the bot re-checks arq's own keys
  every ``sweep_s`` and a lost event only delays it.

Payloads and reports cross Redis as plain dicts (arq pickles them), so a bot and a worker one
version apart still understand each other: unknown keys are ignored, missing ones defaulted.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from generation.settings import GenerationSettings

if TYPE_CHECKING:
    from generation.media import EncodedMedia

log = logging.getLogger(__name__)

#: the arq function name the bot enqueues and the workers register
JOB_FUNCTION = "generate"
#: wire format version, bumped on an incompatible change
WIRE_VERSION = 1
#: events kept in the stream (approximate trimming)
EVENTS_MAXLEN = 2000


class ScaleoutSettings(GenerationSettings):
    """Knobs shared by the bot (the arq executor) and `python -m generation.worker`."""

    # redis://host:6379/0 switches the bot's execution to arq workers; the workers need it too
    queue_url: str | None = None
    # prefix of every key we add and of arq's queue name; one bot (its fair queue) per prefix
    queue_name: str = "imagine"
    # a worker beats every 1/5 of this and is taken for dead when silent for 4/5 of it,
    # so a vanished worker is noticed (and its job re-run) within this many seconds
    worker_health_check_s: float = Field(default=10.0, gt=0)
    # how often an idle worker asks Redis for a job (adds up to this much to each job's start)
    worker_poll_delay_s: float = Field(default=0.05, gt=0)
    # a worker tells the bot its GPU is nearly free this long before the end, so the next job is
    # already waiting when it frees (generation/gpu_forecast.py); 0 turns it off
    worker_handoff_lead_s: float = Field(default=0.5, ge=0)
    # a worker writes a running job's progress to Redis at most this often
    worker_progress_interval_s: float = Field(default=0.5, ge=0)
    # the worker's name in /info and /metrics (default: its host name); the pid is appended
    worker_name: str | None = None
    # how finished files reach the bot: bytes through arq's result, a path on shared storage,
    # or auto = bytes up to RESULT_INLINE_MAX_BYTES, a path above it (when SHARED_RESULTS_DIR is set)
    result_transfer: Literal["auto", "bytes", "path"] = "auto"
    result_inline_max_bytes: int = Field(default=10 * 2**20, ge=0)
    # a folder mounted at the same path on the bot and every worker (for result_transfer path/auto)
    shared_results_dir: Path | None = None
    # seconds arq keeps a finished job's result if the bot does not collect it
    result_keep_s: float = Field(default=3600.0, gt=0)

    @property
    def heartbeat_every_s(self) -> float:
        return self.worker_health_check_s / 5

    @property
    def heartbeat_ttl_s(self) -> float:
        return self.worker_health_check_s * 4 / 5

    @property
    def sweep_s(self) -> float:
        """How often the bot re-checks workers and jobs against Redis."""
        return min(1.0, self.worker_health_check_s / 5)


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix (``QUEUE_NAME``)."""

    prefix: str = "imagine"

    @property
    def queue(self) -> str:
        """arq's queue (a sorted set of job ids) that our workers poll."""
        return f"{self.prefix}:queue"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def arq_health(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:arq-health"

    def run(self, arq_id: str) -> str:
        return f"{self.prefix}:run:{arq_id}"


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


#: a lead payload's companions in a batch: [{"arq_id": …, "payload": JobPayload dict}]
BATCH_FIELD = "batch"


@dataclass(frozen=True)
class JobPayload:
    """What the bot hands a worker: the stored request plus what only the bot knows."""

    job_id: str
    request: dict[str, Any]
    #: text chunks for the PNG (prompt, model, job id, seed…): `generation.media.png_metadata`
    png_metadata: dict[str, str] = field(default_factory=dict)
    #: the result's folder name under the results dirs (the job's creation month, yyyy-mm)
    month: str = ""
    timeout_s: float | None = None
    video_crf: int = 20
    video_preset: str = "medium"
    #: a flagged picture travels as generated (the member's server shows it behind a spoiler)
    unfiltered: bool = False
    #: the picture an image-to-image request starts from (the bot's path means nothing to a worker)
    image_data: bytes | None = None
    image_suffix: str = ".png"
    version: int = WIRE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPayload:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class MediaReport:
    """The encoded file: its bytes inline, or a path on shared storage."""

    media_type: str
    suffix: str
    size_bytes: int
    width: int
    height: int
    frames: int
    fps: int | None
    data: bytes | None = None
    poster: bytes | None = None
    path: str | None = None
    poster_path: str | None = None
    nsfw_detected: bool = False
    #: a grid's images alone, inline with the grid (on shared storage they lie beside its path)
    parts: list[bytes] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaReport:
        return _from_dict(cls, data)

    @classmethod
    def describing(cls, encoded: EncodedMedia, **where: Any) -> MediaReport:
        """The report of `encoded`: pass ``data``/``poster`` (inline) or ``path``/``poster_path``."""
        return cls(
            media_type=encoded.media_type,
            suffix=encoded.suffix,
            size_bytes=encoded.size,
            width=encoded.width,
            height=encoded.height,
            frames=encoded.frames,
            fps=encoded.fps,
            nsfw_detected=encoded.nsfw_detected,
            **where,
        )

    def encoded(self) -> EncodedMedia:
        """The inline file as the encoder made it (only for a report that carries its bytes)."""
        from generation.media import EncodedMedia

        if self.data is None:
            raise ValueError("this report carries a path, not the file's bytes")
        return EncodedMedia(
            data=self.data,
            media_type=self.media_type,
            suffix=self.suffix,
            width=self.width,
            height=self.height,
            frames=self.frames,
            fps=self.fps,
            poster=self.poster,
            nsfw_detected=self.nsfw_detected,
            parts=tuple(self.parts),
        )


Status = Literal["complete", "failed", "cancelled", "timeout"]


@dataclass(frozen=True)
class JobReport:
    """How a run ended on its worker: arq's result value for our job function."""

    status: Status
    worker_id: str
    error: str | None = None
    gpu_seconds: float = 0.0
    load_s: float = 0.0
    encode_s: float = 0.0
    oom_retries: int = 0
    memory_modes: list[str] = field(default_factory=list)
    media: dict[str, Any] | None = None
    #: members in the pipeline call the job shared (more than 1: run batched with other members' jobs)
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobReport:
        return _from_dict(cls, data)


def decode_hash(raw: dict[Any, Any]) -> dict[str, Any]:
    """A Redis hash as str keys; values stay bytes except where they decode as UTF-8 text."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes) and name != "preview":
            with contextlib.suppress(UnicodeDecodeError):
                value = value.decode()
        out[name] = value
    return out


#: a Redis command is retried this often (backoff up to 0.5 s) before its caller sees the error,
#: so a Redis restart of a few seconds passes unnoticed by the bot and the workers
REDIS_RETRIES = 20


def redis_settings(url: str) -> Any:
    """arq's ``RedisSettings`` for `url`, retrying commands through a short Redis restart."""
    from arq.connections import RedisSettings
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    found = RedisSettings.from_dsn(url)
    found.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    found.retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=REDIS_RETRIES)
    return found
