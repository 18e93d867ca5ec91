"""The status page in a real browser: Debian's headless Chromium, driven over DevTools.

A tiny-video result made by the real pipeline and encoder is served from 127.0.0.1; the
page's gallery must show it, and each `<video>` must load (readyState >= 2), report the
right videoWidth and a positive duration, seek (byte ranges), and raise no media error.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot.core.jobs import JobState
from bot.web import create_web_app, serve
from generation.media import encode_mp4, have_ffprobe
from generation.media_probe import probe
from generation.models import build_registry
from generation.params import validate_request
from tests.web.cdp import chromium_page, find_chromium
from tests.web.conftest import make_job, write_test_png

pytestmark = [pytest.mark.timeout(120)]

CHROMIUM = find_chromium()

# Waits for metadata, seeks to the middle (which needs byte ranges), waits until a frame
# is decoded, and reports what the element saw.
CHECK_MEDIA_JS = """
(async () => {
  const report = v => ({
    src: v.currentSrc, readyState: v.readyState, videoWidth: v.videoWidth, videoHeight: v.videoHeight,
    duration: v.duration, error: v.error ? `${v.error.code}: ${v.error.message}` : null,
    poster: v.poster, seekedTo: v.currentTime,
  });
  const once = (v, names) => new Promise(resolve => {
    for (const n of names) v.addEventListener(n, () => resolve(n), {once: true});
  });
  const check = async v => {
    if (v.readyState < 1 && !v.error) await once(v, ['loadedmetadata', 'error']);
    if (v.error) return report(v);
    const seeked = once(v, ['seeked', 'error']);
    v.currentTime = v.duration / 2;
    await seeked;
    if (v.readyState < 2 && !v.error) await once(v, ['loadeddata', 'canplay', 'error']);
    return report(v);
  };
  const videos = [...document.querySelectorAll('#gallery video')];
  const images = [...document.querySelectorAll('#gallery img')];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return JSON.stringify({
    h264: document.createElement('video').canPlayType('video/mp4; codecs="avc1.640028"') !== '',
    videos: await Promise.all(videos.map(check)),
    images: images.map(i => ({src: i.currentSrc, naturalWidth: i.naturalWidth})),
  });
})()
"""


def _ffprobe_ok(path: Path) -> dict[str, Any]:
    info = probe(path)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    return info


@pytest.fixture
def tiny_video_result(pipeline_manager, tiny_registry, web_settings) -> tuple[Path, int, int, int, int]:
    """A real tiny-video generation, encoded by the project's encoder: (path, w, h, frames, fps)."""
    spec = tiny_registry["tiny-video"]
    request = validate_request(
        "video",
        {"prompt": "a paper boat", "width": 64, "height": 48, "frames": 16, "fps": 8, "steps": 2, "seed": 3},
        spec,
        web_settings,
    )
    output = pipeline_manager.run(request)
    assert output.frames is not None and len(output.frames) == 16
    path = Path(web_settings.results_dir) / "boat.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(output.frames, fps=8))
    return path, 64, 48, 16, 8


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
async def test_gallery_videos_play_in_headless_chromium(
    tmp_path, web_settings, store, stub_queue, tiny_video_result
) -> None:
    path, width, height, frames, fps = tiny_video_result
    info = _ffprobe_ok(path) if have_ffprobe() else None
    video_job = make_job(kind="video", result_path=path, prompt="a paper boat", width=width, height=height)
    image_job = make_job(
        result_path=write_test_png(Path(web_settings.results_dir) / "still.png", width=64, height=64)
    )
    assert video_job.state is JobState.COMPLETE
    await store.insert_job(image_job)
    await store.insert_job(video_job)

    settings = web_settings.model_copy(update={"public_api_keys": ["alice"]})  # the jobs' API key
    app = create_web_app(settings=settings, store=store, queue=stub_queue, registry=build_registry(settings))
    async with serve(app, host="127.0.0.1", port=0) as runner:
        host, port = runner.addresses[0][:2]
        async with chromium_page(CHROMIUM, tmp_path / "chromium-profile") as page:
            await page.navigate(f"http://{host}:{port}/")
            raw = await page.evaluate(CHECK_MEDIA_JS, timeout_s=60)
    seen = json.loads(raw)

    assert len(seen["videos"]) == 1 and len(seen["images"]) == 1
    assert seen["images"][0]["naturalWidth"] == 64
    video = seen["videos"][0]
    if not seen["h264"]:
        # Only a browser without H.264 is excused, never a file it cannot play; ffprobe checked it.
        assert info is not None, "no ffprobe either: cannot check the video at all"
        pytest.skip(f"this Chromium cannot decode H.264 (canPlayType is empty); ffprobe: {info}")
    assert video["error"] is None, video
    assert video["readyState"] >= 2, video
    assert video["videoWidth"] == width and video["videoHeight"] == height, video
    assert video["duration"] == pytest.approx(frames / fps, abs=0.2), video
    assert video["seekedTo"] > 0, video
    assert video["src"].endswith(f"/gallery/{video_job.id}")
    assert video["poster"].endswith(f"/gallery/{video_job.id}/poster")
    await asyncio.sleep(0)
