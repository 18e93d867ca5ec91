"""The safety checker's verdict, and the picture as generated, for servers that choose what to do.

diffusers' `StableDiffusionSafetyChecker` blacks out every picture it flags, inside the pipeline
call. That is the default policy; a server may instead post flagged pictures as spoilers in
age-restricted channels, which needs the picture as it was generated. `keep_unfiltered` wraps the
pipeline's own `run_safety_checker` for one call: the checker still decides and still blacks out,
and a copy of what it was given is kept, turned into pictures only when something was flagged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    """What the checker said about one call: which pictures it flagged, and them unfiltered."""

    flags: list[bool] = field(default_factory=list)
    unfiltered: list[Any] | None = None  # PIL images as generated, only when something was flagged

    @property
    def flagged(self) -> bool:
        return any(self.flags)


@contextlib.contextmanager
def keep_unfiltered(pipe: Any) -> Iterator[Verdict]:
    """Within the block, `pipe`'s safety checker also keeps the pictures it is shown (see module)."""
    verdict = Verdict()
    if getattr(pipe, "safety_checker", None) is None or not hasattr(pipe, "run_safety_checker"):
        yield verdict  # no checker: nothing is ever flagged
        return
    original = pipe.run_safety_checker

    def run_safety_checker(image: Any, device: Any, dtype: Any) -> Any:
        kept = image.clone() if hasattr(image, "clone") else image.copy()
        checked, flags = original(image, device, dtype)
        verdict.flags = [bool(f) for f in flags or []]
        if verdict.flagged:
            verdict.unfiltered = _to_pil(pipe, kept)
        return checked, flags

    pipe.run_safety_checker = run_safety_checker
    try:
        yield verdict
    finally:
        del pipe.run_safety_checker  # the class's own method again


def _to_pil(pipe: Any, image: Any) -> list[Any]:
    """Decoded pixels (a tensor in [-1, 1], or numpy in [0, 1]) as PIL images, as the pipeline would."""
    if hasattr(image, "clone"):
        return list(pipe.image_processor.postprocess(image, output_type="pil"))
    return list(pipe.image_processor.numpy_to_pil(image))
