"""Stable Diffusion 1.5, SDXL base 1.0, SD3.5 medium, FLUX.1-dev, Z-Image, Qwen-Image, FLUX.2 [dev] and FLUX.2
[klein] 4B at their real sizes, saved as ordinary diffusers folders: the shapes of the published models (configs
written out here, nothing downloaded). With random weights (bfloat16, a function of the seed) they time training on
a GPU; built on the ``meta`` device they cost nothing, which is how the parameter counts are checked against the
published models, and :func:`architecture_folder` saves them as configs alone for a memory plan (:mod:`sdft.memory`).

The ``*_modules`` functions return the modules in the order their ``save_*`` functions take them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from torch import nn
from transformers import (
    AutoProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
)

from sdft.families import (
    Flux,
    Flux2,
    Flux2Klein,
    ModelFamily,
    QwenImage,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
    ZImage,
)
from sdft.tiny_chat_models import (
    FLUX2_SCHEDULER,
    QWEN_IMAGE_SCHEDULER,
    ZIMAGE_SCHEDULER,
    qwen_tokenizer,
    save_chat_pipeline,
)
from sdft.tiny_models import clip_tokenizer, save_pipeline, save_sdxl, sd_pipeline, seeded, tiny_clip_config
from sdft.tiny_transformer_models import FLUX_LATENTS, SD3_LATENTS, save_flux, save_sd3, t5_tokenizer
from sdft.tokenizers import write_mistral_processor

#: stable-diffusion-v1-5's UNet (its other settings are UNet2DConditionModel's defaults)
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
#: stable-diffusion-xl-base-1.0's UNet
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: stable-diffusion-3.5-medium's MMDiT
SD35_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
#: FLUX.1-dev's transformer
FLUX_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
#: the 8x KL autoencoder of SD 1.5 and SDXL (4 latent channels) and of SD3 and FLUX.1 (16, no quant convs)
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
FLOW_VAE = {**SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
#: T5 v1.1 XXL's encoder (SD3 and FLUX.1's third / second text encoder)
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
}


def clip_config(width: int, layers: int, heads: int, openclip: bool = False) -> CLIPTextConfig:
    """A CLIP text encoder config over the 49,408-token vocabulary: CLIP ViT-L/14's is (768, 12, 12), OpenCLIP
    ViT-bigG/14's (1280, 32, 20, openclip)."""
    config = tiny_clip_config(width, openclip)
    config.num_hidden_layers, config.num_attention_heads, config.intermediate_size = layers, heads, 4 * width
    return config


def clip_l(with_projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = clip_config(768, 12, 12)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def clip_big_g() -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(clip_config(1280, 32, 20, openclip=True))


def sd15_modules() -> tuple[nn.Module, ...]:
    """UNet, VAE and CLIP ViT-L/14 text encoder."""
    return UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD_VAE, sample_size=512), clip_l()


def sdxl_modules() -> tuple[nn.Module, ...]:
    """CLIP ViT-L/14, OpenCLIP ViT-bigG/14 (projected), UNet, VAE."""
    vae = AutoencoderKL(**SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    return clip_l(), clip_big_g(), UNet2DConditionModel(**SDXL_UNET), vae


def sd35_medium_modules() -> tuple[nn.Module, ...]:
    """MMDiT, VAE, CLIP-L and CLIP-G (both projected), T5-XXL."""
    vae = AutoencoderKL(**FLOW_VAE, sample_size=1024, **SD3_LATENTS)
    transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER)
    return transformer, vae, clip_l(with_projection=True), clip_big_g(), T5EncoderModel(T5Config(**T5_XXL))


def flux_dev_modules() -> tuple[nn.Module, ...]:
    """Transformer, VAE, CLIP-L, T5-XXL."""
    vae = AutoencoderKL(**FLOW_VAE, sample_size=1024, **FLUX_LATENTS)
    return FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), vae, clip_l(), T5EncoderModel(T5Config(**T5_XXL))


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def random_modules(seed: int, build: Callable[[], tuple[nn.Module, ...]]) -> tuple[nn.Module, ...]:
    """``build()`` in bfloat16, initialised on the GPU when there is one (a CPU takes minutes for FLUX.1)."""
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"), default_dtype(torch.bfloat16):
        return seeded(seed, build)


