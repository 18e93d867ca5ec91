"""/settings and /preset: a member's own defaults and named presets (bot.core.defaults).

Both answer privately: saved defaults are nobody else's business. `/admin defaults` (admin cog)
saves a channel's or the server's with the same options and the same `save_defaults`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.defaults import MAX_PRESETS, check_preset_name, check_values
from bot.discord_ui.formatting import safe_text
from generation.errors import InvalidRequest
from generation.models import get_spec
from generation.params import ASPECTS, MAX_COUNT, MAX_PROMPT_CHARS

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
ASPECT_CHOICES = [app_commands.Choice(name=a, value=a) for a in ASPECTS]
#: the option descriptions every defaults command shares
DESCRIBE: dict[str, str] = {
    "image_model": "Image model to use when a request names none",
    "video_model": "Video model to use when a request names none",
    "aspect": "Shape of pictures when no width/height is given",
    "steps": "Denoising steps (clamped to each model's limits)",
    "guidance": "How strictly to follow the prompt (clamped to each model's limits)",
    "negative_prompt": "What to keep out, when a request gives no negative prompt",
    "count": "Images per /imagine (1-4)",
    "spoiler": "Post results behind a spoiler",
    "reset": "Forget every saved default here",
}
#: the options `save_defaults` keeps, in the order they are shown
OPTIONS = tuple(k for k in DESCRIBE if k != "reset")
StepsOpt = app_commands.Range[int, 1, 200]
GuidanceOpt = app_commands.Range[float, 0.0, 30.0]
NegativeOpt = app_commands.Range[str, 0, MAX_PROMPT_CHARS]
CountOpt = app_commands.Range[int, 1, MAX_COUNT]


def describe_values(values: dict[str, Any] | None) -> str:
    if not values:
        return "nothing saved"
    return " · ".join(f"{k}: {safe_text(str(v), 120)}" for k, v in values.items())


def option_values(arguments: dict[str, Any]) -> dict[str, Any]:
    """The defaults options out of a command's `locals()`: the three commands that take them must
    still name each in their signatures (Discord reads the options from there), but only there."""
    return {k: arguments[k] for k in OPTIONS}


def checked(bot: ImagineBot, given: dict[str, Any]) -> dict[str, Any]:
    """The options a member gave, with models checked against the registry (by kind)."""
    values = {k: (v.value if isinstance(v, app_commands.Choice) else v) for k, v in given.items()}
    for kind in ("image", "video"):
        if values.get(f"{kind}_model") is not None:
            get_spec(bot.registry, values[f"{kind}_model"], kind=kind)  # type: ignore[arg-type]
    return check_values(values)


async def save_defaults(
    bot: ImagineBot, scope: str, owner: str, given: dict[str, Any], *, reset: bool, name: str = ""
) -> dict[str, Any] | None:
    """Merge `given` into the saved record (or forget it on `reset`); the record afterwards."""
    if reset:
        await bot.store.delete_defaults(scope, owner, name)
        return None
    values = checked(bot, given)
    merged = {**(await bot.store.get_defaults(scope, owner, name) or {}), **values}
    if values:
        await bot.store.set_defaults(scope, owner, merged, name)
    return merged


def model_choices(bot: ImagineBot, kind: str, current: str) -> list[app_commands.Choice[str]]:
    """The registry's models of one kind whose id contains what the member typed (Discord shows
    at most 25 suggestions of at most 100 characters)."""
    typed = current.lower()
    models = [m for m in bot.registry.values() if m.kind == kind and typed in m.id.lower()]
    return [app_commands.Choice(name=f"{m.id} — {m.description}"[:100], value=m.id) for m in models[:25]]


async def image_models(
    interaction: discord.Interaction[ImagineBot], current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete of an image-model option: /imagine, /settings, /preset save, /admin defaults."""
    return model_choices(interaction.client, "image", current)


