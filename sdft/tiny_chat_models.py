"""Tiny, randomly initialised models of the families whose text encoder is a chat language model (Z-Image's and
FLUX.2 [klein]'s Qwen3, Qwen-Image's Qwen2.5-VL), saved as ordinary diffusers folders.

As :mod:`sdft.tiny_transformer_models` does for SD3 and Flux.1, they load through the same
``from_pretrained(name_or_path)`` code as the real checkpoints: the language model is a real transformers model of
the real architecture at a tiny width, and its tokenizer a real byte-level BPE with the chat markers and a chat
template (:func:`sdft.tokenizers.write_qwen_tokenizer`), so the prompt goes through the pipeline's own template
offline. The weights are a pure function of the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from torch import nn
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from sdft.tiny_models import save_pipeline, seeded
from sdft.tiny_transformer_models import FLUX_LATENTS, tiny_flow_vae
from sdft.tokenizers import write_mistral_processor, write_qwen_tokenizer

#: the width of the tiny Qwen3 text encoder (Z-Image's is 2,560)
QWEN3_WIDTH = 40
#: the scheduler of Tongyi-MAI/Z-Image-Turbo: a static shift of 3
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def save_chat_pipeline(
    pipeline_class: type, scheduler: dict[str, Any], modules: tuple[nn.Module, ...], tokenizer: Any, directory: Path
) -> Path:
    """Save a chat-encoder family's pipeline of ``modules`` (transformer, VAE, text encoder), its tokenizer (or
    processor) and its scheduler config as a diffusers folder (safetensors); return the folder."""
    transformer, vae, text_encoder = modules
    pipeline = pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return save_pipeline(pipeline, directory)


def qwen_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The offline Qwen tokenizer, written to ``directory``."""
    return AutoTokenizer.from_pretrained(write_qwen_tokenizer(directory))


def qwen3_config(vocab_size: int, layers: int, width: int = QWEN3_WIDTH) -> Qwen3Config:
    """A tiny Qwen3 (grouped-query attention with RMS-normed q and k, SwiGLU) of ``layers`` layers.

    Args:
        vocab_size: the tokenizer's size.
        layers: hidden layers (FLUX.2 reads layer 27, so it needs 27).
        width: the hidden size.
    """
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )


def tiny_qwen3(vocab_size: int, width: int = QWEN3_WIDTH) -> Qwen3Model:
    """A three-layer Qwen3 as Z-Image's encoder, without the language-model head.

    Args:
        vocab_size: the tokenizer's size.
        width: the hidden size (the transformer's ``cap_feat_dim``).
    """
    return Qwen3Model(qwen3_config(vocab_size, 3, width))


def tiny_zimage_transformer() -> ZImageTransformer2DModel:
    """Two main layers and Z-Image's two noise and two context refiners, 2x2 patches, rotary axes (4, 6, 6)."""
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=2,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=QWEN3_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    )


def tiny_zimage_modules(vocab_size: int) -> tuple[nn.Module, ...]:
    """Z-Image's modules in construction order: the transformer, the VAE (FLUX.1's latent scaling) and Qwen3.

    Args:
        vocab_size: the Qwen tokenizer's size.
    """
    return tiny_zimage_transformer(), tiny_flow_vae(**FLUX_LATENTS), tiny_qwen3(vocab_size)


def build_tiny_zimage(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny Z-Image-shaped pipeline (Qwen3, single-stream DiT) and save it as a diffusers folder
    (safetensors) that ``ZImagePipeline.from_pretrained`` loads; return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    tokenizer = qwen_tokenizer(directory / "tokenizer")
    modules = seeded(seed, lambda: tiny_zimage_modules(len(tokenizer)))
    return save_chat_pipeline(ZImagePipeline, ZIMAGE_SCHEDULER, modules, tokenizer, directory)


#: the scheduler of black-forest-labs/FLUX.2-klein: a resolution-dependent shift, which the pipeline computes itself
FLUX2_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
#: the hidden layers of Qwen3 FLUX.2 reads (the deepest sets the tiny encoder's depth)
FLUX2_LAYERS = 27


def tiny_flux2_vae() -> AutoencoderKLFlux2:
    """A three-level FLUX.2 autoencoder (factor 4, 4 latent channels, 2x2 patches) whose batch norm holds random
    running statistics, so the latents' normalisation is exercised (a fresh norm's mean 0 and variance 1 would
    hide it)."""
    vae = AutoencoderKLFlux2(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=32,
    )
    vae.bn.running_mean.copy_(0.3 * torch.randn(vae.bn.running_mean.shape))
    vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape))
    return vae


def tiny_flux2_transformer(guidance_embeds: bool = False) -> Flux2Transformer2DModel:
    """One double-stream and two single-stream blocks over 16-channel tokens (4 latent channels x 2x2), reading three
    stacked encoder layers of width 40; with a guidance embedding for [dev], without for [klein]."""
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * QWEN3_WIDTH,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def tiny_flux2_klein_modules(vocab_size: int) -> tuple[nn.Module, ...]:
    """FLUX.2 [klein]'s modules in construction order: the transformer, the VAE and Qwen3 (with its head).

    Args:
        vocab_size: the Qwen tokenizer's size.
    """
    with torch.no_grad():
        vae = tiny_flux2_vae()
    return tiny_flux2_transformer(), vae, Qwen3ForCausalLM(qwen3_config(vocab_size, FLUX2_LAYERS))


