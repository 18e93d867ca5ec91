"""Result files: byte ranges on a video, signed expiring links, gallery privacy, the status page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bot.core.jobs import JobState, Source
from bot.web.links import LinkExpired, LinkInvalid, LinkSigner
from tests.web.conftest import LINK_SECRET, auth, make_job, make_web_settings, write_test_mp4, write_test_png

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mp4(web_settings) -> Path:
    return write_test_mp4(Path(web_settings.results_dir) / "clip.mp4")


async def test_video_result_supports_byte_ranges(make_client, stub_queue, store, mp4) -> None:
    data = mp4.read_bytes()
    job = make_job(kind="video", result_path=mp4)
    await store.insert_job(job)
    client = await make_client(stub_queue)
    url = f"/api/v1/jobs/{job.id}/result"

    resp = await client.get(url, headers=auth("alice"))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "video/mp4"
    assert int(resp.headers["Content-Length"]) == len(data)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == data

    for start, end in ((0, 99), (100, 1123), (len(data) - 10, len(data) - 1)):
        resp = await client.get(url, headers={**auth("alice"), "Range": f"bytes={start}-{end}"})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        assert int(resp.headers["Content-Length"]) == end - start + 1
        assert await resp.read() == data[start : end + 1]
    resp = await client.get(url, headers={**auth("alice"), "Range": "bytes=-16"})  # suffix range
    assert resp.status == 206 and await resp.read() == data[-16:]
    resp = await client.get(url, headers={**auth("alice"), "Range": f"bytes={len(data) + 5}-"})
    assert resp.status == 416


async def test_image_result_is_a_png(make_client, stub_queue, store, web_settings) -> None:
    png = write_test_png(Path(web_settings.results_dir) / "a.png")
    job = make_job(result_path=png)
    await store.insert_job(job)
    client = await make_client(stub_queue)
    resp = await client.get(f"/api/v1/jobs/{job.id}/result", headers=auth("alice"))
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert (await resp.read()) == png.read_bytes()
    png.unlink()
    resp = await client.get(f"/api/v1/jobs/{job.id}/result", headers=auth("alice"))
    assert resp.status == 410 and (await resp.json())["error"]["code"] == "gone"


# -- signed links --------------------------------------------------------------------------------


def test_signatures_bind_job_and_expiry(web_settings) -> None:
    signer = LinkSigner.from_settings(web_settings)
    soon = datetime.now(UTC) + timedelta(minutes=5)
    url = signer.sign("job1", soon)
    assert url.startswith("http://127.0.0.1:8080/dl/job1?")
    query = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))
    signer.verify("job1", query["e"], query["s"])
    with pytest.raises(LinkInvalid):
        signer.verify("job2", query["e"], query["s"])  # another job
    with pytest.raises(LinkInvalid):
        signer.verify("job1", str(int(query["e"]) + 3600), query["s"])  # extended expiry
    with pytest.raises(LinkInvalid):
        signer.verify("job1", query["e"], None)
    with pytest.raises(LinkExpired):
        signer.verify("job1", query["e"], query["s"], now=soon + timedelta(seconds=1))
    other = LinkSigner(secret=b"another-secret-0123456789", public_url="http://x", expiry_s=60)
    with pytest.raises(LinkInvalid):
        other.verify("job1", query["e"], query["s"])


def test_without_link_secret_signers_of_one_process_agree(tmp_path, tiny_model_cache) -> None:
    settings = make_web_settings(tmp_path, tiny_model_cache, link_secret=None)
    a, b = LinkSigner.from_settings(settings), LinkSigner.from_settings(settings)
    url = a.sign("job1")
    query = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))
    b.verify("job1", query["e"], query["s"])
    fixed = LinkSigner.from_settings(make_web_settings(tmp_path, tiny_model_cache, link_secret=LINK_SECRET))
    with pytest.raises(LinkInvalid):
        fixed.verify("job1", query["e"], query["s"])


async def test_signed_download_serves_valid_links_only(
    make_client, stub_queue, store, mp4, web_settings
) -> None:
    job = make_job(kind="video", result_path=mp4, user_id="555", source=Source.DISCORD, guild_id="1")
    await store.insert_job(job)
    client = await make_client(stub_queue)
    signer = LinkSigner.from_settings(web_settings)

    def local(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}"

    good = local(signer.sign(job.id, datetime.now(UTC) + timedelta(hours=1)))
    resp = await client.get(good, headers={"Range": "bytes=0-9"})  # no API key needed
    assert resp.status == 206 and await resp.read() == mp4.read_bytes()[:10]
    resp = await client.get(good)
    assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"

    tampered = good.replace(job.id, job.id[:-1] + ("0" if job.id[-1] != "0" else "1"))
    resp = await client.get(tampered)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "invalid_link"
    resp = await client.get(f"/dl/{job.id}")
    assert resp.status == 403
    expired = local(signer.sign(job.id, datetime.now(UTC) - timedelta(seconds=1)))
    resp = await client.get(expired)
    assert resp.status == 410 and (await resp.json())["error"]["code"] == "link_expired"


# -- gallery and status page ---------------------------------------------------------------------


async def test_status_page_shows_public_results_escaped(
    make_client, stub_queue, store, web_settings, mp4
) -> None:
    results = Path(web_settings.results_dir)
    evil = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    public_video = make_job(
        kind="video",
        result_path=mp4,
        user_id="1",
        source=Source.DISCORD,
        guild_id="pub",
        prompt=evil,
        width=64,
        height=48,
    )
    api_image = make_job(result_path=write_test_png(results / "api.png"), prompt="api picture")
    api_private = make_job(
        result_path=write_test_png(results / "api-private.png"),
        user_id="api:bob",
        prompt="a key holder secret",
    )
    private = make_job(
        result_path=write_test_png(results / "priv.png"),
        user_id="2",
        source=Source.DISCORD,
        guild_id="priv",
        prompt="private prompt",
    )
    dm = make_job(
        result_path=write_test_png(results / "dm.png"),
        user_id="3",
        source=Source.DISCORD,
        prompt="direct message prompt",
    )
    failed = make_job(state=JobState.FAILED, prompt="failed prompt")
    failed_private = make_job(state=JobState.FAILED, user_id="api:bob", prompt="a failed secret")
    for job in (public_video, api_image, api_private, private, dm, failed, failed_private):
        await store.insert_job(job)
    await store.update_guild_settings("pub", gallery_public=True)
    await store.update_guild_settings("priv", gallery_public=False)

    running = make_job(
        kind="video",
        user_id="2",
        source=Source.DISCORD,
        guild_id="priv",
        prompt="secret running prompt",
        state=JobState.IN_PROGRESS,
    )
    stub_queue.run(running, step=3, total=8)
    stub_queue.run(make_job(prompt="second gpu", state=JobState.IN_PROGRESS), step=1, total=4)
    stub_queue.queued = [make_job(state=JobState.QUEUED) for _ in range(4)]
    # the key "alice" made public by the bot's owner; "bob" not
    settings = web_settings.model_copy(update={"public_api_keys": ["alice"]})
    client = await make_client(stub_queue, settings=settings)

    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    # the one script is the page's own file from this server: no inline code, nothing from elsewhere
    assert "script-src 'self';" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "api picture" in page
    hidden_prompts = ("private prompt", "a key holder secret", "direct message prompt", "a failed secret")
    for hidden in (*hidden_prompts, "secret running prompt"):
        assert hidden not in page
    # a public key's failed job: listed with its prompt among the failed ones, never as a result
    assert "failed prompt" in re.search(r'<ul id="trouble">(.*?)</ul>', page, re.S).group(1)
    assert "failed prompt" not in re.search(r'<section id="results".*?</section>', page, re.S).group(0)
    assert re.search(r'id="queue-length"[^>]*>4<', page)
    running_list = re.search(r'<ul id="running">(.*?)</ul>', page, re.S).group(1)
    assert running_list.count("<li") == 2  # every GPU worker's job, not just one
    assert "step 3/8" in running_list and "step 1/4" in running_list
    video = re.search(r"<video[^>]*>", page).group(0)
    for attr in (
        "controls",
        'preload="metadata"',
        f'poster="/gallery/{public_video.id}/poster"',
        f'src="/gallery/{public_video.id}"',
        'width="64"',
        'height="48"',
    ):
        assert attr in video

    assert (await client.get(f"/gallery/{public_video.id}")).status == 200
    assert (await client.get(f"/gallery/{api_image.id}")).status == 200
    for job in (private, api_private, dm, failed, failed_private, running):
        resp = await client.get(f"/gallery/{job.id}")
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    poster = await client.get(f"/gallery/{public_video.id}/poster")
    assert poster.status == 200 and poster.headers["Content-Type"] == "image/jpeg"
    assert (await poster.read())[:2] == b"\xff\xd8"

    await store.update_guild_settings("pub", gallery_public=False)  # takes effect at once
    assert (await client.get(f"/gallery/{public_video.id}")).status == 404
    assert evil not in await (await client.get("/")).text()


async def test_poster_from_the_worker_is_preferred(make_client, stub_queue, store, mp4, web_settings) -> None:
    job = make_job(kind="video", result_path=mp4)
    await store.insert_job(job)
    client = await make_client(
        stub_queue, settings=web_settings.model_copy(update={"public_api_keys": ["alice"]})
    )
    poster = Path(web_settings.results_dir) / "worker-poster.jpg"
    poster.write_bytes(b"\xff\xd8\xffworker poster")

    class Result:
        poster_path = str(poster)

    for listener in stub_queue.listeners:
        await listener.on_finished(job, Result())
    resp = await client.get(f"/gallery/{job.id}/poster")
    assert resp.status == 200 and await resp.read() == b"\xff\xd8\xffworker poster"


async def test_the_gallery_shows_grids_and_what_each_result_was_made_from(
    make_client, stub_queue, store, web_settings
) -> None:
    results = Path(web_settings.results_dir)

    def public(name: str, prompt: str):
        return make_job(
            result_path=write_test_png(results / f"{name}.png"),
            user_id="1",
            source=Source.DISCORD,
            guild_id="pub",
            prompt=prompt,
        )

    grid = public("grid", "four foxes")
    grid.params["count"] = 4
    private = make_job(
        result_path=write_test_png(results / "secret.png"),
        user_id="2",
        source=Source.DISCORD,
        guild_id="priv",
        prompt="private original",
    )
    varied = public("varied", "a varied fox")
    varied.parent_id, varied.lineage = grid.id, "varied"
    edited = public("edited", "an edited fox")
    edited.parent_id, edited.lineage = private.id, "edited"
    for job in (grid, private, varied, edited):
        await store.insert_job(job)
    await store.update_guild_settings("pub", gallery_public=True)
    client = await make_client(stub_queue)

    page = await (await client.get("/")).text()
    blocks = {
        m.group(1): m.group(0) for m in re.finditer(r'<figure data-job="([0-9a-f]+)".*?</figure>', page, re.S)
    }
    assert "grid of 4" in blocks[grid.id]
    assert "varied from" in blocks[varied.id]
    assert f'<a href="/gallery/{grid.id}">{grid.id[:8]}</a>' in blocks[varied.id]
    # a private original is named, never linked (its page would be a 404 anyway), nor its prompt shown
    assert "edited from" in blocks[edited.id] and private.id[:8] in blocks[edited.id]
    assert f"/gallery/{private.id}" not in page and "private original" not in page
