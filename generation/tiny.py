"""Tiny random-weight twins of the real pipelines, for tests, CI, benchmarks and a GPU-less demo.

They are built from the real architecture classes (the same ones the real repos load), with
a small byte-level BPE vocabulary the project writes itself, under a fixed seed so that every
machine builds the same weights. Built once into the model cache with `save_pretrained`, they
are then loaded through the same `from_pretrained` path as the real models: a test on a twin
exercises the real loading, scheduling, callback and decoding code.

The VAE has four blocks like the real one, so the latent is 1/8 of the image size and the
same size limits (multiples of 8) apply.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from generation.noise import quiet_known_warnings

log = logging.getLogger(__name__)

quiet_known_warnings()

#: bump when the architecture or vocabulary changes, so stale caches are rebuilt, not reused
TINY_VERSION = 1
TINY_MODELS = (
    "tiny-image",
    "tiny-image-flagged",
    "tiny-video",
    "tiny-sdxl",
    "tiny-wan",
    "tiny-wan-i2v",
    "tiny-ltx",
    "tiny-cogvideox",
    "tiny-upscale",
)
_MARKER = "tiny-build.json"
#: building seeds torch's global RNG: two builds in one process must not interleave
_BUILD_LOCK = threading.Lock()

SEED = 0
TEXT_DIM = 32
MAX_TOKENS = 77


def tiny_path(model_id: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "tiny" / f"{model_id}-v{TINY_VERSION}"


def ensure_tiny(model_id: str, cache_dir: Path) -> Path:
    """Return the directory of the saved twin, building it first if the cache lacks it.

    Safe when several processes race: each builds into its own temporary directory next to
    the target and renames it into place; the loser discards its copy. Within a process,
    builds are serialised (they seed torch's global RNG, which they fork and restore).
    """
    if model_id not in TINY_MODELS:
        raise ValueError(f"no tiny twin named {model_id!r}; known: {', '.join(TINY_MODELS)}")
    target = tiny_path(model_id, cache_dir)
    if (target / _MARKER).is_file():
        return target
    with _BUILD_LOCK:
        if (target / _MARKER).is_file():
            return target
        _build_into(model_id, target)
    return target


def _build_into(model_id: str, target: Path) -> None:
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=target.parent))
    try:
        log.info("building tiny twin %s into %s", model_id, target)
        with torch.random.fork_rng(devices=[]):
            pipe = build_tiny_pipeline(model_id)
        pipe.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"model": model_id, "version": TINY_VERSION, "seed": SEED}))
        if target.exists() and not (target / _MARKER).is_file():
            # a half-written directory from an older, non-atomic build: move it aside
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
            log.debug("another process built %s first", model_id)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- the components -----------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tokenizer_files(directory: Path) -> None:
    """A small CLIP-style vocabulary: every byte, with and without `</w>`, plus letter pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = list(_bytes_to_unicode().values())
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for ch in chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = ["#version: 0.2"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            for suffix in ("", "</w>"):
                merges.append(f"{a} {b}{suffix}")
                vocab.setdefault(f"{a}{b}{suffix}", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        # local_files_only is saved into tokenizer_config.json: fix it, or the twin's bytes
        # would depend on whether HF_HUB_OFFLINE happened to be set when it was built
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS, local_files_only=True)


def _text_encoder(vocab_size: int) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        vocab_size=vocab_size,
    )
    return CLIPTextModel(config).eval()


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    # the real repos ship a scaled-linear DDIM/PNDM config; the spec swaps in its own scheduler
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _flag_everything_checker() -> tuple[Any, Any]:
    """A small real `StableDiffusionSafetyChecker` (and its CLIP feature extractor) that flags every
    picture: its concept thresholds sit below any cosine similarity. It lets tests and demos see
    what a server's NSFW policy does without generating anything that would need it."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(SEED)
    small = {"hidden_size": TEXT_DIM, "intermediate_size": 37, "num_attention_heads": 4}
    small["num_hidden_layers"] = 1
    config = CLIPConfig(
        text_config={**small, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=TEXT_DIM,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # a cosine similarity is at least -1
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def _stable_diffusion(tokenizer: Any, text_encoder: Any, vae: Any, *, checker: Any, extractor: Any) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from generation.tiny_families import sd_unet

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=sd_unet(UNet2DConditionModel),
        scheduler=_scheduler(),
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=checker is not None,
    )


def build_tiny_pipeline(model_id: str) -> Any:
    """Build the twin in memory (fp32, CPU), identical on every machine for a given torch."""

    from generation import tiny_families

    transformer_era = {
        "tiny-wan": lambda: tiny_families.build_wan(image_to_video=False),
        "tiny-wan-i2v": lambda: tiny_families.build_wan(image_to_video=True),
        "tiny-ltx": tiny_families.build_ltx,
        "tiny-cogvideox": tiny_families.build_cogvideox,
    }
    if model_id in transformer_era:
        return transformer_era[model_id]()
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(len(tokenizer))
    vae = tiny_families.sd_vae(levels=4)
    if model_id in ("tiny-image", "tiny-image-flagged"):
        checker, extractor = _flag_everything_checker() if model_id == "tiny-image-flagged" else (None, None)
        return _stable_diffusion(tokenizer, text_encoder, vae, checker=checker, extractor=extractor)
    if model_id == "tiny-video":
        from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

        unet = tiny_families.sd_unet(
            UNet3DConditionModel,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            block_out_channels=(16, 32),
        )
        return TextToVideoSDPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler()
        )
    if model_id == "tiny-upscale":
        return tiny_families.build_upscale(tokenizer=tokenizer, text_encoder=text_encoder)
    if model_id == "tiny-sdxl":
        return tiny_families.build_sdxl(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)
    raise ValueError(f"no tiny twin named {model_id!r}")
