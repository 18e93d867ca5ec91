"""`ModelSpec`: what one servable model needs and what a request may ask of it.

Plain data, so the validator (`generation.params`), the Discord command, the REST API and the
loader (`generation.pipelines`) read the same limits. The built-in specs are in
`generation.catalog`; more come from `EXTRA_MODELS` (see `generation.models`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

#: "upscale": a picture in, the same picture larger out (never offered as text-to-image)
Kind = Literal["image", "video", "upscale"]

#: prefix of the repo id of a locally built tiny twin (see `generation.tiny`)
TINY_REPO_PREFIX = "local/"
#: frame rules: "any" count in range, or `period`·k + 1 (the temporal VAE compresses by `period`)
FRAME_RULES: dict[str, int] = {"any": 1, "4k+1": 4, "8k+1": 8}
MEMORY_MODE_NAMES = ("full", "offload", "sequential")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One servable model: where its weights come from and what a request may ask of it."""

    id: str
    repo_id: str
    #: diffusers pipeline class name, e.g. "StableDiffusionPipeline"
    pipeline: str
    kind: Kind
    default_width: int
    default_height: int
    max_width: int
    max_height: int
    min_width: int = 64
    min_height: int = 64
    #: width and height must be multiples of this (VAE downscale x transformer patch size)
    size_multiple: int = 8
    # video only (ignored for images)
    default_frames: int = 16
    min_frames: int = 1
    max_frames: int = 64
    #: "any", "4k+1" (Wan) or "8k+1" (LTX): counts breaking the rule are snapped to the nearest
    frame_rule: str = "any"
    default_fps: int = 8
    min_fps: int = 1
    max_fps: int = 30
    default_steps: int = 25
    min_steps: int = 1
    max_steps: int = 100
    default_guidance: float = 7.5
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    #: used when the member gives none (stored with the request, so reruns match)
    default_negative_prompt: str | None = None
    #: diffusers scheduler class name swapped in after loading; None keeps the repo's own
    scheduler: str | None = None
    #: keyword overrides for that scheduler's config, e.g. {"flow_shift": 3.0} for Wan at 480p
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    #: preferred half precision on a GPU when DTYPE=auto: "fp16" or "bf16" (Wan, LTX, CogVideoX)
    dtype: str = "fp16"
    #: weights variant to ask for on CUDA in half precision ("fp16"), None for none
    variant: str | None = "fp16"
    revision: str | None = None
    #: free VRAM (GiB, half precision) needed to keep the whole pipeline on the GPU ...
    vram_full_gib: float = 6.0
    #: ... with model CPU offload (one component on the GPU at a time) ...
    vram_offload_gib: float = 4.0
    #: ... and with sequential offload (layer by layer): the floor
    vram_sequential_gib: float = 2.0
    #: registry id of the image-to-video model that animates a picture for this one
    i2v_model: str | None = None
    #: an image-to-video model: every request carries an input image (the first frame)
    takes_image: bool = False
    #: components loaded from another repo: {"unet": "owner/repo[/subfolder]"} (fine-tunes, merges)
    components: dict[str, str] = field(default_factory=dict)
    #: whether the repo ships a safety checker that `SAFETY_CHECKER` can switch off
    has_safety_checker: bool = False
    #: a random-weight twin built locally by `generation.tiny` (tests, CI, demo)
    tiny: bool = False
    license: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        problems = self._range_problems() + self._size_problems() + self._frame_problems()
        if self.dtype not in ("fp16", "bf16"):
            problems.append(f"dtype must be 'fp16' or 'bf16', not {self.dtype!r}")
        for name, source in self.components.items():
            if not isinstance(source, str) or source.count("/") < 1:
                problems.append(f"components[{name!r}] must be 'owner/repo[/subfolder]', not {source!r}")
        if problems:
            raise ValueError(f"model {self.id!r}: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        problems = []
        if self.kind not in ("image", "video", "upscale"):
            problems.append(f"kind must be 'image', 'video' or 'upscale', not {self.kind!r}")
        for lo, default, hi, name in (
            (self.min_width, self.default_width, self.max_width, "width"),
            (self.min_height, self.default_height, self.max_height, "height"),
            (self.min_frames, self.default_frames, self.max_frames, "frames"),
            (self.min_fps, self.default_fps, self.max_fps, "fps"),
            (self.min_steps, self.default_steps, self.max_steps, "steps"),
            (self.min_guidance, self.default_guidance, self.max_guidance, "guidance"),
        ):
            if not lo <= default <= hi:
                problems.append(f"{name}: need min <= default <= max, got {lo} <= {default} <= {hi}")
        if self.min_steps < 1 or self.min_frames < 1 or self.min_fps < 1:
            problems.append("min_steps, min_frames and min_fps must be at least 1")
        return problems

    def _size_problems(self) -> list[str]:
        problems = []
        if self.size_multiple not in (8, 16, 32, 64):
            problems.append(f"size_multiple must be 8, 16, 32 or 64, not {self.size_multiple}")
            return problems
        for name in ("min_width", "min_height", "default_width", "default_height", "max_width", "max_height"):
            value = getattr(self, name)
            if value <= 0 or value % self.size_multiple:
                problems.append(f"{name} must be a positive multiple of {self.size_multiple}, got {value}")
        return problems

    def _frame_problems(self) -> list[str]:
        if self.frame_rule not in FRAME_RULES:
            return [f"frame_rule must be one of {', '.join(FRAME_RULES)}, not {self.frame_rule!r}"]
        return [
            f"{name} ({getattr(self, name)}) breaks the frame rule {self.frame_rule}"
            for name in ("min_frames", "default_frames", "max_frames")
            if not self.frames_ok(getattr(self, name))
        ]

    @classmethod
    def from_config(cls, model_id: str, fields: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from `EXTRA_MODELS` fields; sizes default to what the kind usually uses."""
        fields = dict(fields)
        fields.pop("id", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"EXTRA_MODELS[{model_id!r}]: unknown field(s) {', '.join(unknown)}")
        for required in ("repo_id", "pipeline", "kind"):
            if required not in fields:
                raise ValueError(f"EXTRA_MODELS[{model_id!r}]: {required!r} is required")
        side = 256 if fields["kind"] == "video" else 512
        fields.setdefault("default_width", side)
        fields.setdefault("default_height", side)
        cap = 1024 if fields["kind"] == "image" else 576
        fields.setdefault("max_width", max(fields["default_width"], cap))
        fields.setdefault("max_height", max(fields["default_height"], cap))
        return cls(id=model_id, **fields)

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    @property
    def frame_period(self) -> int:
        return FRAME_RULES[self.frame_rule]

    def frames_ok(self, frames: int) -> bool:
        return (frames - 1) % self.frame_period == 0

    def nearest_frames(self, frames: int) -> int:
        """The valid frame count nearest `frames` within [min_frames, max_frames] (ties go up)."""
        period = self.frame_period
        below = frames - (frames - 1) % period
        above = below + period if below != frames else below
        best = above if above - frames <= frames - below else below
        valid = range(self.min_frames, self.max_frames + 1, period)
        return min(max(best, valid.start), valid[-1])

    def vram_gib(self, mode: str) -> float:
        """Estimated VRAM (GiB, half precision) in a memory mode (`sequential_lowvae` as sequential)."""
        if mode == "full":
            return self.vram_full_gib
        if mode == "offload":
            return self.vram_offload_gib
        return self.vram_sequential_gib

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
