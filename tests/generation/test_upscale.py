"""The upscaler's tiny twin, loaded back through `from_pretrained`, upscales by its VAE's factor."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from generation.errors import InvalidRequest
from generation.tiny import ensure_tiny
from generation.upscale import prepare_for_upscale, upscale, upscale_factor

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def upscaler(tiny_model_cache):
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(ensure_tiny("tiny-upscale", tiny_model_cache))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_twin_has_the_x4_layout(upscaler):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(upscaler.unet, UNet2DConditionModel) and upscaler.unet.config.in_channels == 7
    assert isinstance(upscaler.vae, AutoencoderKL) and upscaler.vae.config.scaling_factor == 0.08333
    assert isinstance(upscaler.low_res_scheduler, DDPMScheduler)
    assert isinstance(upscaler.text_encoder, CLIPTextModel)
    assert upscale_factor(upscaler) == 4


def test_upscale_returns_four_times_the_size_with_a_tiled_vae(upscaler):
    prepare_for_upscale(upscaler, tiled=True)
    assert upscaler.vae.use_tiling
    source = Image.new("RGB", (24, 16), (200, 40, 30))
    first = upscale(upscaler, source, prompt="a red wall", steps=2, seed=3)
    assert first.size == (96, 64)
    again = upscale(upscaler, source, prompt="a red wall", steps=2, seed=3)
    assert first.tobytes() == again.tobytes(), "the same seed gives the same picture"


def test_a_huge_source_is_refused_before_any_work(upscaler):
    with pytest.raises(InvalidRequest, match="at most"):
        upscale(upscaler, Image.new("RGB", (1100, 1000)), steps=1)


def test_the_manager_runs_an_upscale_request_on_the_upscale_model(
    tmp_path, tiny_registry, tiny_settings, isolated_pipeline_manager
):
    from generation.models import default_model_id
    from generation.params import UpscaleRequest, request_from_dict, validate_request

    source = tmp_path / "source.png"
    Image.new("RGB", (32, 24), (10, 120, 200)).save(source)
    model = default_model_id(tiny_settings, "upscale")
    assert model == "tiny-upscale"
    raw = {"prompt": "a blue sea", "image": str(source), "width": 32, "height": 24, "steps": 2, "seed": 5}
    request = validate_request("upscale", raw, tiny_registry[model], tiny_settings)
    assert isinstance(request, UpscaleRequest) and request_from_dict(request.to_dict()) == request
    output = isolated_pipeline_manager.run(request)
    assert output.kind == "upscale" and [im.size for im in output.images] == [(128, 96)]
    assert isolated_pipeline_manager._resident[model].pipe.vae.use_tiling, "tiled whatever the memory mode"


def test_an_upscaler_is_no_text_to_image_model_and_needs_a_picture(tiny_registry, tiny_settings):
    from generation.params import validate_request

    with pytest.raises(InvalidRequest, match="makes upscales"):
        validate_request("image", {"prompt": "x"}, tiny_registry["tiny-upscale"], tiny_settings)
    with pytest.raises(InvalidRequest, match="needs the picture"):
        validate_request("upscale", {"prompt": "x"}, tiny_registry["tiny-upscale"], tiny_settings)
