"""Saved request defaults: what a member, a preset, a channel or a guild fills in when a request
leaves an option out.

Precedence, highest first: the request itself, the named preset, the member's defaults, the
channel's, the guild's, then the settings (applied by `validate_request` for whatever is still
missing). A saved value is a wish, not an order: it is clamped to the chosen model's limits (a
member's 80 steps become 50 on a model that stops at 50), so a default saved for one model never
makes a request on another fail. Everything then passes the same validation and quotas as any
request. Stored per (scope, owner, name) in the store (`Store.get_defaults`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from generation.errors import InvalidRequest
from generation.models import default_model_id, get_spec, step_limits
from generation.params import ASPECTS, MAX_COUNT, MAX_PROMPT_CHARS, aspect_size

if TYPE_CHECKING:
    from bot.core.store.base import Store

log = logging.getLogger(__name__)

#: what a member, a preset, a channel or a guild may save, and what each value must be
KEYS: dict[str, str] = {
    "image_model": "an image model id",
    "video_model": "a video model id",
    "aspect": f"one of {', '.join(ASPECTS)}",
    "steps": "a whole number of denoising steps",
    "guidance": "a number",
    "negative_prompt": f"text of at most {MAX_PROMPT_CHARS} characters",
    "count": f"a whole number from 1 to {MAX_COUNT}",
    "spoiler": "true or false",
}
MAX_PRESETS = 25  # one autocomplete list
MAX_PRESET_NAME = 32


@dataclass(frozen=True)
class Who:
    """Whose defaults apply: the member and where they asked (None outside a guild)."""

    user_id: str
    channel_id: str | None = None
    guild_id: str | None = None


def check_values(values: dict[str, Any]) -> dict[str, Any]:
    """The saved form of `values`: None dropped, unknown keys and wrong types refused by name."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in KEYS:
            raise InvalidRequest(f"{key} cannot be saved as a default; these can: {', '.join(KEYS)}.")
        ok = {
            "aspect": isinstance(value, str) and value in ASPECTS,
            "steps": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            "guidance": isinstance(value, int | float) and not isinstance(value, bool) and value >= 0,
            "negative_prompt": isinstance(value, str) and len(value) <= MAX_PROMPT_CHARS,
            "count": isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_COUNT,
            "spoiler": isinstance(value, bool),
        }.get(key, isinstance(value, str) and 0 < len(value) <= 100)
        if not ok:
            raise InvalidRequest(f"{key} must be {KEYS[key]}, not {value!r}.")
        out[key] = value
    return out


def check_preset_name(name: str) -> str:
    name = " ".join(name.split())
    if not 0 < len(name) <= MAX_PRESET_NAME:
        raise InvalidRequest(f"A preset name needs 1-{MAX_PRESET_NAME} characters.")
    return name


async def saved_layers(store: Store, who: Who, preset: str | None) -> dict[str, Any]:
    """The saved values that apply to `who`, merged lowest first (guild, channel, member, preset)."""
    layers: list[dict[str, Any] | None] = []
    if who.guild_id:
        layers.append(await store.get_defaults("guild", who.guild_id))
    if who.channel_id:
        layers.append(await store.get_defaults("channel", who.channel_id))
    layers.append(await store.get_defaults("member", who.user_id))
    if preset:
        named = await store.get_defaults("preset", who.user_id, check_preset_name(preset))
        if named is None:
            raise InvalidRequest(f"You have no preset named {preset[:MAX_PRESET_NAME]!r}: see /preset list.")
        layers.append(named)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if k in KEYS and v is not None})
    return merged


def _saved_model(model_id: str | None, registry: Any, picture: bool) -> str | None:
    """A member's saved model, unless the request brings a picture that model cannot animate
    (itself or through its image-to-video partner): then I2V_MODEL serves it instead."""
    spec = registry.get(model_id) if model_id else None
    if spec is None or not picture or spec.takes_image:
        return model_id
    partner = registry.get(spec.i2v_model) if spec.i2v_model else None
    return model_id if partner is not None and partner.takes_image else None


def fill_request(
    raw: dict[str, Any],
    saved: dict[str, Any],
    *,
    kind: str,
    registry: Any,
    settings: Any,
    picture: bool = False,
) -> tuple[dict[str, Any], bool]:
    """`raw` with the saved values filled in where it says nothing, clamped to the model; and
    whether the result should be posted behind a spoiler. `raw` may carry `aspect`. With a
    `picture` (a video from an image), a model-less request gets I2V_MODEL, not VIDEO_MODEL."""
    out = {k: v for k, v in raw.items() if v is not None}
    aspect = out.pop("aspect", None)
    fallback = default_model_id(settings, kind, image=picture)
    model_id = out.get("model") or _saved_model(saved.get(f"{kind}_model"), registry, picture) or fallback
    spec = registry.get(model_id)
    if spec is None or spec.kind != kind:  # a saved model removed since: the server default instead
        if out.get("model"):
            get_spec(registry, model_id, kind=kind)  # raises, naming the choices
        model_id = fallback
        spec = get_spec(registry, model_id, kind=kind)
    out["model"] = model_id
    if "negative_prompt" not in out and saved.get("negative_prompt"):
        out["negative_prompt"] = saved["negative_prompt"]
    if "steps" not in out and "steps" in saved:
        max_steps, _ = step_limits(spec, settings)
        out["steps"] = max(spec.min_steps, min(int(saved["steps"]), max_steps))
    if "guidance" not in out and "guidance" in saved:
        out["guidance"] = max(spec.min_guidance, min(float(saved["guidance"]), spec.max_guidance))
    if kind == "image":
        if "count" not in out and "count" in saved:
            out["count"] = max(1, min(int(saved["count"]), MAX_COUNT))
        aspect = aspect or saved.get("aspect")
        if aspect and "width" not in out and "height" not in out:
            out["width"], out["height"] = aspect_size(aspect, spec)
    return out, bool(saved.get("spoiler"))
