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
