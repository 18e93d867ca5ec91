"""How jobs read in Discord: status lines, progress bars, result embeds.

Pure functions of a job (no I/O), so every message the bot shows can be tested as text.
User text (prompts, names) is escaped so that it can neither ping nor break the markdown.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import discord

from bot.core.jobs import Job, JobState

log = logging.getLogger(__name__)

BAR_WIDTH = 12
EMBED_COLOUR = discord.Colour.blurple()
KIND_LABEL = {"image": "🎨 Image", "video": "🎬 Video"}


def safe_text(text: str, limit: int) -> str:
    """Escape markdown and mentions, then cut to `limit` characters with an ellipsis."""
    escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min 5 s`, `1 h 2 min`: short and honest, no false precision."""
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def progress_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    total = max(total, 1)
    filled = min(width, max(0, round(width * step / total)))
    return "▰" * filled + "▱" * (width - filled)


def incident_id() -> str:
    """A short random id that a member can quote and an admin can grep the log for."""
    return uuid.uuid4().hex[:8]


def short_id(job_id: str) -> str:
    return job_id[:8]


def headline(job: Job) -> str:
    return f"{KIND_LABEL.get(job.kind, job.kind)} for <@{job.user_id}> · `{short_id(job.id)}`"


def queued_status(job: Job, *, position: int | None, eta_s: float | None) -> str:
    where = "next in line" if position == 1 else f"position **{position}**" if position else "queued"
    return f"{headline(job)}\n⏳ Queued: {where} · ETA {duration(eta_s)}\n> {safe_text(job.prompt, 300)}"


def progress_status(job: Job, *, step: int, total: int, elapsed_s: float) -> str:
    return (
        f"{headline(job)}\n⚙️ `{progress_bar(step, total)}` step {step}/{total} · {duration(elapsed_s)}"
        f"\n> {safe_text(job.prompt, 300)}"
    )


def final_status(job: Job) -> str:
    """The status line once a job is over and will not produce a file in this message."""
    if job.state is JobState.CANCELLED:
        what = "🚫 Cancelled."
    elif job.state is JobState.FAILED:
        what = f"❌ Failed: {safe_text(job.error or 'unknown error', 300)}"
    else:
        what = "✅ Done."
    return f"{headline(job)}\n{what}\n> {safe_text(job.prompt, 300)}"


def message_link(job: Job) -> str | None:
    """Where a delivered result sits in Discord (a jump link), if it was posted in a server."""
    if not (job.guild_id and job.channel_id and job.result_message_id):
        return None
    return f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.result_message_id}"


def lineage_text(job: Job, parent: Job | None) -> str | None:
    """ "varied from `1a2b3c4d`", the id a jump link to the parent's message where there is one."""
    if not job.parent_id:
        return None
    ref = f"`{short_id(job.parent_id)}`"
    link = message_link(parent) if parent is not None else None
    return f"{job.lineage or 'made'} from {f'[{ref}]({link})' if link else ref}"


def grid_text(job: Job) -> str | None:
    count = int((job.params or {}).get("count") or 1)
    return f"grid of {count}" if job.kind == "image" and count > 1 else None


def image_seeds(job: Job) -> list[int]:
    """Each image's seed: consecutive from the request's seed (see `ImageRequest.seeds`)."""
    seed = int(job.seed if job.seed is not None else job.params.get("seed") or 0)
    return [(seed + i) % 2**32 for i in range(job.units)]


def parameter_fields(job: Job, *, image: int | None = None) -> list[tuple[str, str]]:
    """`image`: the fields of image n of a grid alone (its own seed)."""
    p: dict[str, Any] = job.params
    seeds = image_seeds(job)
    if image is not None:
        seed_field = ("Seed", str(seeds[image - 1]))
    elif len(seeds) > 1:
        seed_field = ("Seeds", ", ".join(str(s) for s in seeds))
    else:
        seed_field = ("Seed", str(job.seed if job.seed is not None else p.get("seed")))
    fields = [
        ("Model", job.model),
        seed_field,
        ("Steps", str(p.get("steps"))),
        ("Guidance", str(p.get("guidance"))),
        ("Size", f"{p.get('width')}×{p.get('height')}"),
    ]
    if job.kind == "video":
        fields.append(("Frames", f"{p.get('frames')} @ {p.get('fps')} fps"))
    if job.gpu_seconds is not None:
        fields.append(("GPU time", f"{job.gpu_seconds:.1f} s"))
    batch = int(job.timings.get("batch_size", 1))
    if batch > 1:
        fields.append(
            ("Batched", f"with {batch - 1} other request{'s' if batch > 2 else ''} (GPU time shared)")
        )
    if image is not None:
        fields.append(("Image", f"{image} of {len(seeds)} from `{short_id(job.id)}`"))
    elif job.parent_id:
        label = "Variation of" if p.get("image") else "Reroll of"
        if job.kind == "upscale":
            label = "Upscaled from"
        fields.append((label, f"`{short_id(job.parent_id)}`"))
    return fields


NSFW_NOTES = {
    "blackout": "The safety checker flagged this picture, so it is blacked out (this server's policy).",
    "spoiler": "The safety checker flagged this picture: it is behind a spoiler (this server allows "
    "that in age-restricted channels).",
    "refuse": "The safety checker flagged this picture, and this server does not post flagged pictures. "
    "It was not counted against your quota: **Reroll** tries another seed for free.",
}


def nsfw_note(job: Job) -> str | None:
    """What the member is told when the safety checker flagged their picture, by the server's policy."""
    if not job.nsfw_detected:
        return None
    return NSFW_NOTES.get(job.nsfw_action, NSFW_NOTES["blackout"])


def result_embed(
    job: Job, *, attachment_name: str | None, link: str | None = None, image: int | None = None
) -> discord.Embed:
    """Every parameter a member needs to reproduce the result, seed included."""
    embed = discord.Embed(
        title=safe_text(job.prompt, 250),
        colour=EMBED_COLOUR,
        description=(
            f"**Negative:** {safe_text(job.negative_prompt, 1000)}" if job.negative_prompt else None
        ),
    )
    for name, value in parameter_fields(job, image=image):
        embed.add_field(name=name, value=value, inline=True)
    note = nsfw_note(job)
    if note:
        embed.add_field(name="⚠️ Safety checker", value=note, inline=False)
    if link:
        embed.add_field(
            name="Download", value=f"[{job.kind} file]({link}) (too large to attach)", inline=False
        )
    if attachment_name and attachment_name.endswith((".png", ".jpg")):
        embed.set_image(url=f"attachment://{attachment_name}")
    embed.set_footer(text=f"job {job.id} · requested by {job.user_name}")
    return embed