def build_tiny_flux2_klein(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny FLUX.2 [klein]-shaped pipeline (Qwen3, double- and single-stream transformer, FLUX.2 autoencoder)
    and save it as a diffusers folder (safetensors) that ``Flux2KleinPipeline.from_pretrained`` loads; return it.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    tokenizer = qwen_tokenizer(directory / "tokenizer")
    modules = seeded(seed, lambda: tiny_flux2_klein_modules(len(tokenizer)))
    return save_chat_pipeline(Flux2KleinPipeline, FLUX2_SCHEDULER, modules, tokenizer, directory)


#: the scheduler of Qwen/Qwen-Image: a resolution-dependent shift up to 0.9 at 8,192 tokens, ending at sigma 0.02
QWEN_IMAGE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


def tiny_qwen2_5_vl(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLForConditionalGeneration:
    """A two-layer Qwen2.5-VL (multimodal rotary sections 2/3/5) with a one-block vision tower, as Qwen-Image's
    encoder; its image and video token ids lie past the tokenizer's vocabulary (prompts never hold them)."""
    size = len(tokenizer)
    text = qwen3_config(size, 2).to_dict()
    text.update(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 5]}, model_type="qwen2_5_vl_text")
    text.update(bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, head_dim=None)
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": QWEN3_WIDTH,
              "fullatt_block_indexes": [0]}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        vocab_size=size,
        image_token_id=size,
        video_token_id=size + 1,
        vision_start_token_id=size + 2,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


#: the factor on the tiny Qwen-Image decoder's last convolution: at its random initialisation a latent change of 0.5
#: moved pixels by 0.05 (of 2), too little for a few training steps to show in 8-bit images
DECODER_GAIN = 6.0


def tiny_qwen_image_modules(tokenizer: PreTrainedTokenizerBase) -> tuple[nn.Module, ...]:
    """Qwen-Image's modules in construction order: the MMDiT, the autoencoder (4 latent channels, factor 4, with
    per-channel latent statistics of its own) and Qwen2.5-VL."""
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=QWEN3_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.12, -0.31, 0.27, -0.05],
        latents_std=[1.6, 0.7, 1.3, 2.1],
    )
    with torch.no_grad():  # a random decoder this small barely moves its pixels with its latents: amplify its output
        vae.decoder.conv_out.weight.mul_(DECODER_GAIN)
    return transformer, vae, tiny_qwen2_5_vl(tokenizer)


def build_tiny_qwen_image(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny Qwen-Image-shaped pipeline (Qwen2.5-VL, MMDiT, Qwen-Image autoencoder) and save it as a diffusers
    folder (safetensors) that ``QwenImagePipeline.from_pretrained`` loads; return the folder.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    tokenizer = qwen_tokenizer(directory / "tokenizer")
    modules = seeded(seed, lambda: tiny_qwen_image_modules(tokenizer))
    return save_chat_pipeline(QwenImagePipeline, QWEN_IMAGE_SCHEDULER, modules, tokenizer, directory)


#: the hidden layers of Mistral Small 3 FLUX.2 [dev] reads (the deepest sets the tiny encoder's depth)
FLUX2_DEV_LAYERS = 30


def tiny_mistral3(processor: Any) -> Mistral3ForConditionalGeneration:
    """A 30-layer Mistral of width 40 with a one-layer Pixtral vision tower, as FLUX.2 [dev]'s Mistral Small 3."""
    tokenizer = processor.tokenizer
    text = {"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": QWEN3_WIDTH,
            "intermediate_size": 2 * QWEN3_WIDTH, "num_hidden_layers": FLUX2_DEV_LAYERS, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 2048,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    vision = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "head_dim": 8, "patch_size": 16, "image_size": 64}  # fmt: skip
    config = Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=1,
        tie_word_embeddings=True,
    )
    return Mistral3ForConditionalGeneration(config)


def tiny_flux2_dev_modules(processor: Any) -> tuple[nn.Module, ...]:
    """FLUX.2 [dev]'s modules in construction order: the guidance-distilled transformer, the VAE and Mistral 3."""
    with torch.no_grad():
        vae = tiny_flux2_vae()
    return tiny_flux2_transformer(guidance_embeds=True), vae, tiny_mistral3(processor)


def build_tiny_flux2_dev(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny FLUX.2 [dev]-shaped pipeline (Mistral 3 with its Pixtral processor, guidance-distilled
    transformer, FLUX.2 autoencoder) and save it as a diffusers folder that ``Flux2Pipeline.from_pretrained`` loads.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
    """
    directory = Path(directory)
    processor = AutoProcessor.from_pretrained(write_mistral_processor(directory / "tokenizer"))
    modules = seeded(seed, lambda: tiny_flux2_dev_modules(processor))
    return save_chat_pipeline(Flux2Pipeline, FLUX2_SCHEDULER, modules, processor, directory)
