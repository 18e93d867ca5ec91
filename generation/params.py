"""Validated generation requests: the one place that knows what a request may ask for.

The Discord cogs, the REST API and the CLI all hand raw values to :func:`validate_request`
and get back a frozen request whose every field is in range, with the seed chosen (and
therefore recorded) when the caller gave none. Limits come from the model's spec. Every
violation raises :class:`InvalidRequest` with a message naming the parameter and what is
allowed, which is safe to show to the member who typed it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from generation.catalog import BUILTIN_MODELS
from generation.errors import InvalidRequest
from generation.models import ModelSpec, step_limits
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
#: images one request may ask for (posted as one grid)
MAX_COUNT = 4
SIZE_MULTIPLE = 8
#: the widest frame range of the built-in models: what a command can declare before the
#: member picks a model (each model's own range and rule are checked by `validate_request`)
FRAMES_RANGE = (
    min(s.min_frames for s in BUILTIN_MODELS if s.is_video),
    max(s.max_frames for s in BUILTIN_MODELS if s.is_video),
)
#: fields a request carries that are not stored with it (see `notes`)
_TRANSIENT = frozenset({"notes"})
#: stored fields that older records lack, with the value they meant
_OPTIONAL: dict[str, Any] = {"image": None, "count": 1, "strength": None}
#: how much of a member's picture image-to-image repaints when the member does not say
DEFAULT_STRENGTH = 0.6

#: keys `validate_request` accepts besides the request fields (they are checked elsewhere)
_IGNORED_KEYS = frozenset({"kind", "model"})
#: alternative spellings callers commonly use
_ALIASES = {"guidance_scale": "guidance", "num_frames": "frames", "num_inference_steps": "steps"}


@dataclass(frozen=True)
class Sample:
    """One image of a batched pipeline call, with its own generator seed.

    A batch is a list of these: one request's `count` images today; images of several
    requests that share a model and shape can join the same list.
    """

    prompt: str
    negative_prompt: str | None
    seed: int


@dataclass(frozen=True, kw_only=True)
class ImageRequest:
    """A validated text-to-image request; every field is final, the seed included."""

    kind: ClassVar[Literal["image"]] = "image"

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    #: images in one run (a grid when more than one); image i has seed `seed + i`
    count: int = 1
    #: path of the picture to start from (image-to-image); None for text only
    image: str | None = None
    #: how much of `image` is repainted: 0 keeps it, 1 ignores it (None without an image)
    strength: float | None = None
    #: what validation changed and why ("wan-1.3b makes 4k+1 frames: using 17"), for the member
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageRequest:
        return cls(**_fields_from_dict(cls, data))

    @property
    def seeds(self) -> tuple[int, ...]:
        """Each image's seed: consecutive, so any one image can be made again alone."""
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.count))

    @property
    def denoise_steps(self) -> int:
        """Steps the pipeline really runs: image-to-image skips the first (1 - strength) of them."""
        if self.image is None or self.strength is None:
            return self.steps
        return min(self.steps, int(self.steps * self.strength))

    def samples(self) -> tuple[Sample, ...]:
        """The batch one pipeline call runs: one (prompt, negative, seed) per image."""
        return tuple(Sample(self.prompt, self.negative_prompt, seed) for seed in self.seeds)


@dataclass(frozen=True, kw_only=True)
class VideoRequest:
    """A validated text-to-video request; every field is final, the seed included."""

    kind: ClassVar[Literal["video"]] = "video"

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    frames: int
    fps: int
    #: path of the input picture (the first frame) for an image-to-video model; None for text only
    image: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoRequest:
        return cls(**_fields_from_dict(cls, data))

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True, kw_only=True)
class UpscaleRequest(ImageRequest):
    """A validated upscale of one picture (`image`, `width` x `height` as read); an `ImageRequest` to
    the runner, which hands the upscaler the picture and the prompt that describes it."""

    kind: ClassVar[Literal["upscale"]] = "upscale"  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpscaleRequest:
        return cls(**_fields_from_dict(cls, data))


GenerationRequest = ImageRequest | VideoRequest


def _to_dict(request: ImageRequest | VideoRequest) -> dict[str, Any]:
    data = {k: v for k, v in dataclasses.asdict(request).items() if k not in _TRANSIENT}
    return {"kind": request.kind, **data}