async def video_models(
    interaction: discord.Interaction[ImagineBot], current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete of a video-model option: /video, /settings, /preset save, /admin defaults."""
    return model_choices(interaction.client, "video", current)


async def preset_names(
    interaction: discord.Interaction[ImagineBot], current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete of the member's own presets, for /preset delete and the generate commands."""
    names = await interaction.client.store.list_defaults("preset", str(interaction.user.id))
    found = [n for n in names if current.lower() in n.lower()]
    return [app_commands.Choice(name=n, value=n) for n in found[:25]]


class MemberDefaults(commands.Cog):
    preset = app_commands.Group(
        name="preset", description="Your named sets of options for /imagine and /video"
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def _reply(self, interaction: discord.Interaction[Any], text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NONE)

    @app_commands.command(name="settings")
    @app_commands.describe(**DESCRIBE)
    @app_commands.choices(aspect=ASPECT_CHOICES)
    @app_commands.autocomplete(image_model=image_models, video_model=video_models)
    async def settings(
        self,
        interaction: discord.Interaction[Any],
        image_model: str | None = None,
        video_model: str | None = None,
        aspect: app_commands.Choice[str] | None = None,
        steps: StepsOpt | None = None,
        guidance: GuidanceOpt | None = None,
        negative_prompt: NegativeOpt | None = None,
        count: CountOpt | None = None,
        spoiler: bool | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change your defaults for /imagine and /video (only you see them)."""
        given = option_values(locals())
        saved = await save_defaults(self.bot, "member", str(interaction.user.id), given, reset=reset)
        await self._reply(interaction, f"Your defaults: {describe_values(saved)}.")

    @preset.command(name="save")
    @app_commands.describe(name="A name to pick it by", **{k: v for k, v in DESCRIBE.items() if k != "reset"})
    @app_commands.choices(aspect=ASPECT_CHOICES)
    @app_commands.autocomplete(image_model=image_models, video_model=video_models)
    async def preset_save(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 32],
        image_model: str | None = None,
        video_model: str | None = None,
        aspect: app_commands.Choice[str] | None = None,
        steps: StepsOpt | None = None,
        guidance: GuidanceOpt | None = None,
        negative_prompt: NegativeOpt | None = None,
        count: CountOpt | None = None,
        spoiler: bool | None = None,
    ) -> None:
        """Save a set of options to use with /imagine preset: or /video preset:."""
        given = option_values(locals())
        user_id, name = str(interaction.user.id), check_preset_name(name)
        values = checked(self.bot, given)
        existing = await self.bot.store.list_defaults("preset", user_id)
        if not values:
            raise InvalidRequest("Give at least one option to save in the preset.")
        if name not in existing and len(existing) >= MAX_PRESETS:
            raise InvalidRequest(f"You have {MAX_PRESETS} presets already: delete one first.")
        await self.bot.store.set_defaults("preset", user_id, values, name)
        await self._reply(interaction, f"Saved preset **{safe_text(name, 40)}**: {describe_values(values)}.")

    @preset.command(name="list")
    async def preset_list(self, interaction: discord.Interaction[Any]) -> None:
        """Your presets and what each one sets."""
        presets = await self.bot.store.list_defaults("preset", str(interaction.user.id))
        lines = [f"**{safe_text(n, 40)}**: {describe_values(v)}" for n, v in presets.items()]
        await self._reply(interaction, "\n".join(lines) or "You have no presets yet: /preset save makes one.")

    @preset.command(name="delete")
    @app_commands.describe(name="The preset to delete")
    @app_commands.autocomplete(name=preset_names)
    async def preset_delete(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Delete one of your presets."""
        if not await self.bot.store.delete_defaults("preset", str(interaction.user.id), name):
            raise InvalidRequest(f"You have no preset named {safe_text(name, 40)!r}.")
        await self._reply(interaction, f"Deleted preset **{safe_text(name, 40)}**.")


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(MemberDefaults(bot))
