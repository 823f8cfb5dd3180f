"""Tiny (and one small) randomly initialised models shaped like the real families, saved as ordinary diffusers folders.

They load through the same ``from_pretrained(name_or_path)`` code as the real checkpoints, so the quickstart and
the tests exercise every real code path offline and in seconds. The weights are a pure function of the seed.
The small SD-1.x model (:func:`build_small_sd1`) is large enough that a CPU spends its time in the networks, for
timing training against other trainers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    ModelMixin,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, PreTrainedModel

from sdft.tokenizers import write_clip_tokenizer

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
#: SDXL's micro-conditioning: original size, crop corner and target size, two numbers each (Podell et al. 2023)
TIME_IDS = 6
#: SD 2.x and SDXL's OpenCLIP tokenizers pad with "!" (id 0) where OpenAI CLIP's pads with its end token
OPENCLIP_PAD = "!"

Built = TypeVar("Built")


def seeded(seed: int, build: Callable[[], Built]) -> Built:
    """What ``build`` returns when torch's global generator starts at ``seed``; the generator is restored after.

    Args:
        seed: the seed the weights are a function of.
        build: constructs the randomly initialised modules, always in the same order.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def save_pipeline(pipeline: DiffusionPipeline, directory: Path) -> Path:
    """Save ``pipeline`` as a diffusers folder with safetensors weights; return the folder. A pipeline of modules
    on the meta device (an architecture without weights) is saved as its configs alone, which is what a family
    reads to build it on the meta device again (a memory plan, :mod:`sdft.memory`)."""
    modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
    if not any(p.is_meta for module in modules for p in module.parameters()):
        pipeline.save_pretrained(directory, safe_serialization=True)
        return directory
    pipeline.save_config(directory)
    for name, component in pipeline.components.items():
        if isinstance(component, ModelMixin):
            component.save_config(directory / name)
        elif isinstance(component, PreTrainedModel):
            component.config.save_pretrained(directory / name)
        elif component is not None:  # tokenizers, processors, schedulers
            component.save_pretrained(directory / name)
    return directory


def clip_tokenizer(directory: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """The offline CLIP tokenizer (written to ``directory``), padding with ``pad_token`` if given."""
    options = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(directory), **options)


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


def tiny_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A three-level KL autoencoder: 4 latent channels, spatial factor 4, latents scaled by ``scaling_factor``."""
    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_clip_config(hidden_size: int = 32, openclip: bool = False) -> CLIPTextConfig:
    """A two-layer CLIP text encoder's config over the full 49,408-token CLIP vocabulary.

    Args:
        hidden_size: the width of its hidden states (and of the projected pooled embedding).
        openclip: OpenCLIP's style (GELU, padded with ``!``, id 0) instead of OpenAI CLIP's (quick GELU, padded with
            its end token).
    """
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if openclip else "quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if openclip else 49407,
        projection_dim=hidden_size,
    )


def tiny_clip_text_encoder(
    hidden_size: int = 32, with_projection: bool = False, openclip: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A two-layer CLIP text encoder over the full 49,408-token CLIP vocabulary.

    Args:
        hidden_size: the width of its hidden states (and of the projected pooled embedding).
        with_projection: also project the pooled embedding, as SDXL's second and SD3's CLIP encoders do.
        openclip: OpenCLIP's style (see :func:`tiny_clip_config`), as SD 2.x's and SDXL's second encoder.
    """
    config = tiny_clip_config(hidden_size, openclip)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def tiny_openclip_text_encoder(
    hidden_size: int = 32, with_projection: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A two-layer OpenCLIP-style text encoder (GELU, padded with ``!``) over the 49,408-token CLIP vocabulary.

    Args:
        hidden_size: the width of its hidden states (and of the projected pooled embedding).
        with_projection: also project the pooled embedding, as SDXL's second text encoder does.
    """
    return tiny_clip_text_encoder(hidden_size, with_projection, openclip=True)


def tiny_sd2_unet(cross_attention_dim: int = 32) -> UNet2DConditionModel:
    """SD 2.x's UNet shape in miniature: linear attention projections and a head count per level."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=16,
    )


