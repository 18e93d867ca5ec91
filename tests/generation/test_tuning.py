"""The tuned path on the tiny twins, on the CPU: every option changes how, never what, is drawn.

Each option is switched on alone against a baseline with every option off (eager attention,
separate projections, contiguous convolutions, no compile), through the real loading path of
`PipelineManager`; the pixels must agree within 2/255. Fallbacks (an option a model or the
device cannot take) must say so in exactly one warning and leave a working pipeline.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from generation import tuning
from generation.models import build_registry
from generation.params import validate_request
from generation.pipelines import PipelineManager
from generation.settings import GenerationSettings
from tests.conftest import make_tiny_settings

log = logging.getLogger(__name__)

#: largest pixel difference (of 255) an option may make on the twins in fp32
TOLERANCE = 2
OFF = {"attention_backend": "eager", "fuse_qkv": False, "channels_last": False, "compile": "off"}
#: (model, what its pipeline is built around)
TWINS = [
    ("tiny-image", "UNet2D"),
    ("tiny-video", "UNet3D"),
    ("tiny-sdxl", "UNet2D, two text encoders"),
    ("tiny-wan", "Wan transformer"),
    ("tiny-ltx", "LTX transformer"),
    ("tiny-cogvideox", "CogVideoX transformer"),
]
#: compiled in the suite: a UNet and a transformer (dynamo takes ~20-60 s per architecture here)
COMPILED = ("tiny-image", "tiny-wan")
OPTIONS = {
    "sdpa": {"attention_backend": "sdpa"},
    "fused_qkv": {"fuse_qkv": True, "attention_backend": "sdpa"},
    "channels_last": {"channels_last": True},
}


def settings_for(cache: Path, **overrides: Any) -> GenerationSettings:
    return make_tiny_settings(cache, preview_every_steps=0, **{**OFF, **overrides})


def render(
    settings: GenerationSettings, model: str, *, small: bool = True
) -> tuple[np.ndarray, PipelineManager]:
    """A picture or clip (2 steps, seed 3) as one array: at the model's smallest size and frame
    count when `small`, else at its defaults."""
    manager = PipelineManager(settings, build_registry(settings))
    spec = manager.spec(model)
    raw: dict[str, Any] = {"prompt": "a lighthouse at dusk", "seed": 3, "steps": 2}
    if small:
        raw.update(width=spec.min_width, height=spec.min_height)
        if spec.kind == "video":
            raw["frames"] = spec.min_frames
    request = validate_request(spec.kind, raw, spec)
    output = manager.run(request)
    frames = output.frames if output.frames is not None else [np.asarray(im) for im in output.images or []]
    return np.stack(frames).astype(np.int16), manager


@pytest.fixture(scope="module")
def baselines(tiny_model_cache: Path) -> dict[str, np.ndarray]:
    """Every twin with every option off, rendered once for the module (small, and tiny-image and
    tiny-wan at their defaults too, for the compile tests, which warm up at the defaults)."""
    pictures = {}
    for model, _ in TWINS:
        pictures[model], manager = render(settings_for(tiny_model_cache), model)
        manager.close()
    for model in COMPILED:
        pictures[f"{model}@default"], manager = render(settings_for(tiny_model_cache), model, small=False)
        manager.close()
    return pictures


def largest_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize(("model", "built_around"), TWINS)
def test_each_option_gives_the_same_pixels(
    tiny_model_cache: Path, baselines: dict[str, np.ndarray], model: str, built_around: str, option: str
) -> None:
    pixels, manager = render(settings_for(tiny_model_cache, **OPTIONS[option]), model)
    tuned = manager.device_info()["tuning"]["models"][model]
    manager.close()
    assert baselines[model].std() > 0, "a blank picture would make the comparison meaningless"
    diff = largest_difference(pixels, baselines[model])
    log.info("%s (%s) %s: largest pixel difference %d/255", model, built_around, option, diff)
    assert diff <= TOLERANCE, f"{model} with {option} differs by {diff}/255"
    if option == "fused_qkv" and model != "tiny-ltx":
        assert tuned["fused_qkv"] != "off", tuned  # the option really ran
    if option == "channels_last" and model in ("tiny-image", "tiny-video", "tiny-sdxl"):
        assert tuned["channels_last"].startswith("unet"), tuned


def test_the_defaults_are_the_tuned_path(tiny_model_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SDPA, fused QKV and channels_last by default, one log line per choice, nothing compiled."""
    defaults = GenerationSettings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.attention_backend, defaults.fuse_qkv, defaults.channels_last) == ("sdpa", True, True)
    assert (defaults.allow_tf32, defaults.compile) == (True, "off")
    settings = make_tiny_settings(tiny_model_cache)
    with caplog.at_level(logging.INFO, logger="generation.tuning"):
        manager = PipelineManager(settings, build_registry(settings))
        manager.load("tiny-image")
    lines = [r.getMessage() for r in caplog.records if r.name == "generation.tuning"]
    pipe = manager._resident["tiny-image"].pipe
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) for model in (pipe.unet, pipe.vae)]
    assert lines == [
        "ALLOW_TF32: skipped on cpu (TF32 is a CUDA tensor-core format)",
        "tuning tiny-image: attention sdpa (unet, vae)",
        "tuning tiny-image: fused QKV on unet, vae",
        f"tuning tiny-image: channels_last on 2-D convolutions: unet ({convs[0]}), vae ({convs[1]})",
        "tuning tiny-image: COMPILE=off",
    ]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert type(pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1.processor).__name__ == (
        "FusedAttnProcessor2_0"
    )
    info = manager.device_info()["tuning"]
    manager.close()
    assert info["tf32"] == "skipped (cpu)" and info["compile"] == "off"
    assert info["models"]["tiny-image"]["fallbacks"] == []
    assert info["summary"] == "tiny-image: sdpa · fused QKV · channels_last"


