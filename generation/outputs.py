"""What a pipeline run produces and how it ended, shared by its producers (pipelines, the GPU
thread) and its consumers (the runner, the encoder) without either importing the other.

Plain data: PIL images or uint8 frames, never a tensor, so this module needs no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from generation.params import GenerationRequest

log = logging.getLogger(__name__)

Status = Literal["complete", "failed", "cancelled", "timeout"]


@dataclass(frozen=True)
class StepInfo:
    """Progress after `step` of `total` denoising steps; `preview` every few steps."""

    step: int
    total: int
    preview: Image.Image | None = None


@dataclass
class GenerationOutput:
    """What one run produced, before encoding: PIL images or uint8 HxWx3 frames."""

    kind: str
    request: GenerationRequest
    images: list[Image.Image] | None
    frames: list[np.ndarray] | None
    #: seconds: load (0 when the model was resident), denoise, decode, total
    timings: dict[str, float]
    device: str
    memory_mode: str = "full"
    #: the safety checker flagged (and blacked out) an image
    nsfw_detected: bool = False
    #: the images as generated, before the checker blacked any out; only when one was flagged
    unfiltered: list[Image.Image] | None = None


@dataclass
class WorkOutcome:
    """How one item ended. `error` is safe to show the member; `exception` is for the log."""

    job_id: str
    status: Status
    output: GenerationOutput | None = None
    error: str | None = None
    #: seconds the device spent on this job (generation and OOM retries; model loading excluded)
    gpu_seconds: float = 0.0
    load_s: float = 0.0
    #: memory modes tried, in order (more than one after an out-of-memory retry)
    memory_modes: list[str] = field(default_factory=list)
    oom_retries: int = 0
    exception: BaseException | None = None
    worker_id: str = ""
