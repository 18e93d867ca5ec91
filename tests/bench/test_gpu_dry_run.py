"""`python -m bench gpu --dry-run`: the lent-GPU script's whole logic, on CPU, with tiny twins.

A lent card comes rarely and for minutes, so the script must work the first time it meets
one. These tests run it end to end on scaled-down versions of the same architectures and read
its JSON lines the way the person holding the card would.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bench import common, gpu
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

PEAK = 1.0  # TFLOP/s handed in, since a CPU has no entry in the peak table


def run_gpu_bench(argv: list[str]) -> tuple[bool | None, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        verdict = gpu.main(argv)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return verdict, lines, err.getvalue()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("gpu-dry")
    repo_results = common.RESULTS_DIR / "gpu.jsonl"
    before = repo_results.read_bytes() if repo_results.exists() else None
    verdict, lines, stderr = run_gpu_bench([
        "--dry-run", "--repeats", "1", "--peak-tflops", str(PEAK), "--budget-s", "600",
        "--out", str(folder / "gpu.jsonl"), "--results-dir", str(folder / "results"),
    ])
    after = repo_results.read_bytes() if repo_results.exists() else None
    return {
        "verdict": verdict, "lines": lines, "stderr": stderr, "folder": folder,
        "repo_results_unchanged": before == after,
        "scenarios": {ln["figures"]["scenario"]: ln["figures"] for ln in lines
                      if ln["figures"]["kind"] == "scenario"},
        "summary": [ln["figures"] for ln in lines if ln["figures"]["kind"] == "summary"],
    }


def test_one_line_per_scenario_then_a_summary(dry_run: dict[str, Any]) -> None:
    lines = dry_run["lines"]
    # one line per scenario, SD 1.5's batch curve right after its scenario, then the summary
    assert [ln["name"] for ln in lines] == ["gpu"] * (len(gpu.FULL_SCENARIOS) + 2)
    assert [ln["figures"]["kind"] for ln in lines][1:3] == ["scenario", "batch"]
    assert list(dry_run["scenarios"]) == [s.name for s in gpu.FULL_SCENARIOS]
    assert lines[-1]["figures"]["kind"] == "summary"
    # CPU figures decide nothing
    assert all(ln["target"] == gpu.TARGET and ln["pass"] is None for ln in lines)
    assert dry_run["verdict"] is None
    assert "damo-256x256x16" in dry_run["stderr"]  # the human table


def test_every_recipe_ran_with_its_settings(dry_run: dict[str, Any]) -> None:
    for name, fig in dry_run["scenarios"].items():
        recipes = fig["recipes"]
        assert set(recipes) == {"production", "seed", "lowmem"}, name
        assert all(r["status"] == "ok" for r in recipes.values()), (name, recipes)
        for record in recipes.values():
            assert record["job_s"] > 0 and record["unet_step_s"] > 0
            assert record["repeats"] == 1 and len(record["job_s_all"]) == 1
            assert record["unet_calls"] == (3 if fig["scenario"].startswith("sd15") else 2)  # PNDM adds one
        # production and low-memory are the product: PipelineManager with its default tuned path
        for recipe, memory_mode in (("production", "full"), ("lowmem", "offload")):
            settings = recipes[recipe]["settings"]
            assert settings["path"] == "PipelineManager" and settings["memory_mode"] == memory_mode
            assert settings["attention"] == "sdpa" and settings["compile"] == "off"
            assert settings["fallbacks"] == [] and settings["tf32"] == "skipped (cpu)"
            assert settings["dtype"] == fig["production"]["dtype"] == "fp32"
        production = recipes["production"]["settings"]
        if name.startswith("wan"):  # a transformer: fused in its own attention; 2-D convolutions in the VAE
            assert production["fused_qkv"] == "transformer" and production["channels_last"].startswith("vae")
            continue
        assert production["fused_qkv"] == "unet, vae" and production["channels_last"].startswith("unet")
        assert recipes["seed"]["settings"]["attention"] == "AttnProcessor"
        assert recipes["seed"]["settings"]["model_cpu_offload"] is False  # no GPU to offload to


def test_the_product_loads_each_family_from_its_saved_folder(dry_run: dict[str, Any]) -> None:
    """from_pretrained of the folder the bench saved: a load time on a family's first scenario."""
    scenarios = dry_run["scenarios"]
    for name in ("damo-256x256x16", "sd15-512x512", "wan-832x480x81"):
        assert scenarios[name]["recipes"]["production"]["settings"]["load_s"] > 0
    (summary,) = dry_run["summary"]
    assert set(summary["save_s"]) == {"damo", "sd15", "wan"}