def tuning_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    records = [r for r in caplog.records if r.name == "generation.tuning"]
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("model", "overrides", "says"),
    [
        ("tiny-image", {"attention_backend": "flash"}, "ATTENTION_BACKEND=flash needs a CUDA GPU"),
        ("tiny-ltx", {"fuse_qkv": True}, "LTXVideoAttnProcessor ignores fused projections"),
        ("tiny-image", {"fuse_qkv": True}, "ATTENTION_BACKEND=eager"),
        ("tiny-cogvideox", {}, "transformer keep their own SDPA processors"),
    ],
)
def test_a_fallback_warns_once_and_still_draws(
    tiny_model_cache: Path,
    baselines: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
    model: str,
    overrides: dict[str, Any],
    says: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="generation.tuning"):
        pixels, manager = render(settings_for(tiny_model_cache, **overrides), model)
    fallbacks = manager.device_info()["tuning"]["models"][model]["fallbacks"]
    manager.close()
    warnings = tuning_warnings(caplog)
    assert len(warnings) == 1 and says in warnings[0], warnings
    assert fallbacks == [warnings[0].split(": ", 1)[1]]
    assert largest_difference(pixels, baselines[model]) <= TOLERANCE


def test_tf32_is_switched_on_for_ampere_and_later_only(caplog: pytest.LogCaptureFixture) -> None:
    settings = GenerationSettings(_env_file=None)  # type: ignore[call-arg]
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        with caplog.at_level(logging.INFO, logger="generation.tuning"):
            assert tuning.set_matmul_precision(settings, "cuda", capability=(7, 5)) == "skipped (pre-Ampere)"
            assert torch.get_float32_matmul_precision() == "highest"
            assert tuning.set_matmul_precision(settings, "cuda", capability=(8, 0)) == "on"
            assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
            off = settings.model_copy(update={"allow_tf32": False})
            assert tuning.set_matmul_precision(off, "cuda", capability=(9, 0)) == "off"
        assert len(tuning_warnings(caplog)) == 1
        assert len([r for r in caplog.records if r.name == "generation.tuning"]) == 3
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


