"""The tiny twins: real architecture classes, the same weights everywhere, built once, atomically."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pytest

from generation.tiny import TINY_MODELS, build_tiny_pipeline, ensure_tiny, tiny_path

log = logging.getLogger(__name__)

# sum of |weight| per component, fp64: changes only if the architecture, seed or init changes,
# in which case TINY_VERSION must be bumped so old caches are rebuilt
FINGERPRINTS = {
    "tiny-image": {"unet": 37836.7466, "vae": 4199.0563, "text_encoder": 2287.3059},
    # the same weights as tiny-image, plus a safety checker that flags every picture
    "tiny-image-flagged": {
        "unet": 37836.7466,
        "vae": 4199.0563,
        "text_encoder": 2287.3059,
        "safety_checker": 2405.5628,
    },
    "tiny-video": {"unet": 23273.5092, "vae": 4199.0563, "text_encoder": 2287.3059},
    "tiny-sdxl": {
        "unet": 39750.2175, "vae": 4199.0563, "text_encoder": 2287.3059, "text_encoder_2": 2433.1472
    },
    "tiny-wan": {"transformer": 2463.7649, "vae": 3020.5775, "text_encoder": 5278.5612},
    "tiny-wan-i2v": {"transformer": 2854.2387, "vae": 4258.4958, "text_encoder": 5278.5612},
    "tiny-ltx": {"transformer": 2632.1944, "vae": 3392.8655, "text_encoder": 4906.2880},
    "tiny-cogvideox": {"transformer": 1753.7693, "vae": 2936.4286, "text_encoder": 4906.2880},
    "tiny-upscale": {"unet": 140020.4539, "vae": 3327.2085, "text_encoder": 2287.3059},
}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("model_id", TINY_MODELS)
def test_weights_match_the_recorded_fingerprint(model_id):
    pipe = build_tiny_pipeline(model_id)
    for name, expected in FINGERPRINTS[model_id].items():
        total = float(sum(t.detach().double().abs().sum() for t in getattr(pipe, name).parameters()))
        assert total == pytest.approx(expected, rel=1e-6), name


def test_loaded_twins_use_the_real_classes(pipeline_manager):
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    image = pipeline_manager._resident["tiny-image"].pipe
    video = pipeline_manager._resident["tiny-video"].pipe
    assert isinstance(image.unet, UNet2DConditionModel) and isinstance(video.unet, UNet3DConditionModel)
    for pipe in (image, video):
        assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 8
        assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
        ids = pipe.tokenizer("a quiet harbour").input_ids
        assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
        assert pipe.tokenizer.unk_token_id not in ids[1:-1], "every byte is in the vocabulary"
    # the spec's scheduler replaced the one saved with the twin
    assert type(image.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_builds_are_byte_identical_and_concurrent_builds_are_safe(
    tmp_path, tiny_model_cache, pipeline_manager
):
    reference = tiny_path("tiny-image", tiny_model_cache)
    assert reference.is_dir(), "the session fixtures built it"
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_tiny("tiny-image", tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results[0] == results[1] == tiny_path("tiny-image", tmp_path)
    assert tree_digest(results[0]) == tree_digest(reference)
    assert [p.name for p in tmp_path.joinpath("tiny").iterdir()] == [results[0].name], "no temp dirs left"


def test_a_second_call_reuses_the_cache(tiny_model_cache, pipeline_manager):
    path = tiny_path("tiny-video", tiny_model_cache)
    before = path.stat().st_mtime_ns
    assert ensure_tiny("tiny-video", tiny_model_cache) == path
    assert path.stat().st_mtime_ns == before


def test_unknown_twin_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny-image"):
        ensure_tiny("tiny-audio", tmp_path)
