"""The registry: built-in models, and extra ones added by configuration alone."""

from __future__ import annotations

import logging

import pytest

from generation.errors import ModelUnavailable
from generation.models import ModelSpec, build_registry, default_model_id, get_spec
from generation.params import validate_request
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)


def test_builtin_models(tiny_registry):
    assert {"sd15", "damo", "zeroscope", "tiny-image", "tiny-video"} <= set(tiny_registry)
    sd15 = tiny_registry["sd15"]
    assert (sd15.repo_id, sd15.pipeline, sd15.kind) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "StableDiffusionPipeline",
        "image",
    )
    assert (sd15.default_width, sd15.default_height) == (512, 512)
    damo = tiny_registry["damo"]
    assert (damo.repo_id, damo.pipeline) == ("damo-vilab/text-to-video-ms-1.7b", "TextToVideoSDPipeline")
    assert (damo.default_width, damo.default_frames, damo.min_frames, damo.max_frames) == (256, 16, 16, 64)
    zeroscope = tiny_registry["zeroscope"]
    assert (zeroscope.repo_id, zeroscope.default_width, zeroscope.default_height) == (
        "cerspense/zeroscope_v2_576w",
        576,
        320,
    )
    assert tiny_registry["tiny-image"].tiny and tiny_registry["tiny-video"].kind == "video"


def test_extra_models_from_settings(tmp_path):
    settings = make_tiny_settings(
        tmp_path,
        extra_models={
            "sdxl-turbo": {
                "repo_id": "stabilityai/sdxl-turbo",
                "pipeline": "AutoPipelineForText2Image",
                "kind": "image",
                "default_steps": 1,
                "default_guidance": 0.0,
            },
            "damo": {"max_frames": 32},
        },
    )
    registry = build_registry(settings)
    turbo = registry["sdxl-turbo"]
    assert turbo.pipeline == "AutoPipelineForText2Image" and turbo.default_width == 512
    assert validate_request("image", {"prompt": "x"}, turbo).steps == 1
    assert (
        registry["damo"].max_frames == 32 and registry["damo"].repo_id == "damo-vilab/text-to-video-ms-1.7b"
    )


def test_extra_models_from_the_environment(monkeypatch, tmp_path):
    from generation.settings import GenerationSettings

    monkeypatch.setenv(
        "EXTRA_MODELS",
        '{"anime": {"repo_id": "someone/anime-sd", "pipeline": "StableDiffusionPipeline", '
        '"kind": "image", "default_width": 640, "default_height": 384}}',
    )
    registry = build_registry(GenerationSettings(_env_file=None))
    assert (registry["anime"].default_width, registry["anime"].max_width) == (640, 1024)


@pytest.mark.parametrize(
    "fields",
    [
        {"pipeline": "StableDiffusionPipeline", "kind": "image"},
        {"repo_id": "a/b", "pipeline": "StableDiffusionPipeline", "kind": "audio"},
        {"repo_id": "a/b", "pipeline": "StableDiffusionPipeline", "kind": "image", "colour": "blue"},
        {"repo_id": "a/b", "pipeline": "StableDiffusionPipeline", "kind": "image", "default_width": 500},
    ],
)
def test_bad_extra_model_fails_at_startup(tmp_path, fields):
    with pytest.raises(ValueError, match="bad"):
        build_registry(make_tiny_settings(tmp_path, extra_models={"bad": fields}))


def test_settings_cap_steps_everywhere(tmp_path):
    registry = build_registry(make_tiny_settings(tmp_path, max_steps=20, default_steps=30))
    assert all(spec.max_steps <= 20 and spec.default_steps <= spec.max_steps for spec in registry.values())


def test_lookup_errors_name_the_settings(tiny_registry, tiny_settings):
    with pytest.raises(ModelUnavailable, match="EXTRA_MODELS"):
        get_spec(tiny_registry, "nope")
    with pytest.raises(ModelUnavailable, match="makes images"):
        get_spec(tiny_registry, "sd15", kind="video")
    assert default_model_id(tiny_settings, "video") == "tiny-video"
    assert isinstance(get_spec(tiny_registry, "tiny-image", kind="image"), ModelSpec)
