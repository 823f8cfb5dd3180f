"""LoRA restricted to some of the denoiser's blocks (``target_blocks``), for any family: only the chosen blocks get
adapters, as diffusers' SD3 script's ``--lora_blocks`` would place them, and the export loads in diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from training import PROMPT, lora_tuner, stock_images, stock_pipeline, trained_images

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families import Flux, StableDiffusion3
from sdft.methods import LoRAFineTuner
from sdft.methods.lora import block_names
from sdft.tiny_transformer_models import tiny_sd3_transformer

SD3_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def adapted(module: torch.nn.Module) -> set[str]:
    """The names of the modules that carry a LoRA adapter."""
    return {name.removesuffix(".lora_A") for name, _ in module.named_modules() if name.endswith(".lora_A")}


def test_only_the_chosen_unet_blocks_get_adapters(tiny_sd1):
    model = lora_tuner(tiny_sd1, target_blocks=[5, 0])
    model.configure_model()
    blocks = block_names(model.family.unet, model.family.capabilities.block_types)
    assert [blocks[0], blocks[5]] == [
        "down_blocks.0.attentions.0.transformer_blocks.0",
        "up_blocks.1.attentions.0.transformer_blocks.0",
    ]
    expected = {
        f"{block}.{attention}.{projection}"
        for block in (blocks[0], blocks[5])
        for attention in ("attn1", "attn2")
        for projection in ("to_q", "to_k", "to_v", "to_out.0")
    }
    assert adapted(model.family.unet) == expected


def test_only_the_chosen_sd3_blocks_get_adapters_as_with_diffusers_lora_blocks():
    model = LoRAFineTuner(StableDiffusion3(resolve("builtin:tiny-sd3")), rank=2, target_blocks=[1, 3])
    model.configure_model()
    ours = adapted(model.family.transformer)
    # the last block reads the text without updating it (context_pre_only): it has no to_add_out
    expected = {f"transformer_blocks.1.attn.{name}" for name in SD3_ATTENTION}
    expected |= {f"transformer_blocks.3.attn.{name}" for name in SD3_ATTENTION if name != "to_add_out"}
    assert ours == expected
    # diffusers' train_dreambooth_lora_sd3.py --lora_blocks 1,3: one target per (block, default module)
    reference = tiny_sd3_transformer()
    modules = model.family.default_lora_targets("transformer")
    reference.add_adapter(
        LoraConfig(r=2, target_modules=[f"transformer_blocks.{b}.{m}" for b in (1, 3) for m in modules])
    )
    assert adapted(reference) == ours


def test_flux_blocks_count_the_double_stream_blocks_then_the_single_stream_ones():
    model = LoRAFineTuner(Flux(resolve("builtin:tiny-flux")), rank=2, target_blocks=[2])
    model.configure_model()
    assert block_names(model.family.transformer, Flux.capabilities.block_types) == [
        "transformer_blocks.0",
        "transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
    ]
    assert adapted(model.family.transformer) == {
        f"single_transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v")
    }


def test_a_block_out_of_range_names_the_key_and_the_range():
    model = LoRAFineTuner(StableDiffusion3(resolve("builtin:tiny-sd3")), target_blocks=[2, 4, 7])
    with pytest.raises(UserError, match=r"model.init_args.target_blocks: \[4, 7\] out of range; .* 4 blocks .*0-3"):
        model.configure_model()


@pytest.mark.parametrize("blocks", [[], [-1, 2]])
def test_an_empty_or_negative_block_list_names_the_key(tiny_sd1, blocks):
    with pytest.raises(UserError, match="model.init_args.target_blocks must list block indices"):
        lora_tuner(tiny_sd1, target_blocks=blocks)


def test_blocks_without_the_target_modules_name_both_keys(tiny_sd1):
    model = lora_tuner(tiny_sd1, target_blocks=[1])  # down_blocks.0.resnets.0: a ResnetBlock2D, no attention
    with pytest.raises(UserError, match="target_modules within model.init_args.target_blocks matches no module"):
        model.configure_model()


def test_the_block_restricted_export_loads_in_the_stock_pipeline(tiny_sd1, tmp_path):
    model = lora_tuner(tiny_sd1, target_blocks=[0])
    model.configure_model()
    generator = torch.Generator().manual_seed(0)
    for name, param in model.family.unet.named_parameters():
        if ".lora_B." in name:  # a non-zero update (as training gives), without training
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    model.export(tmp_path)
    pipeline = stock_pipeline(tiny_sd1)
    pipeline.load_lora_weights(tmp_path)
    assert adapted(pipeline.unet) == adapted(model.family.unet)
    expected = trained_images(model, PROMPT)
    assert np.abs(stock_images(pipeline, PROMPT) - expected).max() <= 1
    assert np.abs(stock_images(stock_pipeline(tiny_sd1), PROMPT) - expected).mean() > 1
