"""Running the tiny twins through the real loading path: determinism, progress, cancel, OOM seam."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from generation.errors import GenerationCancelled, ModelUnavailable
from generation.models import ModelSpec
from generation.outputs import StepInfo
from generation.params import ImageRequest, VideoRequest, validate_request
from generation.pipelines import MEMORY_MODES, PipelineManager
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)


def image_request(registry: dict[str, ModelSpec], **raw: object) -> ImageRequest:
    values = {"prompt": "a lighthouse at dusk", "seed": 1, "steps": 2, "width": 64, "height": 64, **raw}
    request = validate_request("image", values, registry["tiny-image"])
    assert isinstance(request, ImageRequest)
    return request


def video_request(registry: dict[str, ModelSpec], **raw: object) -> VideoRequest:
    values = {"prompt": "waves on a beach", "seed": 1, "steps": 2, "width": 64, "height": 64, **raw}
    values.setdefault("frames", 8)
    request = validate_request("video", values, registry["tiny-video"])
    assert isinstance(request, VideoRequest)
    return request


def pixels(manager: PipelineManager, request: ImageRequest) -> np.ndarray:
    output = manager.run(request)
    assert output.images is not None and len(output.images) == 1
    return np.asarray(output.images[0])


def test_same_seed_gives_identical_pixels(pipeline_manager, tiny_registry):
    first = pixels(pipeline_manager, image_request(tiny_registry, seed=42))
    second = pixels(pipeline_manager, image_request(tiny_registry, seed=42))
    assert first.shape == (64, 64, 3)
    assert first.std() > 0, "a blank image would make the comparison meaningless"
    np.testing.assert_array_equal(first, second)


def test_different_seeds_differ(pipeline_manager, tiny_registry):
    a = pixels(pipeline_manager, image_request(tiny_registry, seed=1))
    b = pixels(pipeline_manager, image_request(tiny_registry, seed=2))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1


def test_prompt_changes_the_image(pipeline_manager, tiny_registry):
    a = pixels(pipeline_manager, image_request(tiny_registry, prompt="a red fox"))
    b = pixels(pipeline_manager, image_request(tiny_registry, prompt="an empty parking lot at night"))
    assert not np.array_equal(a, b)


def test_image_size_follows_request(pipeline_manager, tiny_registry):
    output = pipeline_manager.run(image_request(tiny_registry, width=96, height=48))
    assert output.images[0].size == (96, 48)
    assert output.kind == "image" and output.frames is None
    assert set(output.timings) >= {"load", "denoise", "decode", "total"}
    assert output.timings["load"] == 0.0, "the session manager already holds the model"
    assert output.device == "cpu"


def test_video_has_requested_frames_and_size(pipeline_manager, tiny_registry):
    output = pipeline_manager.run(video_request(tiny_registry, frames=12, width=80, height=48))
    assert output.kind == "video" and output.images is None
    assert len(output.frames) == 12
    for frame in output.frames:
        assert frame.shape == (48, 80, 3) and frame.dtype == np.uint8


def test_video_is_deterministic(pipeline_manager, tiny_registry):
    a = pipeline_manager.run(video_request(tiny_registry, seed=7)).frames
    b = pipeline_manager.run(video_request(tiny_registry, seed=7)).frames
    c = pipeline_manager.run(video_request(tiny_registry, seed=8)).frames
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_progress_reports_every_step_with_previews(pipeline_manager, tiny_registry, kind):
    steps: list[StepInfo] = []
    request = (image_request if kind == "image" else video_request)(tiny_registry, steps=4)
    pipeline_manager.run(request, on_step=steps.append)
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert all(s.total == 4 for s in steps)
    # preview_every_steps=1 in the test settings: a latent preview on every step but the last
    assert all(s.preview is not None and s.preview.mode == "RGB" for s in steps[:-1])
    assert steps[-1].preview is None


@pytest.mark.parametrize("kind", ["image", "video"])
def test_cancel_between_steps(pipeline_manager, tiny_registry, kind):
    seen: list[int] = []
    request = (image_request if kind == "image" else video_request)(tiny_registry, steps=5)
    with pytest.raises(GenerationCancelled) as info:
        pipeline_manager.run(
            request, on_step=lambda s: seen.append(s.step), should_cancel=lambda: len(seen) >= 2
        )
    assert seen == [1, 2], "the run stops at the first step after the flag is set"
    assert "step 2 of 5" in info.value.message
    # the manager is still usable afterwards
    assert pipeline_manager.run(request).kind == kind


def test_cancel_before_start_runs_nothing(pipeline_manager, tiny_registry):
    seen: list[StepInfo] = []
    with pytest.raises(GenerationCancelled):
        pipeline_manager.run(image_request(tiny_registry), on_step=seen.append, should_cancel=lambda: True)
    assert seen == []


def test_injected_oom_propagates_and_memory_mode_can_be_lowered(isolated_pipeline_manager, tiny_registry):
    manager = isolated_pipeline_manager
    request = image_request(tiny_registry, seed=5)
    before = pixels(manager, request)
    assert manager.memory_mode("tiny-image") == "full"

    def oom_once(step: StepInfo) -> None:
        manager.step_hooks.remove(oom_once)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")

    manager.step_hooks.append(oom_once)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        manager.run(request)
    assert manager.downgrade_memory("tiny-image") == "offload"
    assert manager.memory_mode("tiny-image") == "offload"
    after = manager.run(request)
    assert after.memory_mode == "offload"
    np.testing.assert_array_equal(np.asarray(after.images[0]), before)


def test_downgrade_walks_every_mode_then_stops(isolated_pipeline_manager, tiny_registry):
    manager = isolated_pipeline_manager
    manager.load("tiny-video")
    modes = [manager.memory_mode("tiny-video")]
    while (mode := manager.downgrade_memory("tiny-video")) is not None:
        modes.append(mode)
    assert modes == list(MEMORY_MODES)
    output = manager.run(video_request(tiny_registry, frames=4))
    assert output.memory_mode == "sequential_lowvae" and len(output.frames) == 4


def test_fresh_manager_reproduces_the_shared_one(isolated_pipeline_manager, pipeline_manager, tiny_registry):
    request = image_request(tiny_registry, seed=99)
    output = isolated_pipeline_manager.run(request)
    assert output.timings["load"] > 0, "the isolated manager loaded the twin from the cache"
    np.testing.assert_array_equal(np.asarray(output.images[0]), pixels(pipeline_manager, request))


def test_resident_models_are_capped(tiny_model_cache, tiny_registry):
    manager = PipelineManager(make_tiny_settings(tiny_model_cache, max_resident_models=1), tiny_registry)
    manager.load("tiny-image")
    manager.load("tiny-image")
    assert manager.loaded_models() == ["tiny-image"]
    manager.load("tiny-video")
    assert manager.loaded_models() == ["tiny-video"]
    manager.close()
    assert manager.loaded_models() == []


def test_unknown_model_is_unavailable(pipeline_manager):
    with pytest.raises(ModelUnavailable, match="EXTRA_MODELS"):
        pipeline_manager.load("no-such-model")


def test_missing_weights_name_the_cache_setting(tiny_model_cache):
    settings = make_tiny_settings(
        tiny_model_cache,
        extra_models={
            "ghost": {
                "repo_id": "nobody/not-a-real-repo",
                "pipeline": "StableDiffusionPipeline",
                "kind": "image",
            }
        },
    )
    manager = PipelineManager(settings)
    with pytest.raises(ModelUnavailable) as info:
        manager.load("ghost")
    assert "MODEL_CACHE_DIR" in info.value.message and "nobody/not-a-real-repo" in info.value.message


def test_unknown_pipeline_class_names_extra_models(tiny_model_cache):
    settings = make_tiny_settings(
        tiny_model_cache,
        extra_models={"odd": {"repo_id": "a/b", "pipeline": "NoSuchPipeline", "kind": "image"}},
    )
    with pytest.raises(ModelUnavailable, match="EXTRA_MODELS"):
        PipelineManager(settings).load("odd")


def test_device_info_describes_the_cpu(pipeline_manager):
    info = pipeline_manager.device_info()
    assert info["device"] == "cpu" and info["dtype"] == "fp32" and info["gpu"] is None


def _hub_error(cls: type[BaseException], message: str) -> BaseException:
    """huggingface_hub's HTTP errors want a live response; the message is all we read."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