def test_batch_curve_times_one_call_per_batch_size(dry_run: dict[str, Any]) -> None:
    (batch,) = [ln["figures"] for ln in dry_run["lines"] if ln["figures"]["kind"] == "batch"]
    assert batch["scenario"] == "sd15-512x512" and batch["sizes"] == [1, 2, 4, 8]
    assert batch["settings"]["path"] == "PipelineManager" and batch["settings"]["fused_qkv"] == "unet, vae"
    for size, row in batch["batches"].items():
        assert row["status"] == "ok", row
        assert row["images_per_s"] == pytest.approx(int(size) / row["job_s"], rel=0.01)
    one = batch["batches"]["1"]["images_per_s"]
    assert batch["batches"]["8"]["speedup_vs_batch_1"] == pytest.approx(
        batch["batches"]["8"]["images_per_s"] / one, rel=0.01
    )
    (summary,) = dry_run["summary"]
    assert summary["batch"] == {k: v["images_per_s"] for k, v in batch["batches"].items()}


def test_ratios_follow_from_the_timings_and_the_flop_count(dry_run: dict[str, Any]) -> None:
    for name, fig in dry_run["scenarios"].items():
        flops = fig["unet_flops_per_step"]
        assert flops > 0
        assert fig["unet_tflop_per_sample"] == pytest.approx(flops / 2e12, abs=1e-4)
        seed, production = fig["recipes"]["seed"], fig["production"]
        assert fig["speedup_vs_seed"] == pytest.approx(seed["job_s"] / production["job_s"], rel=0.01), name
        floor_step_s = flops / (PEAK * 1e12)
        assert production["floor_ratio"] == pytest.approx(production["unet_step_s"] / floor_step_s, rel=0.02)
        fraction = floor_step_s / production["unet_step_s"]
        assert production["fraction_of_peak"] == pytest.approx(fraction, rel=0.02, abs=1e-4)
        assert fig["floor_job_s"] == pytest.approx(flops * fig["unet_calls"] / (PEAK * 1e12), rel=0.02)
        assert set(fig["checks"]) >= {"production_within_2x_floor"}
    damo = dry_run["scenarios"]["damo-256x256x16"]
    assert set(damo["checks"]) == {
        "production_within_2x_floor", "production_speedup_ge_2x", "lowmem_peak_le_8gb"
    }
    assert damo["checks"]["lowmem_peak_le_8gb"] is None  # no VRAM on a CPU: unknown, not passed


def test_videos_are_encoded_and_compared_with_gpu_time(dry_run: dict[str, Any]) -> None:
    for name, fig in dry_run["scenarios"].items():
        if fig["size"]["frames"] == 0:
            assert "encode" not in fig
            continue
        encode = fig["encode"]
        assert encode["status"] == "ok", name
        assert encode["frames"] == fig["size"]["frames"]
        assert encode["size"] == [fig["size"]["width"], fig["size"]["height"]]
        assert encode["bytes"] > 0 and encode["encode_s"] > 0
        ratio = encode["encode_s"] / fig["production"]["job_s"]
        assert encode["ratio_to_gpu_job"] == pytest.approx(ratio, rel=0.02)


def test_summary_repeats_the_scenario_figures(dry_run: dict[str, Any]) -> None:
    (summary,) = dry_run["summary"]
    assert set(summary["scenarios"]) == set(dry_run["scenarios"])
    for name, row in summary["scenarios"].items():
        fig = dry_run["scenarios"][name]
        assert row["speedup_vs_seed"] == fig["speedup_vs_seed"]
        assert row["production_job_s"] == fig["production"]["job_s"]
        assert row["seed_status"] == "ok"


