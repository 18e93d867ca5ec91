"""/imagine and /video: the two commands members use most.

Discord enforces the ranges declared here before we see the input; `validate_request`
checks everything again against the chosen model's own limits (one place for limits).
Each command defers first, so the 3-second deadline holds however busy the queue is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.defaults import Who, fill_request, saved_layers
from bot.discord_ui.attachments import keep_attachment
from bot.discord_ui.cogs.defaults import image_models, preset_names, video_models
from generation.params import ASPECTS, FRAMES_RANGE

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)


#: the options each command hands on as request fields (the rest: `preset` and the `image` attachment)
REQUEST_FIELDS = {
    "image": (
        *("prompt", "negative_prompt", "seed", "steps", "guidance"),
        *("width", "height", "model", "count", "strength", "aspect"),
    ),
    "video": ("prompt", "negative_prompt", "seed", "steps", "guidance", "frames", "fps", "model"),
}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, app_commands.Choice) else value


class Generate(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def _queue(
        self, interaction: discord.Interaction[Any], *, kind: str, arguments: dict[str, Any]
    ) -> None:
        """Both commands from here on: `arguments` is the command's `locals()`, so each option is named
        once, in the signature Discord reads."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        preset, image = arguments["preset"], arguments["image"]
        raw = {k: _plain(arguments[k]) for k in REQUEST_FIELDS[kind]}
        who = Who(
            user_id=str(interaction.user.id),
            channel_id=str(interaction.channel_id) if interaction.channel_id else None,
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        )
        saved = await saved_layers(self.bot.store, who, preset)  # refuses an unknown preset first
        settings = self.bot.settings
        raw, spoiler = fill_request(
            raw,
            saved,
            kind=kind,
            registry=self.bot.registry,
            settings=settings,
            picture=kind == "video" and image is not None,
        )
        if image is not None:  # downloaded after the defer: it may take longer than 3 s
            raw["image"] = await keep_attachment(image, self.bot.settings)
        await self.bot.actions.submit_new(interaction, kind=kind, raw=raw, spoiler=spoiler)

    @app_commands.command(name="imagine")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to draw",
        negative_prompt="What to keep out of the picture",
        seed="Same seed + same settings = same picture (random if empty)",
        steps="Denoising steps: more is slower and often finer",
        guidance="How strictly to follow the prompt",
        aspect="Shape of the picture (ignored when width/height are given)",
        width="Width in pixels (multiple of 8)",
        height="Height in pixels (multiple of 8)",
        model="Image model",
        count="How many images (1-4), posted as one grid with U/V buttons",
        image="A picture to start from (PNG, JPEG or WebP): image-to-image",
        strength="How much of the picture to repaint: 0 keeps it, 1 ignores it (default 0.6)",
        preset="One of your saved presets (/preset save)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    @app_commands.autocomplete(model=image_models, preset=preset_names)
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 1000],
        negative_prompt: app_commands.Range[str, 0, 1000] | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        steps: app_commands.Range[int, 1, 100] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        aspect: app_commands.Choice[str] | None = None,
        width: app_commands.Range[int, 64, 2048] | None = None,
        height: app_commands.Range[int, 64, 2048] | None = None,
        model: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        preset: str | None = None,
    ) -> None:
        """Create an image from a text prompt."""
        await self._queue(interaction, kind="image", arguments=locals())

    @app_commands.command(name="video")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What should happen in the clip",
        negative_prompt="What to keep out of the clip",
        seed="Same seed + same settings = same clip (random if empty)",
        steps="Denoising steps: more is slower and often finer",
        guidance="How strictly to follow the prompt",
        frames="Number of frames: each model has its own range and rule (Wan 4k+1, LTX 8k+1)",
        fps="Frames per second of the MP4",
        model="Video model",
        image="A picture to animate (PNG, JPEG or WebP; its first frame): uses an image-to-video model",
        preset="One of your saved presets (/preset save)",
    )
    @app_commands.autocomplete(model=video_models, preset=preset_names)
    async def video(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 1000],
        negative_prompt: app_commands.Range[str, 0, 1000] | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        steps: app_commands.Range[int, 1, 100] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        frames: app_commands.Range[int, FRAMES_RANGE[0], FRAMES_RANGE[1]] | None = None,
        fps: app_commands.Range[int, 1, 30] | None = None,
        model: str | None = None,
        image: discord.Attachment | None = None,
        preset: str | None = None,
    ) -> None:
        """Create a short video clip from a text prompt, or animate a picture."""
        await self._queue(interaction, kind="video", arguments=locals())


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Generate(bot))
