"""Getting results into the channel, whatever happens in between.

A queue listener: it edits the job's status message as the job moves (at most every
`PROGRESS_EDIT_INTERVAL_S`, the queue throttles), and posts the result as a normal channel
message with the bot token, so a job that waited 40 minutes is delivered even though the
interaction token died after 15. A file over the channel's upload limit is re-encoded to
fit (off the event loop); if it still cannot fit, the message carries a signed link to
our web server and a poster image.

While a job runs, its status message shows the latest latent preview (for a video, the middle
frame), attached on the same throttled edits as the progress text: members see the picture
take shape and can cancel a bad one early. The result, posted as its own message, replaces it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.core import metrics
from bot.core.jobs import Job, JobState
from bot.core.moderation import NSFW_SPOILER, refused_as_nsfw
from bot.discord_ui.formatting import final_status, progress_status, result_embed
from bot.discord_ui.views import result_view
from generation import media

if TYPE_CHECKING:
    from bot.core.results import JobResult
    from bot.discord_ui.client import ImagineBot

log = logging.getLogger(__name__)

NONE = discord.AllowedMentions.none()
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
#: how far back in the channel a result offered again after a restart is looked for
REDELIVERY_SCAN = 50
#: Discord's longest string nonce
NONCE_CHARS = 25
#: aim this far under the limit, so a file that "just fits" is not refused for rounding
UPLOAD_MARGIN = 0.99


def _mention_only(user_id: str) -> discord.AllowedMentions:
    """The result pings its requester and nobody else, whatever the prompt says."""
    return discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=[discord.Object(int(user_id))]
    )


def result_nonce(job_id: str) -> str:
    """The same for every attempt to post one job's result, in any process.

    discord.py sends a nonce with `enforce_nonce`, so Discord answers a repeat from the same bot
    in the same channel within a few minutes with the message it already created: a result
    posted just before a crash (or whose answer was lost) is not posted twice.
    """
    return "r" + job_id[: NONCE_CHARS - 1]


def may_read_history(job: Job) -> bool:
    """Whether the bot could read the channel's history when the job was asked (Discord said so)."""
    if job.bot_permissions is None:
        return False
    perms = discord.Permissions(job.bot_permissions)
    return perms.view_channel and perms.read_message_history


def _too_large(exc: discord.HTTPException) -> bool:
    return exc.status == 413 or exc.code == 40005


