"""Serving result files outside the API: signed links and the public gallery.

* `/dl/{job_id}?e=…&s=…`: the Discord link fallback. Anyone holding a valid, unexpired link
  may fetch the file; a forged or altered link gets 403, an expired one 410.
* `/gallery/{job_id}` and `/gallery/{job_id}/poster`: files the status page shows, served
  only for jobs the gallery may show (see :class:`Publicity`), checked on every request
  so that an admin turning a guild's gallery off takes effect at once.

Both answer with `web.FileResponse`: exact type and length, and HTTP range requests so
browsers can seek in videos.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path

from aiohttp import web

from bot.core.jobs import Job, JobState, Source
from bot.core.store import Store
from bot.web.api import file_response, plausible_job_id
from bot.web.errors import ApiError
from bot.web.keys import POSTERS_KEY, SETTINGS_KEY, SIGNER_KEY, STORE_KEY
from bot.web.links import DOWNLOAD_PREFIX, LinkExpired, LinkInvalid
from bot.web.media import is_video, sniff_image_type

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get(DOWNLOAD_PREFIX + "{job_id}", signed_download, name="download")
    app.router.add_get("/gallery/{job_id}", gallery_file, name="gallery_file")
    app.router.add_get("/gallery/{job_id}/poster", gallery_poster, name="gallery_poster")


API_USER_PREFIX = "api:"


class Publicity:
    """Whose prompts and results the public status page may show: a guild's once its admins turned
    its gallery on (`/admin gallery`), a REST API key's once the bot's owner listed it in
    `PUBLIC_API_KEYS`; nobody else's (direct messages never).

    Guild settings are read from the store on every check, so an admin turning a gallery off takes
    effect at once; one instance per request caches them for that request only.
    """

    def __init__(self, store: Store, *, public_api_keys: Collection[str]) -> None:
        self._store = store
        self._keys = frozenset(public_api_keys)
        self._guilds: dict[str, bool] = {}

    @classmethod
    def of(cls, app: web.Application) -> Publicity:
        return cls(app[STORE_KEY], public_api_keys=app[SETTINGS_KEY].public_api_keys)

    async def shown(self, job: Job) -> bool:
        """Whether the job's prompt (and, once complete, its result) may appear publicly."""
        if job.source is Source.API:
            return job.user_id.removeprefix(API_USER_PREFIX) in self._keys
        if job.guild_id is None:
            return False
        if job.guild_id not in self._guilds:
            settings = await self._store.get_guild_settings(job.guild_id)
            self._guilds[job.guild_id] = bool(settings.gallery_public)
        return self._guilds[job.guild_id]

    async def in_gallery(self, job: Job) -> bool:
        """A complete job with a file, whose owner agreed to show it."""
        if job.state is not JobState.COMPLETE or not job.result_path:
            return False
        return await self.shown(job)


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
    if job is None or not await Publicity.of(request.app).in_gallery(job):
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
