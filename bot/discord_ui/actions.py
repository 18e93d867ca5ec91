"""What members and buttons do, in one place: submit, reroll, cancel, delete.

Slash commands and buttons both end up here, so a reroll is queued exactly like a new
`/imagine`, and the permission rules for cancel/delete are written once.
Every method is called after the interaction was deferred; it answers with a follow-up.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.core.inputs import keep_result_as_input, keep_result_picture, upscale_params
from bot.core.jobs import Job, Source
from bot.core.moderation import RequestContext
from bot.core.queue import NotAllowed
from bot.discord_ui.formatting import queued_status, short_id
from bot.discord_ui.permissions import check_can_deliver
from bot.discord_ui.views import NOT_YOURS, status_view
from generation.errors import InvalidRequest, UserError
from generation.files import part_path
from generation.models import default_model_id, get_spec, image_to_video_spec
from generation.params import random_seed, validate_request

if TYPE_CHECKING:
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


class Actions:
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    # -- building jobs -------------------------------------------------------------------------
    def _context(self, interaction: discord.Interaction[Any]) -> RequestContext:
        channel = interaction.channel
        is_nsfw = bool(getattr(channel, "is_nsfw", lambda: False)())
        return RequestContext(
            user_id=str(interaction.user.id),
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            channel_id=str(interaction.channel_id) if interaction.channel_id else None,
            channel_is_nsfw=is_nsfw,
        )

    def _upload_limit(self, interaction: discord.Interaction[Any]) -> int:
        limit = getattr(interaction, "filesize_limit", None)  # Discord's attachment_size_limit
        if not limit and interaction.guild is not None:
            limit = interaction.guild.filesize_limit
        return int(limit or DEFAULT_UPLOAD_LIMIT)

    def _priority(self, interaction: discord.Interaction[Any]) -> int:
        roles = getattr(interaction.user, "roles", [])
        table = self.bot.settings.priority_roles
        best = 0
        for role in roles:
            best = max(best, table.get(str(role.id), 0), table.get(role.name, 0))
        return best

    def build_job(self, interaction: discord.Interaction[Any], *, kind: str, raw: dict[str, Any]) -> Job:
        """Validate options against the model's limits; raises InvalidRequest naming the option."""
        settings = self.bot.settings
        picture = bool(raw.get("image"))
        model_id = raw.pop("model", None) or default_model_id(settings, kind, image=picture)  # type: ignore[arg-type]
        spec = get_spec(self.bot.registry, model_id, kind=kind)  # type: ignore[arg-type]
        notes: list[str] = []
        if picture and kind == "video" and not spec.takes_image:
            spec = image_to_video_spec(self.bot.registry, spec)
            notes.append(f"{model_id} animates a picture through {spec.id}")
            model_id = spec.id
        request = validate_request(kind, {**raw, "model": model_id}, spec, settings)
        ctx = self._context(interaction)
        return Job(
            kind=kind,
            model=model_id,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            params=request.to_dict(),
            user_id=ctx.user_id,
            user_name=str(interaction.user),
            source=Source.DISCORD,
            guild_id=ctx.guild_id,
            channel_id=ctx.channel_id,
            priority=self._priority(interaction),
            max_tries=settings.max_tries,
            upload_limit_bytes=self._upload_limit(interaction),
            bot_permissions=interaction.app_permissions.value,
            notes=notes + list(request.notes),
        )

    async def submit_new(
        self,
        interaction: discord.Interaction[Any],
        *,
        kind: str,
        raw: dict[str, Any],
        parent_id: str | None = None,
        lineage: str | None = None,
        spoiler: bool = False,
    ) -> Job:
        """Build and submit; a kept input picture of a request refused on the way is deleted again."""
        try:
            job = self.build_job(interaction, kind=kind, raw=raw)
            job.parent_id, job.lineage = parent_id, lineage
            job.spoiler = spoiler
            return await self.submit(interaction, job)
        except UserError:
            if raw.get("image"):
                await asyncio.to_thread(Path(raw["image"]).unlink, missing_ok=True)
            raise

    # -- submit ----------------------------------------------------------------------------------
    async def submit(self, interaction: discord.Interaction[Any], job: Job) -> Job:
        """Moderate, persist, post the public status message, and tell the member privately."""
        check_can_deliver(interaction)
        ctx = self._context(interaction)
        await self.bot.moderator.check(ctx, prompt=job.prompt, negative_prompt=job.negative_prompt)
        job.nsfw_action = await self.bot.moderator.nsfw_action(ctx)
        submitted = await self.bot.queue.submit(job)
        job = submitted.job
        text = queued_status(job, position=submitted.position, eta_s=submitted.eta_s)
        try:
            channel = self.bot.get_partial_messageable(int(job.channel_id or interaction.channel_id or 0))
            status = await channel.send(text, view=status_view(job.id), allowed_mentions=NONE)
        except discord.HTTPException:
            log.warning("job %s: could not post the status message", job.id, exc_info=True)
        else:
            await self.bot.delivery.remember_status_message(job, status.id)
        notes = "".join(f"\n- {note}" for note in job.notes)
        await interaction.followup.send(
            f"Queued `{short_id(job.id)}` (seed {job.seed}). I'll post the result in this channel.{notes}",
            ephemeral=True,
            allowed_mentions=NONE,
        )
        return job

    # -- buttons and /queue cancel -----------------------------------------------------------------
    async def cancel(self, job_id: str, *, interaction: discord.Interaction[Any]) -> Job:
        job = await self.bot.store.get_job(job_id)
        if job is None:
            raise InvalidRequest("That job no longer exists.")
        return await self.bot.queue.cancel(
            job.id, by_user_id=str(interaction.user.id), is_admin=self.bot.is_admin(interaction)
        )

    async def reroll(self, job_id: str, *, interaction: discord.Interaction[Any]) -> Job:
        parent = await self.bot.store.get_job(job_id)
        if parent is None:
            raise InvalidRequest("The original request is gone, so it cannot be rerolled.")
        raw = {k: v for k, v in parent.params.items() if k not in ("seed", "kind")}
        raw["seed"] = random_seed()
        await self._own_input(raw)
        return await self.submit_new(
            interaction, kind=parent.kind, raw=raw, parent_id=parent.id, lineage="rerolled"
        )

    async def edit(
        self, job_id: str, *, prompt: str, negative_prompt: str, interaction: discord.Interaction[Any]
    ) -> Job:
        """The `Edit` form: the same request and seed with the member's new wording."""
        parent = await self.bot.store.get_job(job_id)
        if parent is None:
            raise InvalidRequest("The original request is gone, so it cannot be edited.")
        raw = {k: v for k, v in parent.params.items() if k not in ("kind", "prompt", "negative_prompt")}
        raw.update(prompt=prompt, negative_prompt=negative_prompt or None)
        await self._own_input(raw)
        job = self.build_job(interaction, kind=parent.kind, raw=raw)
        job.parent_id, job.lineage = parent.id, "edited"
        job.notes.append(f"An edit of `{short_id(parent.id)}` with the same seed.")
        return await self.submit(interaction, job)

    async def _own_input(self, raw: dict[str, Any]) -> None:
        """A job made from another gets its own copy of the input picture: forgetting either job's
        files never takes the other's first frame."""
        if raw.get("image"):
            settings = self.bot.settings
            raw["image"] = await asyncio.to_thread(
                keep_result_as_input, settings.results_dir, raw["image"], settings.input_limits
            )

    async def post_image(self, job_id: str, n: int, *, interaction: discord.Interaction[Any]) -> None:
        """`Un`: image n of a grid alone, from the file kept beside the grid: no GPU work."""
        job = await self.bot.store.get_job(job_id)
        if job is None or not job.result_path or n > job.units:
            raise InvalidRequest("That result is gone, so its images cannot be posted again.")
        try:
            data = await asyncio.to_thread(part_path(Path(job.result_path), job.id, n).read_bytes)
        except OSError:
            raise InvalidRequest(f"Image {n} of that result is no longer kept.") from None
        channel = self.bot.get_partial_messageable(int(interaction.channel_id or job.channel_id or 0))
        await self.bot.delivery.post_image(channel, job, n, data, user_id=str(interaction.user.id))
        await interaction.followup.send(f"Posted image {n}.", ephemeral=True, allowed_mentions=NONE)

    async def _picture_as_input(self, job_id: str, n: int, *, use: str) -> tuple[Job, str]:
        """Image n of a result and its copy in the inputs folder, where a new job can keep it even if
        the result is deleted; `use` ("animated", "upscaled") names the refusal when it is gone."""
        parent = await self.bot.store.get_job(job_id)
        if parent is None:
            raise InvalidRequest(f"That picture is gone, so it cannot be {use}.")
        settings = self.bot.settings
        image = await asyncio.to_thread(
            keep_result_picture, settings.results_dir, parent, n, settings.input_limits, use=use
        )
        return parent, image

    async def animate(self, job_id: str, n: int, *, interaction: discord.Interaction[Any]) -> Job:
        """`Animate`: an image-to-video job (`I2V_MODEL`) from image n of a result, with its prompt.

        The picture is copied into the inputs folder, so the new job keeps its first frame even
        if the original result is deleted."""
        parent, image = await self._picture_as_input(job_id, n, use="animated")
        raw = {"prompt": parent.prompt, "negative_prompt": parent.negative_prompt, "image": image}
        return await self.submit_new(
            interaction, kind="video", raw=raw, parent_id=parent.id, lineage="animated"
        )

    async def upscale(self, job_id: str, n: int, *, interaction: discord.Interaction[Any]) -> Job:
        """`Upscale`: image n of a result, copied into the inputs folder, upscaled by `UPSCALE_MODEL`."""
        parent, image = await self._picture_as_input(job_id, n, use="upscaled")
        return await self.submit_upscale(
            interaction, image=image, prompt=parent.prompt, parent_id=parent.id
        )

    async def submit_upscale(
        self, interaction: discord.Interaction[Any], *, image: str, prompt: str, parent_id: str | None = None
    ) -> Job:
        """Queue an upscale of a kept input picture at its own size (the result is the model's factor)."""
        raw = await asyncio.to_thread(upscale_params, image, prompt)
        return await self.submit_new(
            interaction, kind="upscale", raw=raw, parent_id=parent_id, lineage="upscaled"
        )

    async def vary(self, job_id: str, n: int, *, interaction: discord.Interaction[Any]) -> Job:
        """`Vn`: image-to-image from image n with a new seed, the same prompt and count."""
        parent = await self.bot.store.get_job(job_id)
        if parent is None or not parent.result_path or n > parent.units:
            raise InvalidRequest("The original result is gone, so it cannot be varied.")
        result = Path(parent.result_path)
        source = part_path(result, parent.id, n) if parent.units > 1 else result
        strength = self.bot.settings.variation_strength
        raw = {k: v for k, v in parent.params.items() if k not in ("seed", "kind", "image", "strength")}
        # enough steps that the variation repaints something (image-to-image runs steps x strength)
        raw["steps"] = max(int(raw.get("steps") or 1), math.ceil(1 / strength))
        raw.update(seed=random_seed(), strength=strength, image=str(source))
        job = self.build_job(interaction, kind="image", raw=raw)  # checks everything before a copy
        settings = self.bot.settings
        job.params["image"] = await asyncio.to_thread(
            keep_result_as_input, settings.results_dir, source, settings.input_limits
        )
        job.parent_id, job.lineage = parent.id, "varied"
        job.notes.append(f"A variation of image {n} of `{short_id(parent.id)}`.")
        return await self.submit(interaction, job)

    def may_delete(self, job: Job, interaction: discord.Interaction[Any]) -> bool:
        """The one rule for deleting a result: its requester, or an admin."""
        return job.user_id == str(interaction.user.id) or self.bot.is_admin(interaction)

    async def delete_result(self, job_id: str, *, interaction: discord.Interaction[Any]) -> None:
        job = await self.bot.store.get_job(job_id)
        if job is None:
            raise InvalidRequest("That job no longer exists.")
        if not self.may_delete(job, interaction):
            raise NotAllowed(NOT_YOURS)
        admin = self.bot.is_admin(interaction)
        if interaction.message is not None:
            await interaction.message.delete()
        if admin and job.user_id != str(interaction.user.id):
            await self.bot.audit(
                interaction, action="delete_result", target=job.user_id, details={"job": job.id}
            )
        await interaction.followup.send("Deleted.", ephemeral=True, allowed_mentions=NONE)