def tiny_sdxl_unet(cross_attention_dim: int, pooled_dim: int, time_embed_dim: int = 8) -> UNet2DConditionModel:
    """SDXL's UNet shape in miniature: no attention at the first level, and the "text_time" added conditioning
    (the pooled text embedding and the six embedded time ids, joined into the timestep embedding).

    Args:
        cross_attention_dim: width of the text hidden states (both encoders' widths together).
        pooled_dim: width of the second text encoder's projected pooled embedding.
        time_embed_dim: width of each time id's sinusoidal embedding.
    """
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=TIME_IDS * time_embed_dim + pooled_dim,
        norm_num_groups=16,
    )


def sd_pipeline(
    modules: tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel], tokenizer: CLIPTokenizer, prediction_type: str
) -> StableDiffusionPipeline:
    """An SD 1.x/2.x pipeline of a UNet, a VAE and a text encoder, with SD's DDIM scheduler and no safety checker.

    Args:
        modules: the UNet, the VAE and the text encoder, in that order.
        tokenizer: the text encoder's tokenizer.
        prediction_type: what the UNet predicts, ``epsilon`` or ``v_prediction``.
    """
    unet, vae, text_encoder = modules
    scheduler = DDIMScheduler(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sd1(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD-1.x-shaped pipeline and save it as a diffusers folder (safetensors); return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    modules = seeded(seed, lambda: (tiny_sd1_unet(), tiny_vae(), tiny_clip_text_encoder()))
    return save_pipeline(sd_pipeline(modules, clip_tokenizer(directory / "tokenizer"), "epsilon"), directory)


def small_sd1_modules() -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """SD 1.x's UNet at a fifth of its widths (64-256 channels over its four levels), its factor-8 VAE at a quarter
    (32-128) and a four-layer CLIP text encoder of width 256, in construction order."""
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=2,
        sample_size=16,
        cross_attention_dim=256,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=128,
        scaling_factor=0.18215,
    )
    text_config = tiny_clip_config(hidden_size=256)
    text_config.num_hidden_layers, text_config.intermediate_size = 4, 1024
    return unet, vae, CLIPTextModel(text_config)


def build_small_sd1(directory: str | Path, seed: int = 0) -> Path:
    """Build a small SD-1.x-shaped pipeline (see :func:`small_sd1_modules`; 128 px images make 16x16 latents) and
    save it as a diffusers folder (safetensors); return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    modules = seeded(seed, small_sd1_modules)
    return save_pipeline(sd_pipeline(modules, clip_tokenizer(directory / "tokenizer"), "epsilon"), directory)


def build_tiny_sd2_v(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD-2.x-shaped v-prediction pipeline (as the 768 px SD 2 models) and save it as a diffusers folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    modules = seeded(seed, lambda: (tiny_sd2_unet(), tiny_vae(), tiny_openclip_text_encoder()))
    tokenizer = clip_tokenizer(directory / "tokenizer", OPENCLIP_PAD)
    return save_pipeline(sd_pipeline(modules, tokenizer, "v_prediction"), directory)


def tiny_sdxl_modules() -> tuple[CLIPTextModel, CLIPTextModelWithProjection, UNet2DConditionModel, AutoencoderKL]:
    """SDXL's modules in construction order: a CLIP-L-like text encoder of width 32, an OpenCLIP-bigG-like one of 48
    with a projected pooled output, a UNet with SDXL's added conditioning and a VAE with SDXL's scaling factor."""
    text_encoder, text_encoder_2 = tiny_clip_text_encoder(32), tiny_openclip_text_encoder(48, with_projection=True)
    return text_encoder, text_encoder_2, tiny_sdxl_unet(32 + 48, pooled_dim=48), tiny_vae(scaling_factor=0.13025)


def build_tiny_sdxl(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SDXL-shaped pipeline (see :func:`tiny_sdxl_modules`) and save it as a diffusers folder
    (safetensors); return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    return save_sdxl(seeded(seed, tiny_sdxl_modules), Path(directory))


def save_sdxl(
    modules: tuple[CLIPTextModel, CLIPTextModelWithProjection, UNet2DConditionModel, AutoencoderKL], directory: Path
) -> Path:
    """Save SDXL's modules (in :func:`tiny_sdxl_modules`' order) with the offline CLIP and OpenCLIP tokenizers and
    SDXL's Euler scheduler as a diffusers folder (safetensors); return the folder."""
    text_encoder, text_encoder_2, unet, vae = modules
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(directory / "tokenizer"),
        tokenizer_2=clip_tokenizer(directory / "tokenizer_2", OPENCLIP_PAD),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading"),
        add_watermarker=False,
    )
    return save_pipeline(pipeline, directory)