def test_lines_reach_out_and_results_dir_but_never_the_repo(dry_run: dict[str, Any]) -> None:
    folder: Path = dry_run["folder"]
    written = [json.loads(line) for line in (folder / "gpu.jsonl").read_text().splitlines()]
    assert written == dry_run["lines"]
    appended = (folder / "results" / "gpu.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in appended] == dry_run["lines"]
    assert dry_run["repo_results_unchanged"]


def test_an_exhausted_budget_still_prints_a_summary(tmp_path: Path) -> None:
    verdict, lines, _ = run_gpu_bench(["--dry-run", "--budget-s", "0", "--results-dir", str(tmp_path)])
    assert verdict is None
    assert [ln["figures"]["kind"] for ln in lines] == ["summary"]
    rows = lines[0]["figures"]["scenarios"]
    assert {row["status"] for row in rows.values()} == {"skipped_budget"}


def test_compile_is_timed_separately_with_its_pay_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMPILE=default through the product: compiled and warmed at load, then timed (the compile
    call is recorded instead of run: a real CPU inductor build takes minutes here)."""
    import torch

    compiled: list[str] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    _verdict, lines, _ = run_gpu_bench([
        "--dry-run", "--repeats", "1", "--peak-tflops", str(PEAK), "--budget-s", "600",
        "--compile-reserve-s", "0", "--scenarios", "damo-256x256x16", "--recipes", "production", "compile",
        "--results-dir", str(tmp_path),
    ])
    assert compiled == ["UNet3DConditionModel"]
    kinds = [ln["figures"]["kind"] for ln in lines]
    assert kinds == ["scenario", "compile", "summary"]
    scenario, comp, summary = (ln["figures"] for ln in lines)
    settings = comp["record"]["settings"]
    assert settings["path"] == "PipelineManager" and settings["compile"] == "default" and comp["compiled"]
    assert comp["compile_s"] == settings["compile_s"] > 0  # the load-time warm-up at 64x64x2
    assert comp["eager_job_s"] == scenario["production"]["job_s"]
    assert comp["speedup_vs_eager"] == pytest.approx(comp["eager_job_s"] / comp["job_s"], rel=0.01)
    row = summary["scenarios"]["damo-256x256x16"]
    assert row["compiled_job_s"] == comp["job_s"] and row["compile_s"] == comp["compile_s"]
    assert row["seed_status"] == "not run"


def test_full_size_flop_counts_match_the_published_architectures() -> None:
    """UNet TFLOP per sample (the issue's reference counts: 0.80, 4.9, 21), and Wan 1.3B's transformer
    at 832x480x81 counted by hand: 30 layers x (self-attention projections 8·d²·N + scores and values
    4·N²·d + cross-attention 4·d²·N + 4·N·512·d + feed-forward 4·d·8960·N), d = 1536, N = 21·30·52."""
    expected = {
        "sd15-512x512": 0.80, "damo-256x256x16": 4.9, "zeroscope-576x320x24": 21.0, "wan-832x480x81": 283.0
    }
    for scenario in gpu.FULL_SCENARIOS:
        if scenario.name in expected:
            per_sample = gpu.unet_flops(scenario.family, scenario, tiny=False) / 2e12
            assert per_sample == pytest.approx(expected[scenario.name], rel=0.05), scenario.name


def test_full_size_production_settings_fit_the_architectures() -> None:
    """The product's tuned path (generation/tuning.py: SDPA, fused QKV with 64 heads of 5 in damo's
    UNet3D, channels_last) on the full-size models, shape-checked on meta tensors: what only a lent
    card would otherwise find out."""
    from types import SimpleNamespace

    import diffusers
    import torch

    from generation import tuning
    from generation.spec import ModelSpec

    for scenario in (gpu.FULL_SCENARIOS[0], gpu.FULL_SCENARIOS[1]):
        config = gpu.load_config(scenario.family, "unet", tiny=False)
        with torch.device("meta"):
            unet = getattr(diffusers, gpu.UNET_CLASS[scenario.family]).from_config(config).half()
            vae_config = gpu.load_config(scenario.family, "vae", tiny=False)
            vae = diffusers.AutoencoderKL.from_config(vae_config).half()
        spec = ModelSpec(id=scenario.name, repo_id="bench/full", pipeline="StableDiffusionPipeline",
                         kind="image", default_width=512, default_height=512, max_width=512, max_height=512)
        tuned = tuning.prepare(SimpleNamespace(unet=unet, vae=vae), spec, GenerationSettings(_env_file=None),
                               "cuda")
        assert tuned.fused_qkv == ["unet", "vae"] and not tuned.fallbacks
        h, w, f = scenario.height // 8, scenario.width // 8, scenario.frames
        shape = (2, 4, f, h, w) if f else (2, 4, h, w)
        context = torch.empty(2, 77, config["cross_attention_dim"], device="meta", dtype=torch.half)
        with torch.no_grad():
            sample = torch.empty(shape, device="meta", dtype=torch.half)
            noise = unet(sample, torch.tensor(999, device="meta"), encoder_hidden_states=context).sample
            pixels = vae.decode(torch.empty(max(f, 1), 4, h, w, device="meta", dtype=torch.half)).sample
        assert tuple(noise.shape) == shape
        assert tuple(pixels.shape) == (max(f, 1), 3, scenario.height, scenario.width)
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("family", "pipeline", "width"), [
    ("damo", "TextToVideoSDPipeline", 1024),  # OpenCLIP ViT-H/14 text tower, 23 layers
    ("sd15", "StableDiffusionPipeline", 768),  # CLIP ViT-L/14 text tower, 12 layers
])
def test_full_size_pipelines_assemble(family: str, pipeline: str, width: int) -> None:
    """The full-size components wrapped in the real pipeline, on meta tensors (no memory, no time)."""
    import torch

    pipe = gpu.build_pipeline(family, tiny=False, device="meta", dtype=torch.float16)
    assert type(pipe).__name__ == pipeline
    ids = pipe.tokenizer(gpu.PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert tuple(ids.shape) == (1, 77) and int(ids.max()) < pipe.text_encoder.config.vocab_size
    hidden = pipe.text_encoder(ids.to("meta")).last_hidden_state
    assert tuple(hidden.shape) == (1, 77, width) == (1, 77, pipe.unet.config.cross_attention_dim)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", None),
    ("Tesla T4", 65.0),
    ("NVIDIA GeForce RTX 4090", 165.0),
    ("NVIDIA GeForce RTX 3060", None),
])
def test_peak_table(name: str, peak: float | None) -> None:
    assert gpu.peak_tflops_for(name) == peak