@pytest.mark.parametrize(
    ("error", "token", "must_say"),
    [
        ("gated", None, ["gated", "HF_TOKEN", "huggingface.co/someone/secret-model"]),
        ("gated", "hf_xxx", ["HF_TOKEN account has no access", "licence"]),
        ("missing", None, ["not found", "set HF_TOKEN", "EXTRA_MODELS", "IMAGE_MODEL"]),
        ("network", None, ["MODEL_CACHE_DIR", "could not be reached"]),
        ("other", None, ["Could not load", "MODEL_CACHE_DIR", "HF_TOKEN"]),
    ],
)
def test_loading_failures_name_the_setting_to_change(tiny_model_cache, monkeypatch, error, token, must_say):
    import diffusers
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    def failing_from_pretrained(cls, source, **kwargs):
        assert kwargs["token"] == token and kwargs["cache_dir"] == str(tiny_model_cache)
        assert "torch_dtype" not in kwargs and kwargs["dtype"] is torch.float32
        if error == "gated":
            raise OSError("cannot load") from _hub_error(GatedRepoError, "Access to model is restricted")
        if error == "missing":
            raise _hub_error(RepositoryNotFoundError, "404 Repository Not Found")
        if error == "network":
            raise OSError("Cannot load model: couldn't connect to 'https://huggingface.co'")
        raise RuntimeError("unexpected tensor shape in checkpoint")

    monkeypatch.setattr(
        diffusers.StableDiffusionPipeline, "from_pretrained", classmethod(failing_from_pretrained)
    )
    settings = make_tiny_settings(
        tiny_model_cache,
        hf_token=token,
        hf_offline=False,
        extra_models={
            "secret": {
                "repo_id": "someone/secret-model",
                "pipeline": "StableDiffusionPipeline",
                "kind": "image",
            }
        },
    )
    with pytest.raises(ModelUnavailable) as info:
        PipelineManager(settings).load("secret")
    for phrase in must_say:
        assert phrase in info.value.message
    assert "hf_xxx" not in info.value.message, "the token itself is never shown"


