"""Request validation: every bad parameter gets our error, naming it and what is allowed."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.errors import InvalidRequest, UserError
from generation.models import ModelSpec
from generation.params import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    ImageRequest,
    VideoRequest,
    request_from_dict,
    validate_request,
)
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)


@pytest.fixture
def image_spec(tiny_registry: dict[str, ModelSpec]) -> ModelSpec:
    return tiny_registry["tiny-image"]


@pytest.fixture
def video_spec(tiny_registry: dict[str, ModelSpec]) -> ModelSpec:
    return tiny_registry["tiny-video"]


def test_defaults_come_from_the_spec(image_spec):
    request = validate_request("image", {"prompt": "a cat"}, image_spec)
    assert isinstance(request, ImageRequest)
    assert (request.width, request.height) == (image_spec.default_width, image_spec.default_height)
    assert request.steps == image_spec.default_steps
    assert request.guidance == image_spec.default_guidance
    assert request.negative_prompt is None
    assert request.model == "tiny-image" and request.kind == "image"


def test_missing_seed_is_drawn_and_recorded(image_spec):
    seeds = {validate_request("image", {"prompt": "a cat"}, image_spec).seed for _ in range(20)}
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1, "seeds are random when absent"
    request = validate_request("image", {"prompt": "a cat", "seed": None}, image_spec)
    assert request_from_dict(request.to_dict()).seed == request.seed


def test_prompt_is_trimmed_and_control_characters_go(image_spec):
    request = validate_request(
        "image", {"prompt": "  a\x00 red\x1b[31m\tfox\r\n ", "negative_prompt": " \x07 "}, image_spec
    )
    assert request.prompt == "a red[31m fox"
    assert request.negative_prompt is None, "a negative prompt of only control characters is no prompt"


def test_video_round_trips_through_dict(video_spec):
    request = validate_request(
        "video", {"prompt": "rain", "seed": 3, "frames": "24", "fps": 12, "guidance": "8.5"}, video_spec
    )
    assert isinstance(request, VideoRequest)
    assert (request.frames, request.fps, request.guidance) == (24, 12, 8.5)
    assert request.duration_s == 2.0
    data = request.to_dict()
    assert data["kind"] == "video"
    assert request_from_dict(data) == request
    assert VideoRequest.from_dict(data) == request


def test_aliases_are_accepted(video_spec):
    request = validate_request(
        "video",
        {"prompt": "rain", "num_frames": 8, "guidance_scale": 3, "num_inference_steps": 4},
        video_spec,
    )
    assert (request.frames, request.guidance, request.steps) == (8, 3.0, 4)


def test_settings_cap_steps(tmp_path, image_spec):
    settings = make_tiny_settings(tmp_path, max_steps=3, default_steps=10)
    assert validate_request("image", {"prompt": "x"}, image_spec, settings).steps == 3
    with pytest.raises(InvalidRequest, match=r"steps.*1 to 3"):
        validate_request("image", {"prompt": "x", "steps": 4}, image_spec, settings)


BAD_IMAGE_PARAMS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n\t "}, "prompt"),
    ({}, "prompt"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"prompt": "ok", "negative_prompt": "y" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
    ({"prompt": "ok", "seed": -1}, "seed"),
    ({"prompt": "ok", "seed": MAX_SEED + 1}, "seed"),
    ({"prompt": "ok", "seed": "lucky"}, "seed"),
    ({"prompt": "ok", "seed": 1.5}, "seed"),
    ({"prompt": "ok", "seed": True}, "seed"),
    ({"prompt": "ok", "steps": 0}, "steps"),
    ({"prompt": "ok", "steps": 10_000}, "steps"),
    ({"prompt": "ok", "guidance": -1}, "guidance"),
    ({"prompt": "ok", "guidance": float("inf")}, "guidance"),
    ({"prompt": "ok", "guidance": "strong"}, "guidance"),
    ({"prompt": "ok", "width": 8}, "width"),
    ({"prompt": "ok", "width": 8}, "width"),
    ({"prompt": "ok", "width": 4096}, "width"),
    ({"prompt": "ok", "height": 1000}, "height"),
    ({"prompt": "ok", "height": [64]}, "height"),
    ({"prompt": "ok", "sampler": "euler"}, "sampler"),
]


@pytest.mark.parametrize(("raw", "name"), BAD_IMAGE_PARAMS)
def test_bad_image_parameter_is_named(image_spec, raw, name):
    with pytest.raises(InvalidRequest) as info:
        validate_request("image", raw, image_spec)
    assert info.value.message.startswith(name) or name in info.value.message
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize(
    ("raw", "name", "allowed"),
    [
        ({"frames": 0}, "frames", "1 to 64"),
        ({"frames": 65}, "frames", "1 to 64"),
        ({"fps": 0}, "fps", "1 to 30"),
        ({"fps": 61}, "fps", "1 to 30"),
        ({"frames": "many"}, "frames", "1 to 64"),
    ],
)
def test_bad_video_parameter_names_the_range(video_spec, raw, name, allowed):
    with pytest.raises(InvalidRequest) as info:
        validate_request("video", {"prompt": "ok", **raw}, video_spec)
    assert info.value.message.startswith(name) and allowed in info.value.message


def test_frames_and_fps_are_not_image_parameters(image_spec):
    with pytest.raises(InvalidRequest, match="frames"):
        validate_request("image", {"prompt": "ok", "frames": 16}, image_spec)


def test_kind_must_match_the_model(image_spec):
    with pytest.raises(InvalidRequest, match="makes images"):
        validate_request("video", {"prompt": "ok"}, image_spec)
    with pytest.raises(InvalidRequest, match="kind"):
        validate_request("audio", {"prompt": "ok"}, image_spec)


def test_real_model_limits_apply(tiny_registry):
    damo = tiny_registry["damo"]
    with pytest.raises(InvalidRequest, match="frames must be a whole number from 16 to 64"):
        validate_request("video", {"prompt": "ok", "frames": 8}, damo)
    request = validate_request("video", {"prompt": "ok"}, damo)
    assert (request.width, request.height, request.frames) == (256, 256, 16)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.fixed_dictionaries(
        {"prompt": st.one_of(st.text(max_size=30), st.none(), st.integers())},
        optional={
            name: st.one_of(
                st.integers(-(2**40), 2**40),
                st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=8),
                st.none(),
                st.booleans(),
            )
            for name in ("seed", "steps", "guidance", "width", "height", "frames", "fps")
        },
    )
)
def test_any_input_is_valid_or_our_error(video_spec, raw):
    """No input, however odd, escapes as anything but InvalidRequest; accepted ones are in range."""
    try:
        request = validate_request("video", raw, video_spec)
    except InvalidRequest as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert 1 <= len(request.prompt) <= MAX_PROMPT_CHARS
    assert 0 <= request.seed <= MAX_SEED
    assert video_spec.min_steps <= request.steps <= video_spec.max_steps
    assert video_spec.min_width <= request.width <= video_spec.max_width and request.width % 8 == 0
    assert video_spec.min_height <= request.height <= video_spec.max_height and request.height % 8 == 0
    assert video_spec.min_frames <= request.frames <= video_spec.max_frames
    assert video_spec.min_fps <= request.fps <= video_spec.max_fps
    assert request_from_dict(request.to_dict()) == request
