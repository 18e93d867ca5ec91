"""How many GPU seconds a job will take: learned from finished jobs, so ETAs stay honest.

A job's cost depends on what it asks for: (model, kind, width, height, frames, steps). For each
such shape seen before, the estimate is an exponentially weighted moving average (EWMA) of the
GPU seconds measured on this machine. For a shape never seen, the model's learned *rate*
(seconds per pixel x frame x step) scales to the new size; for a model never seen, a prior rate
per kind does, plus a fixed overhead. The priors are rough figures for a mid-range GPU (SD 1.5 at
512x512 x 25 steps ~ 5 s; damo 256x256 x 16 frames x 25 steps ~ 15 s): good enough for a first
"about a minute", replaced by measurements after the first job of each shape.

The table is kept in the store's meta (key :data:`META_KEY`) so a restart keeps what was learned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

META_KEY = "eta_costs_v1"

#: seconds per (pixel x frame x step) before anything is measured, per kind
PRIOR_RATE_S = {"image": 5.0 / (512 * 512 * 25), "video": 15.0 / (256 * 256 * 16 * 25)}
#: fixed seconds per job (text encoding, VAE decode, scheduler set-up) before anything is measured
PRIOR_OVERHEAD_S = {"image": 0.5, "video": 1.0}
#: shapes kept in the table; the least recently measured go first beyond this
MAX_SHAPES = 500

CostKey = tuple[str, str, int, int, int, int]


def cost_key(params: Mapping[str, Any]) -> CostKey:
    """The shape of a request that decides its cost: (model, kind, width, height, frames, steps);
    for images, `frames` is how many the request makes in one batch."""
    kind = str(params.get("kind") or "image")
    return (
        str(params.get("model") or "?"),
        kind,
        int(params.get("width") or 512),
        int(params.get("height") or 512),
        # a batch of images costs like that many frames
        int(params.get("frames") or 1) if kind == "video" else int(params.get("count") or 1),
        int(params.get("steps") or 25),
    )


def work_units(key: CostKey) -> float:
    _, _, width, height, frames, steps = key
    return float(width * height * frames * steps)


@dataclass
class _Ewma:
    value: float
    n: int
    at: float  # wall time of the last update (for trimming)


class CostModel:
    """EWMA of measured GPU seconds per request shape, with a per-model rate to scale from.

    `version` goes up whenever an estimate may have changed, so callers holding cached costs
    know when to refresh them.
    """

    def __init__(self, *, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.version = 0
        self._shapes: dict[CostKey, _Ewma] = {}
        self._rates: dict[str, _Ewma] = {}  # model -> seconds per work unit

    def estimate(self, params: Mapping[str, Any]) -> float:
        """Expected GPU seconds of a request (never negative, never NaN)."""
        key = cost_key(params)
        shape = self._shapes.get(key)
        if shape is not None:
            return shape.value
        rate = self._rates.get(key[0])
        units = work_units(key)
        if rate is not None:
            return rate.value * units
        kind_ = key[1] if key[1] in PRIOR_RATE_S else "image"
        return PRIOR_OVERHEAD_S[kind_] + PRIOR_RATE_S[kind_] * units

    def measured(self, params: Mapping[str, Any]) -> bool:
        return cost_key(params) in self._shapes

    def observe(self, params: Mapping[str, Any], gpu_seconds: float) -> None:
        """Learn from a finished job; ignores nonsense (zero, negative, NaN)."""
        if not math.isfinite(gpu_seconds) or gpu_seconds <= 0:
            return
        key = cost_key(params)
        now = time.time()
        self._shapes[key] = self._update(self._shapes.get(key), gpu_seconds, now)
        self._rates[key[0]] = self._update(self._rates.get(key[0]), gpu_seconds / work_units(key), now)
        if len(self._shapes) > MAX_SHAPES:
            oldest = sorted(self._shapes, key=lambda k: self._shapes[k].at)[: len(self._shapes) - MAX_SHAPES]
            for k in oldest:
                del self._shapes[k]
        self.version += 1

    def _update(self, old: _Ewma | None, sample: float, now: float) -> _Ewma:
        if old is None:
            return _Ewma(value=sample, n=1, at=now)
        # the first few samples weigh more, so one cold-start outlier is forgotten quickly
        alpha = max(self.alpha, 1.0 / (old.n + 1))
        return _Ewma(value=old.value + alpha * (sample - old.value), n=old.n + 1, at=now)

    # -- persistence ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "shapes": [[list(k), e.value, e.n, e.at] for k, e in self._shapes.items()],
            "rates": {m: [e.value, e.n, e.at] for m, e in self._rates.items()},
        }

    def load_json(self, data: Mapping[str, Any] | None) -> None:
        """Replace the table by a stored one; a damaged entry is skipped, not fatal."""
        if not data:
            return
        shapes: dict[CostKey, _Ewma] = {}
        for row in data.get("shapes") or ():
            try:
                k, value, n, at = row
                model, kind, width, height, frames, steps = k
                key: CostKey = (str(model), str(kind), int(width), int(height), int(frames), int(steps))
                if math.isfinite(float(value)) and float(value) > 0:
                    shapes[key] = _Ewma(value=float(value), n=int(n), at=float(at))
            except (TypeError, ValueError):
                log.warning("cost model: skipping a damaged entry %r", row)
        rates: dict[str, _Ewma] = {}
        for model, row in (data.get("rates") or {}).items():
            try:
                value, n, at = row
                if math.isfinite(float(value)) and float(value) > 0:
                    rates[str(model)] = _Ewma(value=float(value), n=int(n), at=float(at))
            except (TypeError, ValueError):
                log.warning("cost model: skipping a damaged rate %r", row)
        self._shapes, self._rates = shapes, rates
        self.version += 1

    async def load(self, store: Any) -> None:
        self.load_json(await store.get_meta(META_KEY))
        log.info("cost model: %d measured shapes, %d model rates", len(self._shapes), len(self._rates))

    async def save(self, store: Any) -> None:
        await store.set_meta(META_KEY, self.to_json())
