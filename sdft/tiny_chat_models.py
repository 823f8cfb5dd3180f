"""Tiny, randomly initialised models of the families whose text encoder is a chat language model (Z-Image's Qwen3),
saved as ordinary diffusers folders.

As :mod:`sdft.tiny_transformer_models` does for SD3 and Flux.1, they load through the same
``from_pretrained(name_or_path)`` code as the real checkpoints: the language model is a real transformers model of
the real architecture at a tiny width, and its tokenizer a real byte-level BPE with the chat markers and a chat
template (:func:`sdft.tokenizers.write_qwen_tokenizer`), so the prompt goes through the pipeline's own template
offline. The weights are a pure function of the seed.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3Model

from sdft.tiny_models import save_pipeline, seeded
from sdft.tiny_transformer_models import FLUX_LATENTS, tiny_flow_vae
from sdft.tokenizers import write_qwen_tokenizer

#: the width of the tiny Qwen3 text encoder (Z-Image's is 2,560)
QWEN3_WIDTH = 40
#: the scheduler of Tongyi-MAI/Z-Image-Turbo: a static shift of 3
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def qwen_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The offline Qwen tokenizer, written to ``directory``."""
    return AutoTokenizer.from_pretrained(write_qwen_tokenizer(directory))


def tiny_qwen3(vocab_size: int, width: int = QWEN3_WIDTH) -> Qwen3Model:
    """A three-layer Qwen3 (grouped-query attention with RMS-normed q and k, SwiGLU), as Z-Image's encoder without
    its language-model head.

    Args:
        vocab_size: the tokenizer's size.
        width: the hidden size (the transformer's ``cap_feat_dim``).
    """
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return Qwen3Model(config)


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
    transformer, vae, text_encoder = seeded(seed, lambda: tiny_zimage_modules(len(tokenizer)))
    pipeline = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return save_pipeline(pipeline, directory)
