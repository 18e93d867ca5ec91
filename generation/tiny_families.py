"""Tiny twins of the transformer-era pipelines: Wan (text and image to video), LTX, CogVideoX, SDXL.

Same rules as `generation.tiny`: the real architecture classes at toy sizes, under a fixed
seed, with a vocabulary we write ourselves (no hub). Each twin keeps its real model's
latent geometry where a rule depends on it: LTX compresses 32x in space and 8x in time (so
8k+1 frames, multiples of 32), Wan and CogVideoX 8x/4x (4k+1 frames), and Wan 2.2's
image-to-video twin has the 48-channel, 16x VAE of TI2V-5B. Kept small enough that building
and running one takes about a second on a CPU.
"""

from __future__ import annotations

import logging
import string
from typing import Any

log = logging.getLogger(__name__)

SEED = 0
TEXT_DIM = 32
#: the Wan/LTX/CogVideoX pipelines tokenise to a fixed length; keep the twins' short
T5_MAX_TOKENS = 64
#: the UNet every Stable Diffusion-family twin starts from (SD, its text-to-video sibling, SDXL, the
#: x4 upscaler): two levels, cross-attention on the CLIP text; each overrides what its real model changes
SD_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_DIM,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def sd_unet(unet_class: Any, **overrides: Any) -> Any:
    """`SD_UNET` with a family's `overrides`, built under the fixed seed (so a twin's weights depend
    on nothing built before it)."""
    import torch

    torch.manual_seed(SEED)
    return unet_class(**{**SD_UNET, **overrides}).eval()


def sd_vae(*, levels: int, **overrides: Any) -> Any:
    """The Stable Diffusion VAE at toy width, with `levels` blocks: each level past the first halves
    the picture (4 for SD's 8x latent, 3 for the upscaler's 4x)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8, 16, 16, 16)[:levels],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        **overrides,
    ).eval()


def t5_tokenizer() -> Any:
    """A small T5-style (SentencePiece unigram) tokenizer built in memory: letters, digits, marks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + ch, -2.5) for ch in string.ascii_lowercase]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_TOKENS,
    )


def t5_encoder(vocab_size: int, *, umt5: bool) -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(SEED)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return model_cls(config).eval()


def _wan_vae(*, ti2v: bool) -> Any:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(SEED)
    if not ti2v:
        return AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
    # Wan 2.2's VAE: 2x2 pixel patches in, 48 latent channels, 16x spatial compression
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    ).eval()


def _wan_transformer(channels: int) -> Any:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(SEED)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def _flow_unipc(shift: float) -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000
    )


def build_wan(*, image_to_video: bool) -> Any:
    from diffusers import WanImageToVideoPipeline, WanPipeline

    tokenizer = t5_tokenizer()
    parts = {"tokenizer": tokenizer, "text_encoder": t5_encoder(len(tokenizer), umt5=True)}
    if not image_to_video:
        return WanPipeline(
            **parts, vae=_wan_vae(ti2v=False), scheduler=_flow_unipc(3.0), transformer=_wan_transformer(16)
        )
    # the TI2V-5B layout: no CLIP image encoder, the first frame's latent is pinned (expand_timesteps)
    return WanImageToVideoPipeline(
        **parts,
        vae=_wan_vae(ti2v=True),
        scheduler=_flow_unipc(5.0),
        transformer=_wan_transformer(48),
        expand_timesteps=True,
    )


def build_ltx() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = t5_tokenizer()
    torch.manual_seed(SEED)
    # 4x4 pixel patches and three 2x space-time scalings: 32x in space, 8x in time, like LTX-Video
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    torch.manual_seed(SEED)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=TEXT_DIM,
    ).eval()
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=t5_encoder(len(tokenizer), umt5=False),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_cogvideox() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = t5_tokenizer()
    torch.manual_seed(SEED)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    torch.manual_seed(SEED)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=TEXT_DIM,
        num_layers=1,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,  # the pipeline pads prompts to 226 tokens, as for the real model
    ).eval()
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(len(tokenizer), umt5=False),
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )


def build_sdxl(*, tokenizer: Any, text_encoder: Any, vae: Any) -> Any:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder.config).eval()
    unet = sd_unet(
        UNet2DConditionModel,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        # six size/crop numbers embedded at 8 each, plus the pooled text of encoder 2
        projection_class_embeddings_input_dim=8 * 6 + TEXT_DIM,
        cross_attention_dim=TEXT_DIM * 2,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
        ),
        add_watermarker=False,
    )


def build_upscale(*, tokenizer: Any, text_encoder: Any) -> Any:
    """The x4 upscaler's layout: a 3-block VAE (4x, scaling 0.08333) whose latent is the size of the
    low-resolution picture, and a UNet that reads 4 latent + 3 picture channels and embeds the
    noise level added to the picture as a class label."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    vae = sd_vae(levels=3, scaling_factor=0.08333)
    unet = sd_unet(UNet2DConditionModel, sample_size=16, in_channels=7, num_class_embeds=1000)
    schedule = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear"}
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(**schedule),
        scheduler=DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        max_noise_level=350,
    )
