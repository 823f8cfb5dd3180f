"""Tiny, randomly initialised rectified-flow transformer models shaped like SD3.5 and Flux.1, saved as ordinary
diffusers folders.

Like :mod:`sdft.tiny_models`, they load through the same ``from_pretrained(name_or_path)`` code as the real
checkpoints, with real tokenizers built offline (CLIP's BPE, and a T5 Unigram tokenizer from
:func:`sdft.tokenizers.write_t5_tokenizer`), so every code path of the SD3 and Flux families runs offline and in
seconds. The weights are a pure function of the seed.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from torch import nn
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from sdft.tiny_models import clip_tokenizer, save_pipeline, seeded, tiny_clip_text_encoder
from sdft.tokenizers import write_t5_tokenizer

#: the widths of the tiny models' text encoders (CLIP-L, CLIP-G, T5): distinct, so a mixed-up encoder fails loudly
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 48, 96
#: the latent scale and shift of the real VAEs (SD3's and Flux.1's), so the tiny models exercise both
SD3_LATENTS = {"shift_factor": 0.0609, "scaling_factor": 1.5035}
FLUX_LATENTS = {"shift_factor": 0.1159, "scaling_factor": 0.3611}
#: the schedulers of stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def tiny_t5_encoder(vocab_size: int, d_model: int = T5_WIDTH) -> T5EncoderModel:
    """A two-layer T5 v1.1-style encoder (gated GELU, relative attention, dropout as T5's own 0.1).

    Args:
        vocab_size: the tokenizer's size.
        d_model: the width of its hidden states (the transformer's ``joint_attention_dim``).
    """
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=16,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def tiny_flow_vae(shift_factor: float, scaling_factor: float) -> AutoencoderKL:
    """A three-level KL autoencoder without quant convs (as SD3's and Flux's): 4 latent channels, factor 4.

    Args:
        shift_factor: the latent mean subtracted before scaling.
        scaling_factor: the latent scale.
    """
    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )


def tiny_sd3_transformer() -> SD3Transformer2DModel:
    """A four-block MMDiT shaped like SD3.5 medium: 2x2 patches, RMS-normed q/k, a dual-attention first block."""
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def tiny_flux_transformer() -> FluxTransformer2DModel:
    """Two double-stream and two single-stream blocks, with the guidance embedding of FLUX.1-dev."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_L_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def t5_tokenizer(directory: Path) -> T5TokenizerFast:
    """The offline T5 Unigram tokenizer, written to ``directory``."""
    return T5TokenizerFast.from_pretrained(write_t5_tokenizer(directory))


def tiny_sd3_modules(t5_vocab_size: int) -> tuple[nn.Module, ...]:
    """SD3.5's modules in construction order: the MMDiT, the VAE, CLIP-L and CLIP-G (projected) and T5.

    Args:
        t5_vocab_size: the T5 tokenizer's size.
    """
    transformer, vae = tiny_sd3_transformer(), tiny_flow_vae(**SD3_LATENTS)
    clip_l = tiny_clip_text_encoder(CLIP_L_WIDTH, with_projection=True)
    clip_g = tiny_clip_text_encoder(CLIP_G_WIDTH, with_projection=True)
    return transformer, vae, clip_l, clip_g, tiny_t5_encoder(t5_vocab_size)


def tiny_flux_modules(t5_vocab_size: int) -> tuple[nn.Module, ...]:
    """FLUX.1-dev's modules in construction order: the transformer, the VAE, CLIP-L and T5.

    Args:
        t5_vocab_size: the T5 tokenizer's size.
    """
    transformer, vae = tiny_flux_transformer(), tiny_flow_vae(**FLUX_LATENTS)
    return transformer, vae, tiny_clip_text_encoder(CLIP_L_WIDTH), tiny_t5_encoder(t5_vocab_size)


def build_tiny_sd3(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD3.5-shaped pipeline (CLIP-L, CLIP-G, T5, MMDiT) and save it as a diffusers folder
    (safetensors) that ``StableDiffusion3Pipeline.from_pretrained`` loads; return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    tokenizer_3 = t5_tokenizer(directory / "tokenizer_3")
    return save_sd3(seeded(seed, lambda: tiny_sd3_modules(len(tokenizer_3))), tokenizer_3, directory)


def save_sd3(modules: tuple[nn.Module, ...], tokenizer_3: T5TokenizerFast, directory: Path) -> Path:
    """Save SD3.5's modules (in :func:`tiny_sd3_modules`' order) with the offline CLIP tokenizers, ``tokenizer_3``
    (written in ``directory``) and SD3.5's scheduler as a diffusers folder (safetensors); return the folder."""
    transformer, vae, clip_l, clip_g, t5 = modules
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(directory / "tokenizer"),
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer(directory / "tokenizer_2"),
        text_encoder_3=t5,
        tokenizer_3=tokenizer_3,
    )
    return save_pipeline(pipeline, directory)


def build_tiny_flux(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny FLUX.1-dev-shaped pipeline (CLIP-L pooled, T5, guidance-distilled transformer) and save it as a
    diffusers folder (safetensors) that ``FluxPipeline.from_pretrained`` loads; return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    tokenizer_2 = t5_tokenizer(directory / "tokenizer_2")
    return save_flux(seeded(seed, lambda: tiny_flux_modules(len(tokenizer_2))), tokenizer_2, directory)


def save_flux(modules: tuple[nn.Module, ...], tokenizer_2: T5TokenizerFast, directory: Path) -> Path:
    """Save FLUX.1's modules (in :func:`tiny_flux_modules`' order) with the offline CLIP tokenizer, ``tokenizer_2``
    (written in ``directory``) and FLUX.1-dev's scheduler as a diffusers folder (safetensors); return the folder."""
    transformer, vae, clip_l, t5 = modules
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(directory / "tokenizer"),
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return save_pipeline(pipeline, directory)
