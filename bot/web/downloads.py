"""Serving result files outside the API: signed links and the public gallery.

* `/dl/{job_id}?e=…&s=…`: the Discord link fallback. Anyone holding a valid, unexpired link
  may fetch the file; a forged or altered link gets 403, an expired one 410.
* `/gallery/{job_id}` and `/gallery/{job_id}/poster`: files the status page shows, served
  only for jobs the gallery may show (see :func:`gallery_allowed`), checked on every request
  so that an admin turning a guild's gallery off takes effect at once.

Both answer with `web.FileResponse`: exact type and length, and HTTP range requests so
browsers can seek in videos.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from bot.core.jobs import Job, JobState, Source
from bot.core.store import Store
from bot.web.api import file_response, plausible_job_id
from bot.web.errors import ApiError
from bot.web.keys import POSTERS_KEY, SIGNER_KEY, STORE_KEY
from bot.web.links import DOWNLOAD_PREFIX, LinkExpired, LinkInvalid
from bot.web.media import is_video, sniff_image_type

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get(DOWNLOAD_PREFIX + "{job_id}", signed_download, name="download")
    app.router.add_get("/gallery/{job_id}", gallery_file, name="gallery_file")
    app.router.add_get("/gallery/{job_id}/poster", gallery_poster, name="gallery_poster")


async def gallery_allowed(store: Store, job: Job, cache: dict[str, bool] | None = None) -> bool:
    """A complete job from the REST API, or from a guild whose admins made the gallery public.

    `cache` (guild id -> public) saves repeated guild lookups while rendering one page.
    """
    if job.state is not JobState.COMPLETE or not job.result_path:
        return False
    return await shown_publicly(store, job, cache)


async def shown_publicly(store: Store, job: Job, cache: dict[str, bool] | None = None) -> bool:
    """Whether the job's prompt and result may appear on the public status page."""
    if job.source is Source.API:
        return True
    if job.guild_id is None:  # direct messages stay private
        return False
    if cache is not None and job.guild_id in cache:
        return cache[job.guild_id]
    public = bool((await store.get_guild_settings(job.guild_id)).gallery_public)
    if cache is not None:
        cache[job.guild_id] = public
    return public


async def _result_file(job: Job | None) -> Path:
    if job is None or job.state is not JobState.COMPLETE or not job.result_path:
        raise ApiError(404, "not_found", "No such result.")
    path = Path(job.result_path)
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(410, "gone", "This result is no longer kept.")
    return path


async def signed_download(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    try:
        request.app[SIGNER_KEY].verify(job_id, request.query.get("e"), request.query.get("s"))
    except LinkExpired:
        raise ApiError(410, "link_expired", "This download link has expired.") from None
    except LinkInvalid:
        raise ApiError(403, "invalid_link", "This download link is not valid.") from None
    job = await request.app[STORE_KEY].get_job(job_id)
    path = await _result_file(job)
    return file_response(path, filename=f"{job_id}{path.suffix}")


async def _gallery_job(request: web.Request) -> Job:
    store = request.app[STORE_KEY]
    job_id = request.match_info["job_id"]
    job = await store.get_job(job_id) if plausible_job_id(job_id) else None
    if job is None or not await gallery_allowed(store, job):
        raise ApiError(404, "not_found", "No such result in the gallery.")
    return job


async def gallery_file(request: web.Request) -> web.StreamResponse:
    job = await _gallery_job(request)
    path = await _result_file(job)
    return file_response(path, filename=f"{job.id}{path.suffix}")


async def gallery_poster(request: web.Request) -> web.StreamResponse:
    job = await _gallery_job(request)
    path = await _result_file(job)
    if not is_video(path):
        return file_response(path, filename=f"{job.id}{path.suffix}")
    poster = await request.app[POSTERS_KEY].poster_for(job.id, path)
    if poster is None:
        raise ApiError(404, "not_found", "This video has no poster frame.")
    kind = await asyncio.to_thread(sniff_image_type, poster)
    suffix = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}.get(kind, poster.suffix)
    return file_response(poster, filename=f"{job.id}-poster{suffix}", content_type=kind)