# -- compile --------------------------------------------------------------------------------------


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def cheap_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product's compile path with aot_eager: dynamo and AOT autograd for real, no C++ kernels
    (inductor's own run is `test_inductor_compiles_the_unet_at_load`)."""
    monkeypatch.setattr(tuning, "COMPILE_BACKEND", "aot_eager")


@pytest.mark.parametrize(
    ("model", "mode"),
    [("tiny-image", "default"), ("tiny-image", "max-autotune-no-cudagraphs"), ("tiny-wan", "default")],
)
def test_compile_happens_at_load_not_in_the_first_job(
    tiny_model_cache: Path, baselines: dict[str, np.ndarray], cheap_compile: None, model: str, mode: str
) -> None:
    settings = settings_for(tiny_model_cache, compile=mode)
    manager = PipelineManager(settings, build_registry(settings))
    manager.load(model)
    at_load = compiled_graphs()
    compiled = getattr(tuning.denoiser(manager._resident[model].pipe), "_compiled_call_impl", None)
    try:
        spec = manager.spec(model)
        request = validate_request(spec.kind, {"prompt": "a lighthouse at dusk", "seed": 3, "steps": 2}, spec)
        output = manager.run(request)
        assert compiled_graphs() == at_load, "the first job at the default size compiled again"
        info = manager.device_info()["tuning"]["models"][model]
    finally:
        manager.close()
    assert compiled is not None and at_load > 0, "nothing was compiled at load"
    frames = output.frames if output.frames is not None else [np.asarray(im) for im in output.images or []]
    assert largest_difference(np.stack(frames).astype(np.int16), baselines[f"{model}@default"]) <= TOLERANCE
    assert info["compile"] == mode and info["compile_s"] > 0
    size = f"{spec.default_width}x{spec.default_height}"
    assert info["warmed"] == (f"{size}x{spec.default_frames}" if spec.kind == "video" else size)


def test_compile_without_a_compiler_warns_and_runs_eager(
    tiny_model_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    settings = settings_for(tiny_model_cache, compile="default")
    with caplog.at_level(logging.INFO, logger="generation.tuning"):
        manager = PipelineManager(settings, build_registry(settings))
        manager.load("tiny-image")
    info = manager.device_info()["tuning"]["models"]["tiny-image"]
    manager.close()
    assert tuning_warnings(caplog) == [
        "tuning tiny-image: COMPILE=default skipped: inductor on CPU needs a C++ compiler "
        "(no-such-c++-compiler not found); running eager"
    ]
    assert info["compile"] == "off"


def test_compile_needs_the_full_memory_mode_and_a_downgrade_drops_it(
    tiny_model_cache: Path, cheap_compile: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tiny_model_cache, compile="default")
    manager = PipelineManager(settings, build_registry(settings))
    manager.load("tiny-image")
    resident = manager._resident["tiny-image"]
    spec = manager.spec("tiny-image")
    with caplog.at_level(logging.INFO, logger="generation.tuning"):
        # what a GPU in offload mode would hear (the check stops before touching CUDA)
        fresh = tuning.Tuning(model="tiny-image")
        tuning.compile_and_warm(resident.pipe, spec, fresh, settings, device="cuda", memory_mode="offload")
        assert fresh.compile == "off" and "compile needs 'full'" in fresh.fallbacks[0]
        assert resident.tuning is not None and resident.tuning.compile == "default"
        assert manager.downgrade_memory("tiny-image") == "offload"
    assert resident.tuning.compile == "off"
    assert getattr(tuning.denoiser(resident.pipe), "_compiled_call_impl", None) is None
    assert len(tuning_warnings(caplog)) == 2
    request = validate_request("image", {"prompt": "a lighthouse at dusk", "seed": 3, "steps": 2}, spec)
    assert manager.run(request).images
    manager.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on CPU builds C++ kernels: no g++")
def test_inductor_compiles_the_unet_at_load(tiny_model_cache: Path, baselines: dict[str, np.ndarray]) -> None:
    """The real backend: 20-30 s with inductor's on-disk cache warm, minutes on a cold, busy CPU."""
    pixels, manager = render(settings_for(tiny_model_cache, compile="default"), "tiny-image", small=False)
    info = manager.device_info()["tuning"]["models"]["tiny-image"]
    manager.close()
    assert info["compile"] == "default" and not info["fallbacks"]
    log.info("inductor compile and warm-up of tiny-image: %.1f s", info["compile_s"])
    assert largest_difference(pixels, baselines["tiny-image@default"]) <= TOLERANCE