def _fields_from_dict(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Restore a stored request: exact field set, light type coercion, no range checks.

    Range checks need the model spec, which may have changed since the request was stored;
    a stored request was validated when it was made.
    """
    names = {f.name for f in dataclasses.fields(cls)} - _TRANSIENT
    missing = names - set(data) - set(_OPTIONAL)
    if missing:
        raise ValueError(f"{cls.__name__}: missing field(s) {', '.join(sorted(missing))}")
    out: dict[str, Any] = {}
    for name in names:
        value = data.get(name, _OPTIONAL.get(name))
        if name in ("model", "prompt"):
            out[name] = str(value)
        elif name in ("negative_prompt", "image"):
            out[name] = None if value is None else str(value)
        elif name == "guidance":
            out[name] = float(value)
        elif name == "strength":
            out[name] = None if value is None else float(value)
        else:
            out[name] = int(value)
    return out


def request_from_dict(data: Mapping[str, Any]) -> GenerationRequest:
    """Restore a request stored with `to_dict()` (its "kind" says which type)."""
    kind = data.get("kind")
    if kind == "image":
        return ImageRequest.from_dict(data)
    if kind == "video":
        return VideoRequest.from_dict(data)
    if kind == "upscale":
        return UpscaleRequest.from_dict(data)
    raise ValueError(f"stored request has unknown kind {kind!r}")


# -- validation ------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Control characters out (whitespace ones become spaces), runs of spaces kept, ends trimmed."""
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            continue
        else:
            out.append(ch)
    return "".join(out).strip()


def _prompt(value: Any, *, name: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(
                f"{name} is required: describe what to generate (1-{MAX_PROMPT_CHARS} characters)."
            )
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, not {type(value).__name__}.")
    text = clean_text(value)
    if not text:
        if required:
            raise InvalidRequest(f"{name} is empty: it needs 1-{MAX_PROMPT_CHARS} characters of text.")
        return None
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"{name} is {len(text)} characters long; the most allowed is {MAX_PROMPT_CHARS}."
        )
    return text


def _int(value: Any, *, name: str, lo: int, hi: int) -> int:
    allowed = f"a whole number from {lo} to {hi}"
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be {allowed}, not {value!r}.")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            raise InvalidRequest(f"{name} must be {allowed}, not {text[:40]!r}.") from None
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidRequest(f"{name} must be {allowed}, not {value!r}.")
        value = int(value)
    elif not isinstance(value, int):
        raise InvalidRequest(f"{name} must be {allowed}, not {type(value).__name__}.")
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be {allowed} (got {value}).")
    return value


def _float(value: Any, *, name: str, lo: float, hi: float) -> float:
    allowed = f"a number from {lo:g} to {hi:g}"
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be {allowed}, not {value!r}.")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            raise InvalidRequest(f"{name} must be {allowed}, not {text[:40]!r}.") from None
    elif not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be {allowed}, not {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be {allowed} (got {value:g}).")
    return value


def _size(value: Any, *, name: str, lo: int, hi: int, spec: ModelSpec, notes: list[str]) -> int:
    """A size in range, snapped to the nearest multiple the model needs (and the member told)."""
    multiple = spec.size_multiple
    size = _int(value, name=name, lo=lo, hi=hi)
    if size % multiple == 0:
        return size
    below = size - size % multiple
    snapped = below + multiple if size - below >= multiple / 2 else below
    snapped = min(max(snapped, lo), hi)
    notes.append(f"{name} must be a multiple of {multiple} for this model: using {snapped} (asked {size}).")
    return snapped


def _frames(value: Any, spec: ModelSpec, notes: list[str]) -> int:
    """A frame count in the model's range, snapped to its frame rule (4k+1, 8k+1) with a note."""
    frames = _int(value, name="frames", lo=spec.min_frames, hi=spec.max_frames)
    if spec.frames_ok(frames):
        return frames
    snapped = spec.nearest_frames(frames)
    notes.append(f"{spec.id} makes {spec.frame_rule} frames: using {snapped} (asked {frames}).")
    return snapped


def _article(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _known_values(kind: str, raw: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The request's own parameters under their canonical names; unknown ones are refused."""
    if kind not in ("image", "video", "upscale"):
        raise InvalidRequest(f"kind must be 'image', 'video' or 'upscale', not {kind!r}.")
    if spec.kind != kind:
        raise InvalidRequest(f"model {spec.id!r} makes {spec.kind}s; choose {_article(kind)} model.")
    model = raw.get("model")
    if model is not None and model != spec.id:
        raise InvalidRequest(f"model {model!r} does not match the model spec {spec.id!r}.")
    values = {_ALIASES.get(k, k): v for k, v in raw.items() if _ALIASES.get(k, k) not in _IGNORED_KEYS}
    allowed = {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height"}
    if kind == "image":
        allowed |= {"count", "image", "strength"}
    if kind in ("video", "upscale"):
        allowed |= {"frames", "fps", "image"} if kind == "video" else {"image"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown parameter(s) {', '.join(unknown)} for {_article(kind)}; "
            f"allowed: {', '.join(sorted(allowed))}."
        )
    return {k: v for k, v in values.items() if v is not None}


def _image(value: Any, spec: ModelSpec) -> str | None:
    """The input picture's path: required by image-to-video models, refused by the others."""
    if value is None or value == "":
        if spec.takes_image:
            raise InvalidRequest(f"model {spec.id!r} animates a picture: attach an image (its first frame).")
        return None
    if not spec.takes_image:
        partner = f" (its image-to-video partner is {spec.i2v_model!r})" if spec.i2v_model else ""
        raise InvalidRequest(f"model {spec.id!r} makes video from text only{partner}.")
    if not isinstance(value, str) and not hasattr(value, "__fspath__"):
        raise InvalidRequest(f"image must be a file path, not {type(value).__name__}.")
    return os.fspath(value)


def _image_input(values: Mapping[str, Any], steps: int, notes: list[str]) -> tuple[str | None, float | None]:
    """The picture to start from and the strength. Image-to-image runs only `steps x strength` steps,
    so a strength too light to run one of them is raised to the lightest that does (with a note)."""
    strength = _float(values.get("strength", DEFAULT_STRENGTH), name="strength", lo=0.0, hi=1.0)
    value = values.get("image")
    if value is None or value == "":
        return None, None
    if not isinstance(value, str) and not hasattr(value, "__fspath__"):
        raise InvalidRequest(f"image must be a file path, not {type(value).__name__}.")
    if int(steps * strength) < 1:
        lightest = min(1.0, math.nextafter(1.0 / steps, 2.0))
        while int(steps * lightest) < 1:  # guards float rounding of 1/steps
            lightest = math.nextafter(lightest, 2.0)
        notes.append(
            f"strength {strength:g} with {steps} steps repaints nothing: using {lightest:.3g} "
            f"(strength x steps must be at least 1)."
        )
        strength = lightest
    return os.fspath(value), strength


def validate_request(
    kind: str,
    raw: Mapping[str, Any],
    spec: ModelSpec,
    settings: GenerationSettings | None = None,
) -> GenerationRequest:
    """Check every parameter against `spec` and return the final, frozen request.

    Missing or None values take the model's defaults; a missing seed is drawn at random
    here so that the returned request (and whatever stores it) can reproduce the result.
    A size off the model's multiple or a frame count off its rule is snapped to the nearest
    valid value, and the request's `notes` say so (the member is told, not refused).
    """
    values = _known_values(kind, raw, spec)
    max_steps, default_steps = step_limits(spec, settings)
    notes: list[str] = []
    prompt = _prompt(values.get("prompt"), name="prompt", required=True)
    negative = _prompt(values.get("negative_prompt"), name="negative_prompt", required=False)
    width, height = values.get("width", spec.default_width), values.get("height", spec.default_height)
    common: dict[str, Any] = {
        "model": spec.id,
        "prompt": prompt,
        "negative_prompt": negative if negative is not None else spec.default_negative_prompt,
        "seed": _int(values.get("seed", random_seed()), name="seed", lo=0, hi=MAX_SEED),
        "steps": _int(values.get("steps", default_steps), name="steps", lo=spec.min_steps, hi=max_steps),
        "guidance": _float(
            values.get("guidance", spec.default_guidance),
            name="guidance",
            lo=spec.min_guidance,
            hi=spec.max_guidance,
        ),
        "width": _size(width, name="width", lo=spec.min_width, hi=spec.max_width, spec=spec, notes=notes),
        "height": _size(
            height, name="height", lo=spec.min_height, hi=spec.max_height, spec=spec, notes=notes
        ),
    }
    if kind == "image":
        default_count = settings.default_image_count if settings is not None else 1
        count = _int(values.get("count", default_count), name="count", lo=1, hi=MAX_COUNT)
        image, strength = _image_input(values, common["steps"], notes)
        return ImageRequest(**common, count=count, image=image, strength=strength, notes=tuple(notes))
    if kind == "upscale":
        if not values.get("image"):
            raise InvalidRequest("An upscale needs the picture to upscale.")
        return UpscaleRequest(**common, image=os.fspath(values["image"]), notes=tuple(notes))
    return VideoRequest(
        **common,
        frames=_frames(values.get("frames", spec.default_frames), spec, notes),
        fps=_int(values.get("fps", spec.default_fps), name="fps", lo=spec.min_fps, hi=spec.max_fps),
        image=_image(values.get("image"), spec),
        notes=tuple(notes),
    )


#: image shapes offered as `aspect` (width:height) by /imagine and the REST API
ASPECTS: dict[str, tuple[int, int]] = {
    "square": (1, 1),
    "portrait": (2, 3),
    "landscape": (3, 2),
    "wide": (16, 9),
}


def aspect_size(aspect: str, spec: ModelSpec) -> tuple[int, int]:
    """Width and height for `aspect` at about the model's default pixel count, within its limits."""
    if aspect not in ASPECTS:
        raise InvalidRequest(f"aspect must be one of {', '.join(ASPECTS)}.")
    w, h = ASPECTS[aspect]
    height = (spec.default_width * spec.default_height * h / w) ** 0.5
    width = height * w / h
    step = 64 if min(spec.default_width, spec.default_height) >= 256 else 8
    out = []
    for value, low, high in (
        (width, spec.min_width, spec.max_width),
        (height, spec.min_height, spec.max_height),
    ):
        size = max(step, int(round(value / step) * step))
        out.append(max(low, min(high, size)))
    return out[0], out[1]