class DiscordDelivery:
    """Queue listener that keeps the channel up to date and posts results exactly once."""

    def __init__(self, *, bot: ImagineBot, link_for: Callable[[Job], str] | None) -> None:
        self.bot = bot
        self._link_for = link_for
        self._status: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last_edit: dict[str, float] = {}
        #: the newest preview not shown yet (one that arrived between two allowed edits)
        self._preview: dict[str, bytes] = {}
        self._ran_here: set[str] = set()

    # -- status message ---------------------------------------------------------------------------
    async def remember_status_message(self, job: Job, message_id: int) -> None:
        """Edit `message_id` from now on; and if the job already ended, show its end now.

        A job can fail (a model that cannot load) or even finish before the command that queued
        it has its status message back from Discord: `on_finished` then had no message to edit.
        The queue records a job's end before it tells listeners, so the record returned here
        says whether that happened.
        """
        self._status[job.id] = message_id
        job.status_message_id = str(message_id)
        record = await self.bot.store.update_job(job.id, status_message_id=str(message_id))
        if record is not None and record.state.is_final:
            await self._show_early_end(record)

    async def _show_early_end(self, job: Job) -> None:
        """The final state of a job that ended before its status message was known."""
        if job.state is not JobState.COMPLETE:
            await self._edit_status(job, final_status(job), keep_view=False)
            self._status.pop(job.id, None)
        elif job.result_message_id and job.id in self._status:
            await self._drop_status(job)  # posted already: the result replaces the status message
        # else the result is being posted, and its delivery will find this message to delete

    async def _drop_status(self, job: Job) -> None:
        status = self._status_message(job)
        self._status.pop(job.id, None)  # no await in between: whoever pops it first deletes it
        if status is not None:
            try:
                await status.delete()
            except discord.HTTPException:
                log.debug("job %s: status message already gone", job.id)

    def _status_message(self, job: Job) -> discord.PartialMessage | None:
        message_id = self._status.get(job.id) or (
            int(job.status_message_id) if job.status_message_id else None
        )
        if message_id is None or job.channel_id is None:
            return None
        return self.bot.get_partial_messageable(int(job.channel_id)).get_partial_message(message_id)

    async def _edit_status(
        self, job: Job, content: str, *, keep_view: bool = True, preview: bytes | None = None
    ) -> None:
        """Edit the text; `preview` replaces the picture, and a final edit (no view) drops it."""
        message = self._status_message(job)
        if message is None:
            return
        self._last_edit[job.id] = time.monotonic()
        extra: dict[str, Any] = {}
        if not keep_view:
            extra = {"view": None, "attachments": []}
        elif preview is not None:
            extra = {"attachments": [discord.File(io.BytesIO(preview), filename=f"preview-{job.id[:8]}.png")]}
        try:
            await message.edit(content=content, allowed_mentions=NONE, **extra)
        except discord.NotFound:
            self._status.pop(job.id, None)  # deleted by a moderator: stop editing it
        except discord.HTTPException:
            log.warning("job %s: status edit failed", job.id, exc_info=True)

    # -- queue listener -----------------------------------------------------------------------------
    def _ours(self, job: Job) -> bool:
        return job.source == "discord" and job.channel_id is not None

    async def on_queued(self, job: Job) -> None:
        return None  # the command that queued it posts the status message itself

    async def on_started(self, job: Job) -> None:
        if self._ours(job):
            self._started[job.id] = time.monotonic()
            self._ran_here.add(job.id)
            total = int(job.params.get("steps") or 0)
            await self._edit_status(job, progress_status(job, step=0, total=total, elapsed_s=0))

    async def on_progress(self, job: Job, step: int, total: int, preview_png: bytes | None) -> None:
        if not self._ours(job):
            return
        if preview_png is not None:
            self._preview[job.id] = preview_png
        now = time.monotonic()
        # the queue spaces progress events, but the "started" edit counts against the same
        # message's budget: never edit one message more often than the interval
        if now - self._last_edit.get(job.id, 0.0) < self.bot.settings.progress_edit_interval_s:
            return
        elapsed = now - self._started.get(job.id, now)
        content = progress_status(job, step=step, total=total, elapsed_s=elapsed)
        await self._edit_status(job, content, preview=self._preview.pop(job.id, None))

    async def on_finished(self, job: Job, result: JobResult | None) -> None:
        if not self._ours(job):
            return
        self._started.pop(job.id, None)
        self._last_edit.pop(job.id, None)
        self._preview.pop(job.id, None)
        ran_here = job.id in self._ran_here
        self._ran_here.discard(job.id)
        if job.state is JobState.COMPLETE and result is not None:
            if job.result_message_id:
                return  # already delivered before a restart: never post twice
            try:
                # a job that ran in this process was never posted before; one offered again
                # after a restart may have been, just before a crash
                if not ran_here and await self._adopt_posted(job):
                    return
                await self._deliver(job, result)
            except discord.HTTPException:
                # channel gone or no permission: the file stays on the web server; the
                # job stays undelivered, so a restart offers it once more
                log.exception("job %s: delivery to channel %s failed", job.id, job.channel_id)
        else:
            await self._edit_status(job, final_status(job), keep_view=False)
            self._status.pop(job.id, None)

    async def _adopt_posted(self, job: Job) -> bool:
        """Find a result posted just before a crash (between the upload and `mark_delivered`).

        Within a few minutes the result's nonce makes Discord hand back that message instead of
        posting another; this covers longer outages, where the bot may read the channel's
        history. Where it may not, the result is posted: a rare duplicate beats a lost result.
        """
        if not may_read_history(job):
            return False
        channel = self.bot.get_partial_messageable(int(job.channel_id or 0))
        me = self.bot.user.id if self.bot.user else None
        footer = f"job {job.id}"
        try:
            async for message in channel.history(limit=REDELIVERY_SCAN):
                mine = message.author.id == me
                if mine and any((e.footer.text or "").startswith(footer) for e in message.embeds):
                    log.info("job %s: already posted as %s; not posting it again", job.id, message.id)
                    await self.bot.queue.mark_delivered(job.id, str(message.id))
                    return True
        except discord.Forbidden:
            log.info("job %s: may no longer read channel %s's history; posting", job.id, job.channel_id)
        return False

    # -- delivery ----------------------------------------------------------------------------------
    async def _deliver(self, job: Job, result: JobResult) -> None:
        channel = self.bot.get_partial_messageable(int(job.channel_id or 0))
        if refused_as_nsfw(job, result):
            message = await self._post_refusal(channel, job)
        else:
            message = await self._post_result(channel, job, result)
        await self.bot.queue.mark_delivered(job.id, str(message.id))
        job.result_message_id = str(message.id)
        await self._drop_status(job)

    async def _post_result(self, channel: Any, job: Job, result: JobResult) -> Any:
        """The file attached, re-encoded to fit, or as a signed link when nothing fits."""
        limit = int((job.upload_limit_bytes or DEFAULT_UPLOAD_LIMIT) * UPLOAD_MARGIN)
        path = Path(result.path)
        name = f"{job.kind}-{job.id[:8]}{path.suffix}"
        data: bytes | None = await asyncio.to_thread(path.read_bytes)
        if data is not None and len(data) > limit:
            data = await self._fit(job, path, limit)
        if data is not None:
            try:
                return await self._post(channel, job, data=data, name=name)
            except discord.HTTPException as exc:
                if not _too_large(exc):
                    raise
                log.info("job %s: upload refused as too large (%s); falling back to a link", job.id, exc.code)
        return await self._post_link(channel, job, result, limit=limit)

    async def _post_refusal(self, channel: Any, job: Job) -> Any:
        """The server refuses flagged pictures: say so where the result would have been, with the
        parameters and a Reroll button (the refused run was not charged)."""
        log.info("job %s: flagged by the safety checker; refused under the server's policy", job.id)
        return await channel.send(
            content=f"<@{job.user_id}>",
            embed=result_embed(job, attachment_name=None),  # its note says what happened
            view=result_view(job.id, count=job.units, kind=job.kind),
            allowed_mentions=_mention_only(job.user_id),
            nonce=result_nonce(job.id),
        )

    async def _fit(self, job: Job, path: Path, limit: int) -> bytes | None:
        """A smaller re-encode of a video that fits `limit`, or None (then a link is posted)."""
        if job.kind != "video":
            return None  # PNGs don't shrink much without visible loss: link instead
        try:
            fitted = await asyncio.to_thread(media.fit_file_to_size, path, max_bytes=limit)
        except (media.DoesNotFit, media.EncodeError) as exc:
            log.info("job %s: cannot fit under %d bytes (%s); posting a link", job.id, limit, exc)
            return None
        metrics.DELIVERY_FALLBACKS.labels(kind="reencode").inc()
        log.info(
            "job %s: re-encoded to %d bytes (crf %d, scale %.2f)",
            job.id,
            fitted.size,
            fitted.crf,
            fitted.scale,
        )
        return fitted.data

    async def _post(self, channel: Any, job: Job, *, data: bytes, name: str, link: str | None = None) -> Any:
        # a flagged picture the server shows behind a spoiler must not show in the embed too
        spoiler = job.spoiler or (job.nsfw_detected and job.nsfw_action == NSFW_SPOILER)
        file = discord.File(io.BytesIO(data), filename=name, spoiler=spoiler)
        return await channel.send(
            content=f"<@{job.user_id}>",
            embed=result_embed(job, attachment_name=None if spoiler else name, link=link),
            file=file,
            view=result_view(job.id, count=job.units, kind=job.kind),
            allowed_mentions=_mention_only(job.user_id),
            nonce=result_nonce(job.id),
        )

    async def post_image(self, channel: Any, job: Job, n: int, data: bytes, *, user_id: str) -> Any:
        """Image `n` of a grid alone, at full size, with the single-image buttons (`Un`)."""
        name = f"image-{job.id[:8]}-{n}.png"
        return await channel.send(
            content=f"<@{user_id}>",
            embed=result_embed(job, attachment_name=name, image=n),
            file=discord.File(io.BytesIO(data), filename=name),
            view=result_view(job.id, image=n),
            allowed_mentions=_mention_only(user_id),
        )

    async def _post_link(self, channel: Any, job: Job, result: JobResult, *, limit: int) -> Any:
        if self._link_for is None:
            raise RuntimeError("the file is too large to attach and no web server is configured for links")
        metrics.DELIVERY_FALLBACKS.labels(kind="link").inc()
        link = self._link_for(job)
        poster = result.poster_path
        poster_bytes = await asyncio.to_thread(Path(poster).read_bytes) if poster else b""
        if poster and 0 < len(poster_bytes) <= limit:
            name = f"poster-{job.id[:8]}{Path(poster).suffix}"
            return await self._post(channel, job, data=poster_bytes, name=name, link=link)
        return await channel.send(
            content=f"<@{job.user_id}>",
            embed=result_embed(job, attachment_name=None, link=link),
            view=result_view(job.id, count=job.units, kind=job.kind),
            allowed_mentions=_mention_only(job.user_id),
            nonce=result_nonce(job.id),
        )