def test_safety_checker_setting_reaches_from_pretrained(tiny_model_cache, monkeypatch):
    import diffusers

    seen: dict[str, object] = {}

    def capture(cls, source, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", classmethod(capture))
    for enabled in (False, True):
        seen.clear()
        settings = make_tiny_settings(tiny_model_cache, safety_checker=enabled, hf_offline=False)
        with pytest.raises(ModelUnavailable):
            PipelineManager(settings).load("sd15")
        assert ("safety_checker" in seen) is not enabled
        assert seen["local_files_only"] is False and seen.get("variant") is None, (
            "fp16 variant is for CUDA only"
        )


def test_status_queries_do_not_wait_for_a_running_job(pipeline_manager, tiny_registry):
    """Health checks and /admin read the manager from other threads while the GPU thread works."""
    import threading

    answers: list[object] = []

    def ask_from_another_thread(step: StepInfo) -> None:
        if step.step != 1:
            return
        thread = threading.Thread(
            target=lambda: answers.extend(
                [pipeline_manager.loaded_models(), pipeline_manager.memory_mode("tiny-image")]
            )
        )
        thread.start()
        thread.join(timeout=5)
        assert not thread.is_alive(), "a status query blocked on the running job"

    pipeline_manager.run(image_request(tiny_registry, steps=2), on_step=ask_from_another_thread)
    assert len(answers) == 2 and answers[1] == "full"
    assert set(answers[0]) == {"tiny-image", "tiny-video"}
