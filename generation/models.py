"""The model registry: which diffusers repos we run, and the limits each one accepts.

A :class:`ModelSpec` is plain data. Limits live here (per model) so that the validator in
`generation.params`, the Discord command ranges and the REST API all agree. Extra models
come from configuration (`EXTRA_MODELS`, a JSON object) so any diffusers text-to-image or
text-to-video repo can be served without code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from generation.errors import ModelUnavailable
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

Kind = Literal["image", "video"]

#: prefix of the repo id of a locally built tiny twin (see `generation.tiny`)
TINY_REPO_PREFIX = "local/"


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
    # video only (ignored for images)
    default_frames: int = 16
    min_frames: int = 1
    max_frames: int = 64
    default_fps: int = 8
    min_fps: int = 1
    max_fps: int = 30
    default_steps: int = 25
    min_steps: int = 1
    max_steps: int = 100
    default_guidance: float = 7.5
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    #: diffusers scheduler class name swapped in after loading; None keeps the repo's own
    scheduler: str | None = None
    #: weights variant to ask for on CUDA in half precision ("fp16"), None for none
    variant: str | None = "fp16"
    revision: str | None = None
    #: free VRAM (GiB, half precision) needed to keep the whole pipeline on the GPU ...
    vram_full_gib: float = 6.0
    #: ... and with model CPU offload; below this, sequential offload is used
    vram_offload_gib: float = 4.0
    #: whether the repo ships a safety checker that `SAFETY_CHECKER` can switch off
    has_safety_checker: bool = False
    #: a random-weight twin built locally by `generation.tiny` (tests, CI, demo)
    tiny: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("image", "video"):
            problems.append(f"kind must be 'image' or 'video', not {self.kind!r}")
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
        for name in ("min_width", "min_height", "default_width", "default_height", "max_width", "max_height"):
            value = getattr(self, name)
            if value <= 0 or value % 8:
                problems.append(f"{name} must be a positive multiple of 8, got {value}")
        if self.min_steps < 1 or self.min_frames < 1 or self.min_fps < 1:
            problems.append("min_steps, min_frames and min_fps must be at least 1")
        if problems:
            raise ValueError(f"model {self.id!r}: " + "; ".join(problems))

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
        if fields["kind"] == "video":
            size = {"default_width": 256, "default_height": 256}
        else:
            size = {"default_width": 512, "default_height": 512}
        for key, value in size.items():
            fields.setdefault(key, value)
        fields.setdefault(
            "max_width", max(fields["default_width"], 1024 if fields["kind"] == "image" else 576)
        )
        fields.setdefault(
            "max_height", max(fields["default_height"], 1024 if fields["kind"] == "image" else 576)
        )
        return cls(id=model_id, **fields)

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="sd15",
        repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        pipeline="StableDiffusionPipeline",
        kind="image",
        default_width=512,
        default_height=512,
        max_width=768,
        max_height=768,
        min_width=256,
        min_height=256,
        default_steps=25,
        max_steps=100,
        default_guidance=7.5,
        scheduler="DPMSolverMultistepScheduler",
        vram_full_gib=4.0,
        vram_offload_gib=2.5,
        has_safety_checker=True,
        description="Stable Diffusion 1.5, 512x512 images",
    ),
    ModelSpec(
        id="damo",
        repo_id="damo-vilab/text-to-video-ms-1.7b",
        pipeline="TextToVideoSDPipeline",
        kind="video",
        default_width=256,
        default_height=256,
        max_width=512,
        max_height=512,
        min_width=128,
        min_height=128,
        default_frames=16,
        min_frames=16,
        max_frames=64,
        default_fps=8,
        default_steps=25,
        max_steps=100,
        default_guidance=9.0,
        scheduler="DPMSolverMultistepScheduler",
        vram_full_gib=10.0,
        vram_offload_gib=5.0,
        description="ModelScope text-to-video 1.7B, 256x256, 16-64 frames",
    ),
    ModelSpec(
        id="zeroscope",
        repo_id="cerspense/zeroscope_v2_576w",
        pipeline="TextToVideoSDPipeline",
        kind="video",
        default_width=576,
        default_height=320,
        max_width=1024,
        max_height=576,
        min_width=256,
        min_height=144,
        default_frames=24,
        min_frames=8,
        max_frames=64,
        default_fps=8,
        default_steps=25,
        max_steps=100,
        default_guidance=9.0,
        scheduler="DPMSolverMultistepScheduler",
        variant=None,
        vram_full_gib=12.0,
        vram_offload_gib=7.0,
        description="Zeroscope v2 576w, 576x320 video",
    ),
    ModelSpec(
        id="tiny-image",
        repo_id=TINY_REPO_PREFIX + "tiny-image",
        pipeline="StableDiffusionPipeline",
        kind="image",
        default_width=64,
        default_height=64,
        max_width=512,
        max_height=512,
        min_width=32,
        min_height=32,
        default_steps=2,
        max_steps=50,
        default_guidance=7.5,
        scheduler="DPMSolverMultistepScheduler",
        variant=None,
        vram_full_gib=0.1,
        vram_offload_gib=0.05,
        tiny=True,
        description="random-weight Stable Diffusion twin for tests and demos",
    ),
    ModelSpec(
        id="tiny-video",
        repo_id=TINY_REPO_PREFIX + "tiny-video",
        pipeline="TextToVideoSDPipeline",
        kind="video",
        default_width=64,
        default_height=64,
        max_width=576,
        max_height=576,
        min_width=32,
        min_height=32,
        default_frames=16,
        min_frames=1,
        max_frames=64,
        default_fps=8,
        default_steps=2,
        max_steps=50,
        default_guidance=9.0,
        scheduler="DPMSolverMultistepScheduler",
        variant=None,
        vram_full_gib=0.1,
        vram_offload_gib=0.05,
        tiny=True,
        description="random-weight text-to-video twin for tests and demos",
    ),
)


def build_registry(settings: GenerationSettings) -> dict[str, ModelSpec]:
    """Built-in specs plus `settings.extra_models`, with the settings' step caps applied.

    A bad `EXTRA_MODELS` entry is a configuration error: it raises `ValueError` at startup
    rather than surfacing later as a confusing failure inside a job.
    """
    registry = {spec.id: spec for spec in BUILTIN_MODELS}
    for model_id, fields in settings.extra_models.items():
        if model_id in registry:
            log.info("EXTRA_MODELS overrides built-in model %s", model_id)
            base = registry[model_id].to_dict()
            base.update(fields)
            base.pop("id", None)
            registry[model_id] = ModelSpec(id=model_id, **base)
        else:
            registry[model_id] = ModelSpec.from_config(model_id, fields)
    if settings.max_steps is not None or settings.default_steps is not None:
        registry = {k: _apply_step_settings(v, settings) for k, v in registry.items()}
    return registry


def step_limits(spec: ModelSpec, settings: GenerationSettings | None) -> tuple[int, int]:
    """(max_steps, default_steps) of `spec` under the `MAX_STEPS` / `DEFAULT_STEPS` settings.

    The settings only narrow the spec: the cap never goes below `min_steps` nor above the
    spec's own maximum, and the default is clamped into the resulting range. Idempotent, so
    a spec that `build_registry` already capped comes out unchanged.
    """
    max_steps = spec.max_steps
    default_steps = spec.default_steps
    if settings is None:
        return max_steps, default_steps
    if settings.max_steps is not None:
        max_steps = max(spec.min_steps, min(max_steps, settings.max_steps))
    if settings.default_steps is not None:
        default_steps = settings.default_steps
    return max_steps, max(spec.min_steps, min(default_steps, max_steps))


def _apply_step_settings(spec: ModelSpec, settings: GenerationSettings) -> ModelSpec:
    max_steps, default_steps = step_limits(spec, settings)
    return dataclasses.replace(spec, max_steps=max_steps, default_steps=default_steps)


def get_spec(registry: Mapping[str, ModelSpec], model_id: str, *, kind: Kind | None = None) -> ModelSpec:
    """Look a model up, with an error a member (or the admin) can act on."""
    spec = registry.get(model_id)
    # the id comes from the member: echo at most 40 characters of it (replies have limits)
    shown = repr(model_id) if len(model_id) <= 40 else repr(model_id[:40]) + "…"
    if spec is None:
        known = ", ".join(sorted(m.id for m in registry.values() if kind is None or m.kind == kind))
        raise ModelUnavailable(
            f"Unknown model {shown}. Known {kind + ' ' if kind else ''}models: {known}. "
            "Add others with EXTRA_MODELS, or choose one with IMAGE_MODEL / VIDEO_MODEL."
        )
    if kind is not None and spec.kind != kind:
        raise ModelUnavailable(f"Model {shown} makes {spec.kind}s, not {kind}s.")
    return spec


def default_model_id(settings: GenerationSettings, kind: Kind) -> str:
    """The model a request of this kind gets when it names none (`IMAGE_MODEL` / `VIDEO_MODEL`)."""
    return settings.image_model if kind == "image" else settings.video_model
