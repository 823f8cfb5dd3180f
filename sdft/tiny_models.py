"""Tiny, randomly initialised models shaped like the real families, saved as ordinary diffusers folders.

They load through the same ``from_pretrained(name_or_path)`` code as the real checkpoints, so the quickstart and
the tests exercise every real code path offline and in seconds. The weights are a pure function of the seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdft.tokenizers import write_clip_tokenizer

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def tiny_sd1_unet() -> UNet2DConditionModel:
    """A two-level UNet with cross-attention at the first level, 32-dim text conditioning."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_vae() -> AutoencoderKL:
    """A three-level KL autoencoder: 4 latent channels, spatial factor 4."""
    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_clip_text_encoder(hidden_size: int = 32) -> CLIPTextModel:
    """A two-layer CLIP text encoder over the full 49,408-token CLIP vocabulary."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=hidden_size,
    )
    return CLIPTextModel(config)


def build_tiny_sd1(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD-1.x-shaped pipeline and save it as a diffusers folder (safetensors); return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_encoder = tiny_sd1_unet(), tiny_vae(), tiny_clip_text_encoder()
    tokenizer_dir = write_clip_tokenizer(Path(directory) / "tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
