"""Buttons on status and result messages: Cancel, Reroll, Edit, Delete, Animate, Upscale, and
U1..U4 / V1..V4 on a grid.

They are `DynamicItem`s: the job id lives in the fixed-shape `custom_id`
(`job:<action>:<job id>`), so a button clicked after a restart is still routed here and
knows its job without any in-memory view state. Permission checks happen in
`interaction_check`, before any work.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.discord_ui.edit_form import EditForm
from bot.discord_ui.error_replies import reply_for
from bot.discord_ui.formatting import short_id
from generation.errors import InvalidRequest

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
NOT_YOURS = "Only the member who asked for this (or a server admin) can delete it."


def _bot(interaction: discord.Interaction[Any]) -> ImagineBot:
    return cast("ImagineBot", interaction.client)


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"job:unused:" + JOB_ID):
    action = "unused"
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji,
                style=self.style,
                custom_id=f"job:{self.action}:{job_id}",
            )
        )

    def with_row(self, row: int | None) -> _JobButton:
        self.row = row
        return self

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        """Buttons share the slash commands' error policy (bot.error_replies)."""
        try:
            await self.run(interaction)
        except Exception as exc:
            text = reply_for(exc, where=f"button {self.action} of job {self.job_id}")
            if text is not None:
                await _bot(interaction).reply_privately(interaction, text)

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        raise NotImplementedError

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _JobButton:
        return cls(match["job_id"])


class CancelButton(_JobButton, template=r"job:cancel:" + JOB_ID):
    action = "cancel"
    label = "Cancel"
    emoji = "✖️"
    style = discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await bot.actions.cancel(self.job_id, interaction=interaction)
        await interaction.followup.send(
            f"Job `{short_id(job.id)}` is {'cancelled' if job.state.is_final else 'being cancelled'}.",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


class RerollButton(_JobButton, template=r"job:reroll:" + JOB_ID):
    action = "reroll"
    label = "Reroll"
    emoji = "🎲"
    style = discord.ButtonStyle.primary

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await bot.actions.reroll(self.job_id, interaction=interaction)


class EditButton(_JobButton, template=r"job:edit:" + JOB_ID):
    """Opens the prefilled form (bot.discord_ui.edit_form); a modal is the answer, so no deferral."""

    action = "edit"
    label = "Edit"
    emoji = "✏️"
    style = discord.ButtonStyle.secondary

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        job = await _bot(interaction).store.get_job(self.job_id)
        if job is None:
            raise InvalidRequest("The original request is gone, so it cannot be edited.")
        await interaction.response.send_modal(EditForm(job))


class DeleteButton(_JobButton, template=r"job:delete:" + JOB_ID):
    action = "delete"
    label = "Delete"
    emoji = "🗑️"
    style = discord.ButtonStyle.secondary

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        bot = _bot(interaction)
        job = await bot.store.get_job(self.job_id)
        if job is not None and bot.actions.may_delete(job, interaction):
            return True
        await interaction.response.send_message(
            NOT_YOURS,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        return False

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await bot.actions.delete_result(self.job_id, interaction=interaction)


class _ImageButton(_JobButton, template=r"job:unused(?P<n>[1-4]):" + JOB_ID):
    """A button about image n of a grid (`U2`, `V3`): `job:<action><n>:<job id>`. Buttons with an
    `emoji` keep one label for every n (`Animate`, `Upscale`); the others number it (`U2`)."""

    emoji: str | None = None

    def __init__(self, job_id: str, n: int = 1, row: int | None = None) -> None:
        self.job_id, self.n = job_id, n
        discord.ui.DynamicItem.__init__(
            self,
            discord.ui.Button(
                label=self.label if self.emoji else f"{self.label}{n}",
                emoji=self.emoji,
                style=self.style,
                custom_id=f"job:{self.action}{n}:{job_id}",
            ),
            row=row,
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _ImageButton:
        return cls(match["job_id"], int(match["n"]))


class PickButton(_ImageButton, template=r"job:u(?P<n>[1-4]):" + JOB_ID):
    """`Un`: image n alone at full size, from the kept file (no GPU work)."""

    action = "u"
    label = "U"

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await _bot(interaction).actions.post_image(self.job_id, self.n, interaction=interaction)


class VaryButton(_ImageButton, template=r"job:v(?P<n>[1-4]):" + JOB_ID):
    """`Vn`: a variation of image n (image-to-image from it, a new seed, the same count)."""

    action = "v"
    label = "V"

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await _bot(interaction).actions.vary(self.job_id, self.n, interaction=interaction)


class AnimateButton(_ImageButton, template=r"job:animate(?P<n>[1-4]):" + JOB_ID):
    """`Animate`: an image-to-video job from image n of an image result, with its prompt.

    The label is the same for every image; n rides in the custom id (a grid's own button
    animates image 1, and each `Un` post animates image n)."""

    action = "animate"
    label = "Animate"
    emoji = "🎞️"
    style = discord.ButtonStyle.success

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await _bot(interaction).actions.animate(self.job_id, self.n, interaction=interaction)


class UpscaleButton(_ImageButton, template=r"job:upscale(?P<n>[1-4]):" + JOB_ID):
    """`Upscale`: an upscale job (`UPSCALE_MODEL`) of image n, on a single-image result or a `Un` post."""

    action = "upscale"
    label = "Upscale"
    emoji = "🔍"
    style = discord.ButtonStyle.secondary

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await _bot(interaction).actions.upscale(self.job_id, self.n, interaction=interaction)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str, *, count: int = 1, kind: str = "image", image: int = 1) -> discord.ui.View:
    """Reroll, Edit and Delete, and Animate on an image (image `image` of the job: 1 for a grid) and
    Upscale on a single one;
    a grid of `count` images also gets U1..Un and V1..Vn, a row each (Discord allows five
    buttons to a row and five rows)."""
    view = discord.ui.View(timeout=None)
    if count > 1:
        for n in range(1, count + 1):
            view.add_item(PickButton(job_id, n, row=0))
        for n in range(1, count + 1):
            view.add_item(VaryButton(job_id, n, row=1))
    row = 2 if count > 1 else None
    view.add_item(RerollButton(job_id).with_row(row))
    view.add_item(EditButton(job_id).with_row(row))
    view.add_item(DeleteButton(job_id).with_row(row))
    if kind == "image":
        view.add_item(AnimateButton(job_id, image, row=row))
        if count == 1:  # a grid is upscaled one image at a time, from its `Un` post
            view.add_item(UpscaleButton(job_id, image, row=row))
    return view


DYNAMIC_ITEMS: tuple[type[_JobButton], ...] = (
    CancelButton,
    RerollButton,
    EditButton,
    DeleteButton,
    PickButton,
    VaryButton,
    AnimateButton,
    UpscaleButton,
)
