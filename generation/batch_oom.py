"""Out of memory in a batch: run it again as two halves before any leaner memory mode.

A batch that does not fit usually fits as smaller batches at full speed, which beats moving the
whole pipeline to a slower memory mode. Only a single sample that still does not fit reaches
the GPU thread's memory-mode fallback.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from generation.batching import BatchRequest
from generation.outputs import GenerationOutput
from generation.params import GenerationRequest

log = logging.getLogger(__name__)


def run_splitting(manager: Any, request: GenerationRequest, **kwargs: Any) -> GenerationOutput:
    """`manager.run(request, **kwargs)`, halving a batch (again and again) while it runs out of memory."""
    try:
        return manager.run(request, **kwargs)
    except Exception as exc:
        if not out_of_memory(exc) or not isinstance(request, BatchRequest) or len(request.batch) < 2:
            raise
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(request.batch) // 2
        log.warning(
            "a batch of %d ran out of memory; running it as %d + %d",
            len(request.batch),
            half,
            len(request.batch) - half,
        )
        parts = [_part(request, request.batch[:half]), _part(request, request.batch[half:])]
        return _joined(request, [run_splitting(manager, part, **kwargs) for part in parts])


def out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error, looked up only where torch is loaded (a worker whose
    manager runs no torch never imports it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _part(request: BatchRequest, samples: tuple[Any, ...]) -> BatchRequest:
    return dataclasses.replace(request, batch=samples, count=len(samples), shares=(len(samples),))


def _joined(request: BatchRequest, outputs: list[GenerationOutput]) -> GenerationOutput:
    """One output for the whole batch, images in sample order, timings added up."""
    images = [image for out in outputs for image in (out.images or [])]
    flagged = any(out.nsfw_detected for out in outputs)
    unfiltered = (
        [image for out in outputs for image in (out.unfiltered or out.images or [])] if flagged else None
    )
    timings: dict[str, float] = {}
    for out in outputs:
        for key, value in out.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return dataclasses.replace(
        outputs[-1],
        request=request,
        images=images,
        unfiltered=unfiltered,
        nsfw_detected=flagged,
        timings=timings,
    )
