"""Several images in one pipeline call: each keeps its own seed, the grid holds them all."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from generation.errors import InvalidRequest
from generation.media import GRID_PADDING, EncodeOptions, read_png_metadata
from generation.params import ImageRequest, request_from_dict, validate_request
from generation.runner import encode_output
from tests.generation.test_pipelines import image_request

log = logging.getLogger(__name__)


def test_a_batch_of_four_gives_each_seed_its_own_image(pipeline_manager, tiny_registry):
    batch = image_request(tiny_registry, seed=7, count=4)
    assert batch.seeds == (7, 8, 9, 10)
    output = pipeline_manager.run(batch)
    assert output.images is not None and len(output.images) == 4
    alone = pipeline_manager.run(image_request(tiny_registry, seed=9)).images
    assert alone is not None
    # image 3 of the batch is the seed-9 image made on its own, up to batched-matmul noise
    diff = np.abs(np.asarray(output.images[2], dtype=int) - np.asarray(alone[0], dtype=int))
    assert diff.mean() < 2
    first, second = (np.asarray(image, dtype=int) for image in output.images[:2])
    assert np.abs(first - second).mean() > 1

    encoded = encode_output(output, EncodeOptions(png_metadata={"prompt": batch.prompt}))
    grid = Image.open(io.BytesIO(encoded.data))
    assert grid.size == (2 * 64 + GRID_PADDING, 2 * 64 + GRID_PADDING)
    assert (encoded.width, encoded.height) == grid.size
    assert read_png_metadata(encoded.data)["seeds"] == "7,8,9,10"
    assert len(encoded.parts) == 4
    third = Image.open(io.BytesIO(encoded.parts[2]))
    assert third.size == (64, 64)
    assert read_png_metadata(encoded.parts[2])["seed"] == "9"
    np.testing.assert_array_equal(np.asarray(third.convert("RGB")), np.asarray(output.images[2]))


def test_two_images_make_a_one_by_two_grid(pipeline_manager, tiny_registry):
    output = pipeline_manager.run(image_request(tiny_registry, count=2, width=64, height=48))
    encoded = encode_output(output)
    assert (encoded.width, encoded.height) == (2 * 64 + GRID_PADDING, 48)
    assert len(encoded.parts) == 2


@pytest.mark.parametrize("count", [0, 5, 9, "many"])
def test_count_out_of_range_is_refused(tiny_registry, count):
    with pytest.raises(InvalidRequest, match="count"):
        image_request(tiny_registry, count=count)


def test_a_stored_request_without_count_means_one(tiny_registry):
    request = image_request(tiny_registry, count=3)
    data = request.to_dict()
    assert data["count"] == 3
    assert request_from_dict(data) == request
    del data["count"]
    restored = request_from_dict(data)
    assert isinstance(restored, ImageRequest) and restored.count == 1


def test_video_requests_take_no_count(tiny_registry):
    with pytest.raises(InvalidRequest, match="count"):
        validate_request("video", {"prompt": "x", "count": 2, "frames": 8}, tiny_registry["tiny-video"])


def test_image_to_image_starts_from_the_picture_on_the_same_weights(
    pipeline_manager, tiny_registry, tmp_path
):
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    path = tmp_path / "start.png"
    start.save(path)
    seen: list[int] = []
    request = image_request(tiny_registry, image=str(path), strength=0.5, steps=4, count=2)
    assert request.denoise_steps == 2
    output = pipeline_manager.run(request, on_step=lambda info: seen.append(info.total))
    assert output.images is not None and len(output.images) == 2
    assert output.images[0].size == (64, 64)
    assert seen and set(seen) == {2}
    resident = pipeline_manager._resident["tiny-image"]
    variant, _ = resident.img2img
    assert type(variant).__name__ == "StableDiffusionImg2ImgPipeline"
    assert variant.unet is resident.pipe.unet  # the same weights, no copy
    # the picture matters: another picture under the same seed gives another image
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), (20, 40, 220)).save(other)
    red, blue = (
        np.asarray(
            pipeline_manager.run(image_request(tiny_registry, image=str(p), steps=4)).images[0], dtype=int
        )
        for p in (path, other)
    )
    assert np.abs(red - blue).mean() > 1


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"strength": 2}, "strength"),
        ({"image": 3}, "image"),
    ],
)
def test_bad_image_inputs_are_refused(tiny_registry, tmp_path, raw, words):
    with pytest.raises(InvalidRequest, match=words):
        image_request(tiny_registry, **{"image": str(tmp_path / "x.png"), **raw})


@pytest.mark.parametrize(
    ("strength", "steps", "lightest"), [(0.1, 4, 0.25), (0.0, 49, 1 / 49), (0.3, 1, 1.0)]
)
def test_a_strength_too_light_to_run_a_step_is_raised_with_a_note(
    tiny_registry, tmp_path, strength, steps, lightest
):
    request = image_request(tiny_registry, image=str(tmp_path / "x.png"), strength=strength, steps=steps)
    assert request.strength == pytest.approx(lightest)
    assert int(request.steps * request.strength) == 1  # exactly one step repaints the picture
    assert any("repaints nothing" in note for note in request.notes)


def test_a_file_that_is_no_picture_fails_politely(pipeline_manager, tiny_registry, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(InvalidRequest, match="could not be read as a picture"):
        pipeline_manager.run(image_request(tiny_registry, image=str(path)))
