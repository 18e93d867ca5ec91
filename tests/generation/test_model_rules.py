"""Each model's own rules: frame counts (4k+1, 8k+1), size multiples, guidance, image-to-video."""

from __future__ import annotations

import logging

import pytest

from generation.errors import InvalidRequest, ModelUnavailable
from generation.models import ModelSpec, image_to_video_spec
from generation.params import VideoRequest, request_from_dict, validate_request

log = logging.getLogger(__name__)


def test_a_frame_count_off_the_rule_is_snapped_and_the_member_told(tiny_registry):
    wan = tiny_registry["wan-1.3b"]
    request = validate_request("video", {"prompt": "surf", "frames": 20}, wan)
    assert request.frames == 21
    assert request.notes == ("wan-1.3b makes 4k+1 frames: using 21 (asked 20).",)
    assert validate_request("video", {"prompt": "surf", "frames": 18}, wan).frames == 17
    ltx = tiny_registry["ltx"]
    assert validate_request("video", {"prompt": "surf", "frames": 100}, ltx).frames == 97
    assert validate_request("video", {"prompt": "surf", "frames": 97}, ltx).notes == ()


def test_out_of_range_frames_are_refused_naming_the_model_range(tiny_registry):
    with pytest.raises(InvalidRequest, match="frames must be a whole number from 5 to 81"):
        validate_request("video", {"prompt": "surf", "frames": 121}, tiny_registry["wan-1.3b"])


def test_sizes_snap_to_the_models_multiple(tiny_registry):
    request = validate_request(
        "video", {"prompt": "x", "width": 840, "height": 470}, tiny_registry["wan-1.3b"]
    )
    assert (request.width, request.height) == (848, 464)
    assert any("width must be a multiple of 16" in note and "848" in note for note in request.notes)
    request = validate_request("video", {"prompt": "x", "width": 700}, tiny_registry["ltx"])
    assert request.width == 704 and "multiple of 32" in request.notes[0]
    # a stored request keeps no notes: they were said once, to the member
    assert "notes" not in request.to_dict()
    assert request_from_dict(request.to_dict()) == request


def test_model_defaults_come_from_the_cards(tiny_registry):
    wan = validate_request("video", {"prompt": "x"}, tiny_registry["wan-1.3b"])
    assert (wan.width, wan.height, wan.frames, wan.fps) == (832, 480, 81, 16)
    assert wan.negative_prompt and "overexposed" in wan.negative_prompt  # Wan's own negative prompt
    cog = validate_request("video", {"prompt": "x"}, tiny_registry["cogvideox-2b"])
    assert (cog.width, cog.height, cog.frames, cog.fps) == (720, 480, 49, 8)
    assert (
        validate_request(
            "video", {"prompt": "x", "negative_prompt": "rain"}, tiny_registry["ltx"]
        ).negative_prompt
        == "rain"
    )
    turbo = validate_request("image", {"prompt": "x"}, tiny_registry["sdxl-turbo"])
    assert (turbo.steps, turbo.guidance, turbo.width) == (1, 0.0, 512)
    with pytest.raises(InvalidRequest, match="steps must be a whole number from 1 to 4"):
        validate_request("image", {"prompt": "x", "steps": 8}, tiny_registry["sdxl-turbo"])
    with pytest.raises(InvalidRequest, match="guidance must be a number from 0 to 0"):
        validate_request("image", {"prompt": "x", "guidance": 7}, tiny_registry["sdxl-turbo"])


def test_image_to_video_routes_to_the_partner_and_needs_a_picture(tiny_registry, tmp_path):
    assert image_to_video_spec(tiny_registry, tiny_registry["ltx"]).id == "ltx-i2v"
    assert image_to_video_spec(tiny_registry, tiny_registry["tiny-wan"]).id == "tiny-wan-i2v"
    assert image_to_video_spec(tiny_registry, tiny_registry["wan-i2v"]).id == "wan-i2v"
    with pytest.raises(ModelUnavailable, match=r"cannot animate a picture.*ltx-i2v"):
        image_to_video_spec(tiny_registry, tiny_registry["damo"])
    i2v = tiny_registry["tiny-wan-i2v"]
    with pytest.raises(InvalidRequest, match="attach an image"):
        validate_request("video", {"prompt": "x"}, i2v)
    with pytest.raises(InvalidRequest, match=r"text only.*tiny-wan-i2v"):
        validate_request(
            "video", {"prompt": "x", "image": str(tmp_path / "a.png")}, tiny_registry["tiny-wan"]
        )
    request = validate_request("video", {"prompt": "x", "image": tmp_path / "a.png"}, i2v)
    assert request.image == str(tmp_path / "a.png")
    assert request_from_dict(request.to_dict()) == request


def test_requests_stored_before_image_to_video_still_load(tiny_registry):
    data = validate_request("video", {"prompt": "x", "seed": 1}, tiny_registry["tiny-video"]).to_dict()
    del data["image"]
    assert isinstance(request_from_dict(data), VideoRequest) and request_from_dict(data).image is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"frame_rule": "4k+1", "default_frames": 16}, "default_frames (16) breaks the frame rule 4k+1"),
        ({"size_multiple": 32, "default_width": 48}, "default_width must be a positive multiple of 32"),
        ({"frame_rule": "3k"}, "frame_rule must be one of"),
        ({"components": {"unet": "no-slash"}}, "components['unet']"),
        ({"dtype": "int8"}, "dtype must be"),
    ],
)
def test_a_spec_breaking_its_own_rules_is_refused_at_startup(fields, problem):
    base = {"repo_id": "a/b", "pipeline": "WanPipeline", "kind": "video", "min_frames": 1}
    with pytest.raises(ValueError, match="model 'x'") as info:
        ModelSpec.from_config("x", {**base, **fields})
    assert problem in str(info.value)


def test_every_builtin_model_states_its_needs(tiny_registry):
    for spec in tiny_registry.values():
        assert spec.license and spec.description
        assert spec.vram_full_gib >= spec.vram_offload_gib >= spec.vram_sequential_gib > 0
        if spec.i2v_model:
            assert tiny_registry[spec.i2v_model].takes_image, spec.id
    bf16 = {s.id for s in tiny_registry.values() if s.dtype == "bf16" and not s.tiny}
    assert bf16 == {"wan-1.3b", "wan-i2v", "ltx", "ltx-i2v", "cogvideox-2b", "cogvideox-i2v"}
    assert tiny_registry["wan-1.3b"].scheduler_options == {"flow_shift": 3.0}
