"""The model registry: which diffusers repos we run, and the limits each one accepts.

A :class:`ModelSpec` (`generation.spec`) is plain data; the built-in ones live in
`generation.catalog`. Limits live in the spec so that the validator in `generation.params`,
the Discord command and the REST API all agree. Extra models come from configuration
(`EXTRA_MODELS`, a JSON object) so any diffusers text-to-image or text-to-video repo can be
served without code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from generation.catalog import BUILTIN_MODELS
from generation.errors import ModelUnavailable
from generation.settings import GenerationSettings
from generation.spec import TINY_REPO_PREFIX, Kind, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["BUILTIN_MODELS", "TINY_REPO_PREFIX", "Kind", "ModelSpec", "build_registry", "get_spec"]


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


def default_model_id(settings: GenerationSettings, kind: Kind, *, image: bool = False) -> str:
    """The model a request gets when it names none (`IMAGE_MODEL`, `VIDEO_MODEL`, or `I2V_MODEL`
    for a video from a picture)."""
    if kind == "image":
        return settings.image_model
    if kind == "upscale":
        return settings.upscale_model
    return settings.i2v_model if image else settings.video_model


def image_to_video_spec(registry: Mapping[str, ModelSpec], spec: ModelSpec) -> ModelSpec:
    """The model that animates an input image for `spec`: itself, its `i2v_model`, or a clear refusal."""
    if spec.takes_image:
        return spec
    if spec.kind != "video":
        raise ModelUnavailable(f"Model {spec.id!r} makes images; pick a video model to animate a picture.")
    partner = registry.get(spec.i2v_model) if spec.i2v_model else None
    if partner is None or not partner.takes_image:
        able = ", ".join(sorted(m.id for m in registry.values() if m.takes_image)) or "none configured"
        raise ModelUnavailable(f"Model {spec.id!r} cannot animate a picture. Image-to-video models: {able}.")
    return partner