def build_sd15(directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    modules = random_modules(seed, sd15_modules)
    return save_pipeline(sd_pipeline(modules, clip_tokenizer(directory / "tokenizer"), "epsilon"), directory)


def build_sdxl(directory: str | Path, seed: int = 0) -> Path:
    return save_sdxl(random_modules(seed, sdxl_modules), Path(directory))


def build_sd35_medium(directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    return save_sd3(random_modules(seed, sd35_medium_modules), t5_tokenizer(directory / "tokenizer_3"), directory)


def build_flux_dev(directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    return save_flux(random_modules(seed, flux_dev_modules), t5_tokenizer(directory / "tokenizer_2"), directory)


#: Qwen3-4B: Z-Image's encoder (without its head) and FLUX.2 [klein] 4B's
QWEN3_4B = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
}
#: Qwen2.5-VL-7B-Instruct: Qwen-Image's encoder (language model and vision tower)
QWEN2_5_VL_7B_TEXT = {
    "model_type": "qwen2_5_vl_text",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
QWEN2_5_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
#: Mistral-Small-3.1-24B: FLUX.2 [dev]'s encoder (language model and Pixtral vision tower)
MISTRAL_SMALL_3_TEXT = {
    "model_type": "mistral",
    "vocab_size": 131072,
    "hidden_size": 5120,
    "intermediate_size": 32768,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 131072,
}
PIXTRAL_VISION = {
    "model_type": "pixtral",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "head_dim": 64,
    "patch_size": 14,
    "image_size": 1540,
}
#: FLUX.2 [klein] 4B's transformer (FLUX.2 [dev]'s is Flux2Transformer2DModel's defaults)
FLUX2_KLEIN_4B_TRANSFORMER = {
    "num_layers": 5,
    "num_single_layers": 20,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "joint_attention_dim": 7680,
    "guidance_embeds": False,
}


def zimage_modules() -> tuple[nn.Module, ...]:
    """Transformer (ZImageTransformer2DModel's defaults are Z-Image's), FLUX.1's VAE, Qwen3-4B."""
    vae = AutoencoderKL(**FLOW_VAE, sample_size=1024, **FLUX_LATENTS)
    return ZImageTransformer2DModel(), vae, Qwen3Model(Qwen3Config(**QWEN3_4B))


def qwen_image_modules() -> tuple[nn.Module, ...]:
    """Transformer and autoencoder (their classes' defaults are Qwen-Image's), Qwen2.5-VL-7B."""
    text = Qwen2_5_VLConfig(text_config=QWEN2_5_VL_7B_TEXT, vision_config=QWEN2_5_VL_7B_VISION, vocab_size=152064)
    return QwenImageTransformer2DModel(), AutoencoderKLQwenImage(), Qwen2_5_VLForConditionalGeneration(text)


def flux2_dev_modules() -> tuple[nn.Module, ...]:
    """Transformer and autoencoder (their classes' defaults are FLUX.2 [dev]'s), Mistral Small 3.1 24B."""
    config = Mistral3Config(
        text_config=MISTRAL_SMALL_3_TEXT,
        vision_config=PIXTRAL_VISION,
        spatial_merge_size=2,
        multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )
    return Flux2Transformer2DModel(), AutoencoderKLFlux2(), Mistral3ForConditionalGeneration(config)


def flux2_klein_modules() -> tuple[nn.Module, ...]:
    """FLUX.2 [klein] 4B's transformer, FLUX.2's autoencoder, Qwen3-4B with its head."""
    transformer = Flux2Transformer2DModel(**FLUX2_KLEIN_4B_TRANSFORMER)
    return transformer, AutoencoderKLFlux2(), Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))


def save_meta(build: Callable[[], tuple[nn.Module, ...]], save: Callable[[tuple[nn.Module, ...]], Path]) -> Path:
    with torch.device("meta"):
        modules = build()
    return save(modules)


#: each published architecture: its family, and how to save it (configs alone) in a folder
ARCHITECTURES: dict[str, tuple[type[ModelFamily], Callable[[Path], Path]]] = {
    "SD 1.5": (
        StableDiffusion,
        lambda d: save_meta(
            sd15_modules, lambda m: save_pipeline(sd_pipeline(m, clip_tokenizer(d / "tokenizer"), "epsilon"), d)
        ),
    ),
    "SDXL": (StableDiffusionXL, lambda d: save_meta(sdxl_modules, lambda m: save_sdxl(m, d))),
    "SD3.5 medium": (
        StableDiffusion3,
        lambda d: save_meta(sd35_medium_modules, lambda m: save_sd3(m, t5_tokenizer(d / "tokenizer_3"), d)),
    ),
    "FLUX.1-dev": (
        Flux,
        lambda d: save_meta(flux_dev_modules, lambda m: save_flux(m, t5_tokenizer(d / "tokenizer_2"), d)),
    ),
    "Z-Image": (
        ZImage,
        lambda d: save_meta(
            zimage_modules,
            lambda m: save_chat_pipeline(ZImagePipeline, ZIMAGE_SCHEDULER, m, qwen_tokenizer(d / "tokenizer"), d),
        ),
    ),
    "Qwen-Image": (
        QwenImage,
        lambda d: save_meta(
            qwen_image_modules,
            lambda m: save_chat_pipeline(
                QwenImagePipeline, QWEN_IMAGE_SCHEDULER, m, qwen_tokenizer(d / "tokenizer"), d
            ),
        ),
    ),
    "FLUX.2 [dev]": (
        Flux2,
        lambda d: save_meta(
            flux2_dev_modules,
            lambda m: save_chat_pipeline(
                Flux2Pipeline,
                FLUX2_SCHEDULER,
                m,
                AutoProcessor.from_pretrained(write_mistral_processor(d / "tokenizer")),
                d,
            ),
        ),
    ),
    "FLUX.2 [klein] 4B": (
        Flux2Klein,
        lambda d: save_meta(
            flux2_klein_modules,
            lambda m: save_chat_pipeline(Flux2KleinPipeline, FLUX2_SCHEDULER, m, qwen_tokenizer(d / "tokenizer"), d),
        ),
    ),
}


def architecture_folder(name: str, directory: str | Path) -> tuple[type[ModelFamily], Path]:
    """Save the published architecture ``name`` (a key of :data:`ARCHITECTURES`) as configs alone in
    ``directory``; return its family class and the folder."""
    family, save = ARCHITECTURES[name]
    return family, save(Path(directory))
