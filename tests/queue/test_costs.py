"""The ETA cost model: a prior scaled by work, then measurements, kept across restarts."""

from __future__ import annotations

import pytest

from bot.core.costs import CostModel, cost_key

IMG = {"kind": "image", "model": "sd", "width": 512, "height": 512, "steps": 25}


def video(frames: int, steps: int = 25) -> dict:
    return {"kind": "video", "model": "vid", "width": 256, "height": 256, "frames": frames, "steps": steps}


def test_prior_scales_with_pixels_frames_and_steps() -> None:
    model = CostModel()
    small, big = model.estimate(video(16)), model.estimate(video(64))
    assert 5 < small < 60  # "about 15 s" for damo's default shape
    assert big > 3 * small
    assert model.estimate({**IMG, "steps": 50}) > model.estimate(IMG)


def test_measurements_replace_the_prior_and_scale_to_new_shapes() -> None:
    model = CostModel(alpha=0.5)
    v0 = model.version
    for _ in range(5):
        model.observe(IMG, 2.0)
    assert model.version > v0
    assert model.measured(IMG)
    assert model.estimate(IMG) == pytest.approx(2.0)
    # an unseen size of a measured model scales by work from its learned rate
    assert model.estimate({**IMG, "steps": 50}) == pytest.approx(4.0, rel=0.01)
    model.observe(IMG, 4.0)
    assert 2.0 < model.estimate(IMG) < 4.0
    model.observe(IMG, float("nan"))
    model.observe(IMG, -1)
    assert 2.0 < model.estimate(IMG) < 4.0


def test_round_trip_through_json_and_damaged_entries_are_skipped() -> None:
    model = CostModel()
    model.observe(video(16), 3.0)
    data = model.to_json()
    data["shapes"].append(["garbage"])
    again = CostModel()
    again.load_json(data)
    assert again.estimate(video(16)) == pytest.approx(3.0)
    assert cost_key(video(16)) == ("vid", "video", 256, 256, 16, 25)
    assert cost_key(IMG)[4] == 1
