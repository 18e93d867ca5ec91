"""The safety checker through the real diffusers code: a twin whose checker flags every picture.

`tiny-image-flagged` carries a real `StableDiffusionSafetyChecker` (small CLIP vision tower,
thresholds below any similarity), saved and loaded back with the pipeline like every twin.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.media import EncodeOptions
from generation.models import build_registry
from generation.params import ImageRequest, validate_request
from generation.pipelines import PipelineManager
from generation.runner import encode_output
from generation.scaleout import MediaReport
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def checked(tiny_model_cache: Path) -> Iterator[PipelineManager]:
    """A manager with SAFETY_CHECKER on (the suite's default settings have it off)."""
    manager = PipelineManager(make_tiny_settings(tiny_model_cache, safety_checker=True))
    yield manager
    manager.close()


def request_for(manager: PipelineManager, model: str) -> ImageRequest:
    values = {"prompt": "a harbour at night", "seed": 5, "steps": 2, "width": 64, "height": 64}
    request = validate_request("image", {**values, "model": model}, manager.registry[model])
    assert isinstance(request, ImageRequest)
    return request


def test_a_flagged_picture_is_blacked_out_and_kept_unfiltered_beside_it(
    checked: PipelineManager, tiny_model_cache: Path
) -> None:
    output = checked.run(request_for(checked, "tiny-image-flagged"))
    assert output.nsfw_detected
    assert output.images is not None and np.asarray(output.images[0]).max() == 0  # diffusers blacked it out
    assert output.unfiltered is not None and len(output.unfiltered) == 1
    kept = np.asarray(output.unfiltered[0])

    # the kept picture is exactly what the same request makes with the checker switched off
    unchecked = PipelineManager(make_tiny_settings(tiny_model_cache, safety_checker=False))
    try:
        plain = unchecked.run(request_for(unchecked, "tiny-image-flagged"))
    finally:
        unchecked.close()
    assert not plain.nsfw_detected and plain.unfiltered is None
    assert plain.images is not None and kept.max() > 0
    assert np.array_equal(kept, np.asarray(plain.images[0]))


def test_a_model_without_a_checker_flags_nothing_and_keeps_no_copy(checked: PipelineManager) -> None:
    output = checked.run(request_for(checked, "tiny-image"))
    assert not output.nsfw_detected and output.unfiltered is None
    assert output.images is not None and np.asarray(output.images[0]).max() > 0


def test_the_flagged_twin_is_listed_with_its_checker(tiny_model_cache: Path) -> None:
    spec = build_registry(make_tiny_settings(tiny_model_cache))["tiny-image-flagged"]
    assert spec.has_safety_checker and spec.tiny and spec.kind == "image"


def test_the_runner_encodes_a_flagged_picture_blacked_out_unless_asked_for_it_unfiltered(
    checked: PipelineManager,
) -> None:
    """The one encoder decides which picture a flagged run's file holds, for every way in."""
    output = checked.run(request_for(checked, "tiny-image-flagged"))
    blacked = encode_output(output, EncodeOptions())
    shown = encode_output(output, EncodeOptions(unfiltered=True))
    assert blacked.nsfw_detected and shown.nsfw_detected
    assert np.asarray(Image.open(io.BytesIO(blacked.data))).max() == 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.data))), np.asarray(output.unfiltered[0]))
    # the verdict crosses Redis with the file (arq's result) and comes back whole
    report = MediaReport.from_dict(MediaReport.describing(shown, data=shown.data).to_dict())
    assert report.encoded().nsfw_detected and report.encoded().data == shown.data
