"""Original-layout single-file checkpoints: diffusers' ``from_single_file`` reads back the same weights and draws the
same images, and the names are the ones of the original SD 1.x and SDXL files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from lora_samples import random_lora, write_lora_with_alpha
from transformers import CLIPTextModelWithProjection

from sdft.errors import UserError
from sdft.interop.merge_commands import Merge
from sdft.interop.merge_operations import write_model
from sdft.interop.model_folders import ModelFolder
from sdft.interop.single_file import (
    UNET,
    VAE,
    check_single_file_support,
    openclip_state_dict,
    unet_state_dict,
    vae_state_dict,
)
from sdft.tiny_models import tiny_clip_config

PIPELINES = {
    "tiny_sd1": StableDiffusionPipeline,
    "tiny_sd2_v": StableDiffusionPipeline,
    "tiny_sdxl": StableDiffusionXLPipeline,
}


def images(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    options = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "pt"}
    return pipeline("a photo of a dog", generator=generator, **options).images


def from_single_file(pipeline_class: type, path: Path, config: Path) -> StableDiffusionPipeline:
    """diffusers' loader, offline: the diffusers folder gives the configs, tokenizers and scheduler."""
    return pipeline_class.from_single_file(str(path), config=str(config), local_files_only=True)


@pytest.mark.parametrize("model", list(PIPELINES))
def test_single_file_loads_back_to_the_same_model(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folder = ModelFolder.open(request.getfixturevalue(model), "model")
    path = write_model(tmp_path / "model.safetensors", folder, {}, dtype=None)
    original = PIPELINES[model].from_pretrained(folder.path)
    loaded = from_single_file(PIPELINES[model], path, folder.path)
    for name in folder.weight_components:
        expected, read = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert read.keys() == expected.keys()
        assert all(torch.equal(read[key], expected[key]) for key in expected), name
    torch.testing.assert_close(images(loaded), images(original), atol=0, rtol=0)


@pytest.mark.slow
def test_fused_sdxl_single_file_draws_what_the_base_with_the_lora_draws(tiny_sdxl: Path, tmp_path: Path) -> None:
    base = ModelFolder.open(tiny_sdxl, "model")
    targets = {"unet": ("attn1.to_q", "attn2.to_k"), "text_encoder_2": ("self_attn.v_proj",)}
    lora = random_lora(base, targets, rank=2, alpha=4.0, seed=0)
    lora_file = write_lora_with_alpha(lora, tmp_path, StableDiffusionXLPipeline, rank=2, alpha=4.0)
    Merge().fuse(str(tiny_sdxl), lora_file, tmp_path / "fused.safetensors")

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    plain = images(pipeline)
    pipeline.load_lora_weights(lora_file)
    expected = images(pipeline)
    assert (expected - plain).abs().max() > 0.05
    fused = images(from_single_file(StableDiffusionXLPipeline, tmp_path / "fused.safetensors", tiny_sdxl))
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=0)


def sd15_shaped_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet layout (four levels, two layers each, no attention at the lowest) at small widths."""
    return UNet2DConditionModel(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
        sample_size=8,
    )


def sdxl_shaped_unet() -> UNet2DConditionModel:
    """SDXL's UNet layout (three levels, no attention at the first, added text-time conditioning) at small widths."""
    return UNet2DConditionModel(
        block_out_channels=(8, 8, 16),
        layers_per_block=2,
        cross_attention_dim=8,
        attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 8,
        norm_num_groups=4,
        sample_size=8,
    )


@pytest.mark.parametrize(
    ("build", "known"),
    [
        (
            sd15_shaped_unet,
            [
                "output_blocks.11.0.skip_connection.weight",
                "input_blocks.3.0.op.weight",
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "output_blocks.2.1.conv.weight",
                "output_blocks.5.2.conv.weight",
                "middle_block.2.emb_layers.1.bias",
                "out.2.weight",
            ],
        ),
        (
            sdxl_shaped_unet,
            [
                "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
                "label_emb.0.2.bias",
                "output_blocks.2.2.conv.weight",
                "output_blocks.8.0.skip_connection.weight",
                "time_embed.0.weight",
                "middle_block.1.proj_in.weight",
            ],
        ),
    ],
)
def test_unet_names_are_the_original_ones(build, known: list[str]) -> None:
    unet = build()
    converted = unet_state_dict(unet)
    assert {UNET + key for key in known} <= converted.keys()
    read = convert_ldm_unet_checkpoint(converted, unet.config)  # diffusers' own reader of original files
    assert read.keys() == unet.state_dict().keys()
    assert all(torch.equal(read[key], tensor) for key, tensor in unet.state_dict().items())


def test_vae_names_are_the_original_ones() -> None:
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=4,
    )
    converted = vae_state_dict(vae)
    known = [
        "encoder.down.0.downsample.conv.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.norm_out.bias",
        "encoder.down.2.block.0.nin_shortcut.weight",
        "decoder.mid.block_2.conv1.weight",
        "quant_conv.weight",
    ]
    assert {VAE + key for key in known} <= converted.keys()
    assert VAE + "decoder.up.0.upsample.conv.weight" not in converted
    assert converted[VAE + "encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)  # a 1x1 convolution, as in LDM
    read = convert_ldm_vae_checkpoint(converted, vae.config)
    assert all(torch.equal(read[key], tensor) for key, tensor in vae.state_dict().items())


def test_openclip_layout_joins_qkv_and_transposes_the_projection() -> None:
    config = tiny_clip_config(hidden_size=48, openclip=True)
    config.projection_dim = 16  # unlike the width, as a real encoder may have
    encoder = CLIPTextModelWithProjection(config)
    converted = openclip_state_dict(encoder, "conditioner.embedders.1.model.")
    state = encoder.state_dict()
    assert converted["conditioner.embedders.1.model.text_projection"].shape == (48, 16)
    joined = converted["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
    q_proj = state["text_model.encoder.layers.1.self_attn.q_proj.weight"]
    v_proj = state["text_model.encoder.layers.1.self_attn.v_proj.weight"]
    assert torch.equal(joined[:48], q_proj) and torch.equal(joined[96:], v_proj)
    read = convert_open_clip_checkpoint(encoder, converted, prefix="conditioner.embedders.1.model.")
    assert read.keys() == state.keys()
    assert all(torch.equal(read[key], tensor) for key, tensor in state.items())


def test_sd3_and_flux_single_files_are_refused_in_one_line() -> None:
    for pipeline in ("StableDiffusion3Pipeline", "FluxPipeline"):
        with pytest.raises(UserError, match=f"^output: single-file checkpoints are written for .* not {pipeline}; "):
            check_single_file_support(pipeline, "output")
