"""A video request that brings a picture but names no model goes to I2V_MODEL, on every way in:
VIDEO_MODEL (or a member's saved text-to-video model without an image-to-video partner) cannot
animate it, and the request must not be refused for a model the member never chose."""

from __future__ import annotations

import logging

from bot.core.defaults import fill_request

log = logging.getLogger(__name__)


def test_a_picture_without_a_model_goes_to_i2v_model(tiny_settings, tiny_registry):
    out, _ = fill_request(
        {"prompt": "boats"}, {}, kind="video", registry=tiny_registry, settings=tiny_settings, picture=True
    )
    assert out["model"] == tiny_settings.i2v_model


def test_without_a_picture_the_video_model_serves(tiny_settings, tiny_registry):
    out, _ = fill_request(
        {"prompt": "boats"}, {}, kind="video", registry=tiny_registry, settings=tiny_settings
    )
    assert out["model"] == tiny_settings.video_model


def test_a_saved_model_that_cannot_animate_gives_way_to_i2v_model(tiny_settings, tiny_registry):
    saved = {"video_model": "tiny-video"}  # no image-to-video partner
    out, _ = fill_request(
        {"prompt": "boats"}, saved, kind="video", registry=tiny_registry, settings=tiny_settings, picture=True
    )
    assert out["model"] == tiny_settings.i2v_model


def test_a_saved_model_with_a_partner_is_kept(tiny_settings, tiny_registry):
    saved = {"video_model": "tiny-wan"}  # animates through tiny-wan-i2v
    out, _ = fill_request(
        {"prompt": "boats"}, saved, kind="video", registry=tiny_registry, settings=tiny_settings, picture=True
    )
    assert out["model"] == "tiny-wan"
