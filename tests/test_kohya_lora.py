"""kohya / A1111 / ComfyUI LoRA files, checked against loaders sdft does not own: diffusers' ``load_lora_weights``
makes the same images from them as from the diffusers file (SD 1.x, SDXL, Flux.1 double blocks), diffusers' own
converters map them onto the same weights (SD3 through its single-file converter, as ComfyUI applies them to the
original model; Flux.1's fused single blocks at FLUX.1's size); their names are the ones the consumers build; they
read back into the same weights; and they start a fit and come out of one with the run's metadata."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import FluxPipeline, FluxTransformer2DModel, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from diffusers.utils import convert_state_dict_to_kohya
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from training import PROMPT, cpu_trainer, lora_tuner, stock_images, stock_pipeline, subject_data

from sdft.assets import resolve
from sdft.callbacks import FinalExport
from sdft.callbacks.export import live_weights_kept
from sdft.errors import UserError
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
from sdft.interop.formats import read_lora
from sdft.interop.kohya import to_kohya
from sdft.interop.kohya_names import adaptable_modules, kohya_names
from sdft.interop.lora_weights import LoraLayer, LoraWeights, lora_weights_of
from sdft.methods import LoRAFineTuner
from sdft.methods.lora import LORA_WEIGHTS, kohya_file, kohya_file_name
from sdft.runs import apply_checkpoint, export_checkpoint

TINY = "builtin:tiny-sd1"
FAMILIES = {
    "sd1": (StableDiffusion, TINY),
    "sd2": (StableDiffusion, "builtin:tiny-sd2-v"),
    "sdxl": (StableDiffusionXL, "builtin:tiny-sdxl"),
    "sd3": (StableDiffusion3, "builtin:tiny-sd3"),
    "flux": (Flux, "builtin:tiny-flux"),
    "zimage": (ZImage, "builtin:tiny-zimage"),
    "flux2-klein": (Flux2Klein, "builtin:tiny-flux2-klein"),
    "qwen-image": (QwenImage, "builtin:tiny-qwen-image"),
    "flux2-dev": (Flux2, "builtin:tiny-flux2-dev"),
}
RANK, ALPHA = 4, 2.0


def family(name: str) -> ModelFamily:
    family_class, builtin = FAMILIES[name]
    return family_class(builtin)


def random_lora(name: str, seed: int = 0, **options) -> LoRAFineTuner:
    """A rank-4, alpha-2 LoRA on the denoiser and text encoders of a tiny model, with random non-zero weights."""
    model = LoRAFineTuner(family(name), rank=RANK, alpha=ALPHA, train_text_encoder=True, **options)
    model.configure_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Callable[[str], tuple[LoRAFineTuner, Path]]:
    """A family's random LoRA and the folder of its export (both formats), made once per family."""
    made: dict[str, tuple[LoRAFineTuner, Path]] = {}

    def export(name: str) -> tuple[LoRAFineTuner, Path]:
        if name not in made:
            model = random_lora(name)
            made[name] = model, model.export(tmp_path_factory.mktemp(name)).parent
        return made[name]

    return export


def module_names(path: Path) -> set[str]:
    return {key.split(".")[0] for key in load_file(path)}


def lora_images(name: str, folder: Path, weight_name: str) -> np.ndarray:
    pipeline = stock_pipeline(resolve(FAMILIES[name][1]), FAMILIES[name][0])
    pipeline.load_lora_weights(str(folder), weight_name=weight_name)
    return stock_images(pipeline)


@pytest.mark.parametrize("name", ["sd1", "sdxl", "flux"])
def test_diffusers_makes_the_same_images_from_the_kohya_file_as_from_the_diffusers_file(name, tmp_path):
    # diffusers' kohya Flux.1 converter splits single blocks at FLUX.1's widths (3072): the tiny model's double
    # blocks only here; the single blocks are checked at FLUX.1's size below
    options = {"target_blocks": [0, 1]} if name == "flux" else {}
    random_lora(name, **options).export(tmp_path)
    expected = lora_images(name, tmp_path, LORA_WEIGHTS)
    assert np.abs(lora_images(name, tmp_path, kohya_file(tmp_path).name) - expected).max() <= 1
    base = stock_images(stock_pipeline(resolve(FAMILIES[name][1]), FAMILIES[name][0]))
    assert np.abs(base - expected).mean() > 1  # the LoRA changes the images, so the equality means something


def deltas_close(found: LoraLayer, expected: LoraLayer) -> bool:
    """Whether two layers make the same update, compared on a few random inputs (no full weight matrices)."""
    probe = torch.randn(expected.down.shape[1], 3, generator=torch.Generator().manual_seed(0))
    update = expected.up @ (expected.down @ probe) * expected.scale
    return torch.allclose(found.up @ (found.down @ probe) * found.scale, update, atol=1e-5 * update.abs().max())


def test_diffusers_splits_fused_flux_modules_into_the_same_updates_at_flux1_size():
    with torch.device("meta"):  # FLUX.1's widths, one block of each kind
        transformer = FluxTransformer2DModel(num_layers=1, num_single_layers=1)
    names = kohya_names(FluxPipeline, {"transformer": transformer})
    shapes, generator = adaptable_modules(transformer), torch.Generator().manual_seed(0)
    partial = {"transformer.transformer_blocks.0.attn.to_k", "transformer.single_transformer_blocks.0.proj_mlp"}
    weights: LoraWeights = {}
    for path in sorted(set(names.by_path) - partial):
        out_features, in_features = shapes[path.removeprefix("transformer.")]
        final_layer = path in ("transformer.norm_out.linear", "transformer.proj_out")
        alpha = 2.0 if final_layer else 3.0  # diffusers ignores the final layer's alpha: loads it at alpha = rank
        weights[path] = LoraLayer(
            torch.randn(2, in_features, generator=generator), torch.randn(out_features, 2, generator=generator), alpha
        )
    converted = FluxPipeline.lora_state_dict(to_kohya(weights, names))
    converted = {key.removeprefix("transformer."): value for key, value in converted.items()}
    for path, layer in weights.items():
        module = path.removeprefix("transformer.")
        down, up = converted[f"{module}.lora_A.weight"], converted[f"{module}.lora_B.weight"]
        assert deltas_close(LoraLayer(down, up, alpha=down.shape[0]), layer), path  # alpha folded into the weights
    assert not converted["transformer_blocks.0.attn.to_k.lora_B.weight"].any()


class OriginalSD3Checkpoint(dict):
    """An SD3 checkpoint in the original (SAI) layout in which every tensor not given reads as zeros: diffusers'
    single-file converter maps just the given tensors (LoRA updates, as ComfyUI adds them to the original weights)
    and records every key it reads."""

    def __init__(self, tensors: dict[str, torch.Tensor], num_layers: int) -> None:
        super().__init__(tensors)
        for index in range(num_layers):  # the converter counts the blocks among the keys
            self.setdefault(f"joint_blocks.{index}.x_block.mlp.fc2.weight", torch.zeros(6))
        self.read: set[str] = set()

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key) if key in self else torch.zeros(6)

    def __missing__(self, key):
        self.read.add(key)
        return torch.zeros(6)


def test_sd3_kohya_file_adds_the_updates_diffusers_single_file_converter_maps_onto_the_diffusers_modules(tmp_path):
    targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj"]
    targets += ["attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "norm1_context.linear", "norm_out.linear"]
    model = random_lora("sd3", target_modules=targets)
    model.export(tmp_path)
    num_layers = model.family.transformer.config.num_layers
    keys = OriginalSD3Checkpoint({}, num_layers)
    convert_sd3_transformer_checkpoint_to_diffusers(keys)
    # ComfyUI's name for each original weight: lora_unet_ + its path with "_"
    weight_of = {f"lora_unet_{key.removesuffix('.weight').replace('.', '_')}": key for key in keys.read}
    state = load_file(kohya_file(tmp_path))
    updates = {}
    for name in {key.split(".")[0] for key in state if key.startswith("lora_unet_")}:
        down, up, alpha = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"], state[f"{name}.alpha"]
        updates[weight_of[name]] = alpha / down.shape[0] * up @ down
    converted = convert_sd3_transformer_checkpoint_to_diffusers(OriginalSD3Checkpoint(updates, num_layers))
    trained = lora_weights_of(model.adapted_components())
    transformer = {path: layer for path, layer in trained.items() if path.startswith("transformer.")}
    assert any("norm1_context" in path for path in transformer) and any("norm_out" in path for path in transformer)
    for path, layer in transformer.items():
        torch.testing.assert_close(converted[f"{path.removeprefix('transformer.')}.weight"], layer.delta())


def clip_names(prefix: str, layers: int, projections: tuple[str, ...] = ("q", "k", "v", "out")) -> set[str]:
    """ComfyUI's / A1111's names of CLIP attention projections: ``<prefix>_text_model_encoder_layers_N_...``."""
    return {
        f"{prefix}_text_model_encoder_layers_{layer}_self_attn_{projection}_proj"
        for layer in range(layers)
        for projection in projections
    }


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flux_and_sd3_files_name_the_original_modules(name, exports):
    _, folder = exports(name)
    if name == "flux":
        double = ("img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "txt_attn_qkv", "txt_attn_proj")
        expected = {f"lora_unet_double_blocks_{i}_{module}" for i in (0, 1) for module in (*double, "txt_mlp_0")}
        expected |= {f"lora_unet_double_blocks_{i}_txt_mlp_2" for i in (0, 1)}
        expected |= {f"lora_unet_single_blocks_{i}_linear1" for i in (0, 1)} | clip_names("lora_te1", 2)
    else:  # the last block keeps no context output: no context projection out
        joint = ("x_block_attn_qkv", "x_block_attn_proj", "context_block_attn_qkv", "context_block_attn_proj")
        expected = {f"lora_unet_joint_blocks_{i}_{module}" for i in range(4) for module in joint}
        expected -= {"lora_unet_joint_blocks_3_context_block_attn_proj"}
        expected |= clip_names("lora_te1", 2) | clip_names("lora_te2", 2)
    assert module_names(kohya_file(folder)) == expected
    state = load_file(kohya_file(folder))
    fused = "lora_unet_double_blocks_0_img_attn_qkv" if name == "flux" else "lora_unet_joint_blocks_0_x_block_attn_qkv"
    assert state[f"{fused}.lora_down.weight"].shape[0] == 3 * RANK and float(state[f"{fused}.alpha"]) == 3 * ALPHA


def sgm_names_by_comfyui_rule(unet: UNet2DConditionModel) -> dict[str, str]:
    """diffusers UNet module -> SGM module, counted block by block as ComfyUI's ``unet_to_diffusers`` does."""
    names, per_level = {}, unet.config.layers_per_block + 1
    for level, block in enumerate(unet.down_blocks):
        for index in range(len(block.resnets)):
            position = 1 + level * per_level + index
            names[f"down_blocks.{level}.resnets.{index}.conv1"] = f"input_blocks.{position}.0.in_layers.2"
            if block_has_attentions(block):
                names[f"down_blocks.{level}.attentions.{index}.proj_in"] = f"input_blocks.{position}.1.proj_in"
        if block.downsamplers:
            names[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{(level + 1) * per_level}.0.op"
    names["mid_block.attentions.0.proj_in"] = "middle_block.1.proj_in"
    names["mid_block.resnets.1.time_emb_proj"] = "middle_block.2.emb_layers.1"
    for level, block in enumerate(unet.up_blocks):
        position = level * per_level
        for index in range(len(block.resnets)):
            names[f"up_blocks.{level}.resnets.{index}.conv2"] = f"output_blocks.{position}.0.out_layers.3"
            inner = 1
            if block_has_attentions(block):
                names[f"up_blocks.{level}.attentions.{index}.proj_out"] = f"output_blocks.{position}.1.proj_out"
                inner = 2
            if index == len(block.resnets) - 1 and block.upsamplers:
                names[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{position}.{inner}.conv"
            position += 1
    return names


def block_has_attentions(block) -> bool:
    return getattr(block, "attentions", None) is not None


def sdxl_unets() -> list[UNet2DConditionModel]:
    """The tiny SDXL UNet and, on the meta device, SDXL base's."""
    tiny = UNet2DConditionModel.from_pretrained(resolve("builtin:tiny-sdxl"), subfolder="unet")
    with torch.device("meta"):
        real = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
        )
    return [tiny, real]


def test_sdxl_unet_modules_get_the_sgm_names_comfyui_and_a1111_expect():
    unets = sdxl_unets()
    for unet in unets:
        names = kohya_names(StableDiffusionXLPipeline, {"unet": unet}).by_path
        for module, original in sgm_names_by_comfyui_rule(unet).items():
            assert names[f"unet.{module}"].name == f"lora_unet_{original.replace('.', '_')}", module
    real = set(kohya_names(StableDiffusionXLPipeline, {"unet": unets[1]}).by_name)
    assert {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0",
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_k",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_8_0_skip_connection",
        "lora_unet_input_blocks_3_0_op",
    } <= real


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_unet_and_text_encoder_names_keep_text_model_and_the_block_layout(name, exports):
    model, folder = exports(name)
    found = module_names(kohya_file(folder))
    unet = {
        path.removeprefix("unet.") for path in lora_weights_of(model.adapted_components()) if path.startswith("unet.")
    }
    if name == "sd1":
        assert {f"lora_unet_{path.replace('.', '_')}" for path in unet} | clip_names("lora_te", 2) == found
    else:  # tiny SDXL: one layer per block, attentions in down block 1, the mid block and up block 0
        expected = {
            "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
            "lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_v",
        }
        assert expected <= found and len(found) == len(unet) + 16
        assert clip_names("lora_te1", 2) | clip_names("lora_te2", 2) <= found


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reading_the_kohya_file_gives_back_the_weights(name, exports):
    model, folder = exports(name)
    trained = lora_weights_of(model.adapted_components())
    for file in (kohya_file(folder).name, LORA_WEIGHTS):
        read = read_lora(folder / file, family(name))  # a family not loaded: its configs give the names
        assert read.keys() == trained.keys()
        for path, layer in trained.items():
            assert torch.equal(read[path].down, layer.down) and torch.equal(read[path].up, layer.up), (file, path)
            assert read[path].alpha == pytest.approx(layer.alpha), (file, path)


def test_foreign_kohya_variants_read_too(tmp_path):
    # SDXL named as diffusers' convert_state_dict_to_kohya names it: diffusers UNet names, alpha = rank
    model = random_lora("sdxl")
    model.export(tmp_path / "sdxl")
    converted = tmp_path / "converted.safetensors"
    save_file(convert_state_dict_to_kohya(load_file(tmp_path / "sdxl" / LORA_WEIGHTS)), converted)
    read = read_lora(converted, family("sdxl"))
    for path, layer in lora_weights_of(model.adapted_components()).items():
        assert torch.equal(read[path].down, layer.down) and torch.equal(read[path].up, layer.up), path
        assert read[path].alpha == RANK
    # Flux.1 as ComfyUI saves it (diffusion_model.<BFL module>), read through diffusers' converter
    model = random_lora("flux", target_blocks=[0, 1])  # diffusers splits single blocks at FLUX.1's widths
    model.export(tmp_path / "flux")
    state = load_file(kohya_file(tmp_path / "flux"))
    comfyui = tmp_path / "comfyui.safetensors"
    prefixes = {"lora_unet_": "diffusion_model.", "lora_te1_": "text_encoders.clip_l.transformer."}
    save_file({renamed(key, prefixes): value for key, value in state.items()}, comfyui)
    read = read_lora(comfyui, family("flux"))
    trained = lora_weights_of(model.adapted_components())
    assert read.keys() == trained.keys()
    assert all(deltas_close(read[path], layer) for path, layer in trained.items())


def renamed(key: str, prefixes: dict[str, str]) -> str:
    prefix = next(prefix for prefix in prefixes if key.startswith(prefix))
    return prefixes[prefix] + key.removeprefix(prefix)


ARCHITECTURES = {
    "sd1": ("stable-diffusion-v1/lora", "sd_v1"),
    "sd2": ("stable-diffusion-v2-768-v/lora", "sd_v2_v"),
    "sdxl": ("stable-diffusion-xl-v1-base/lora", "sdxl_base_v1-0"),
    "sd3": ("stable-diffusion-v3.5-medium/lora", "sd3"),  # the tiny SD3 has a dual-attention block
    "flux": ("flux-1-dev/lora", "flux1"),
    "zimage": ("z-image/lora", "z_image"),
    "flux2-klein": ("flux-2-klein/lora", "flux2"),
    "qwen-image": ("qwen-image/lora", "qwen_image"),
    "flux2-dev": ("flux-2-dev/lora", "flux2"),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_header_names_the_base_model_rank_and_alpha_and_each_module_carries_its_alpha(name, exports):
    _, folder = exports(name)
    state = load_file(kohya_file(folder))
    metadata, alphas = header(kohya_file(folder)), {float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert (metadata["modelspec.architecture"], metadata["ss_base_model_version"]) == ARCHITECTURES[name]
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert metadata["ss_sd_model_name"] == FAMILIES[name][1]
    assert alphas <= {ALPHA, 3 * ALPHA}  # fused q/k/v modules: three times the rank and alpha


@pytest.mark.parametrize("name", ["sd1", "flux"])
@pytest.mark.parametrize("file", [kohya_file_name(None, 0), LORA_WEIGHTS])
def test_init_lora_starts_the_adapters_at_the_file_s_update(name, file, tmp_path):
    random_lora(name).export(tmp_path)
    started = LoRAFineTuner(family(name), rank=RANK, alpha=8.0, train_text_encoder=True, init_lora=str(tmp_path / file))
    started.configure_model()
    expected = read_lora(kohya_file(tmp_path), started.family)
    weights = lora_weights_of(started.adapted_components())
    assert weights.keys() == expected.keys()
    assert all(layer.alpha == 8.0 for layer in weights.values())  # the run's alpha, the file's update
    for path, layer in weights.items():
        torch.testing.assert_close(layer.delta(), expected[path].delta())


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd1-lora")
    random_lora("sd1").export(folder)
    return kohya_file(folder)


def test_init_lora_of_another_rank_names_the_keys_and_the_rank(sd1_file):
    model = LoRAFineTuner(family("sd1"), rank=8, train_text_encoder=True, init_lora=str(sd1_file))
    with pytest.raises(UserError, match=r"model.init_args.init_lora: .* has rank 4 .*model.init_args.rank is 8"):
        model.configure_model()


def test_init_lora_adapting_modules_the_run_does_not_train_is_refused(sd1_file):
    model = LoRAFineTuner(family("sd1"), rank=RANK, init_lora=str(sd1_file))  # no text-encoder LoRA
    with pytest.raises(UserError, match=r"init_lora: .* modules this run does not train .*text_encoder\."):
        model.configure_model()


def test_a_file_of_another_family_or_no_lora_at_all_is_refused_with_the_file_named(sd1_file, tmp_path):
    with pytest.raises(UserError, match=rf"{sd1_file}.* another model family"):
        read_lora(sd1_file, family("sdxl"))
    not_lora = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4)}, not_lora)
    with pytest.raises(UserError, match=rf"{not_lora} is not a LoRA file"):
        read_lora(not_lora, family("sd1"))
    with pytest.raises(UserError, match="not found"):
        read_lora(tmp_path / "missing.safetensors", family("sd1"))


def test_modules_a_kohya_file_cannot_name_are_refused_before_training():
    options = {"train_text_encoder": True, "text_encoder_target_modules": ["q_proj", "text_projection"]}
    model = LoRAFineTuner(family("sdxl"), rank=RANK, **options)
    with pytest.raises(UserError, match=r"export_formats includes kohya.*text_encoder_2.text_projection"):
        model.configure_model()
    LoRAFineTuner(family("sdxl"), rank=RANK, export_formats=["diffusers"], **options).configure_model()


def test_export_formats_choose_the_files_and_are_checked(tmp_path):
    with pytest.raises(UserError, match="model.init_args.export_formats must list one or more of diffusers, kohya"):
        LoRAFineTuner(family("sd1"), export_formats=["a1111"])
    model = random_lora("sd1", export_formats=["kohya"])
    assert model.export(tmp_path) == kohya_file(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", kohya_file_name(None, 0)]


def header(path: Path) -> dict[str, str]:
    with safe_open(path, "pt") as file:
        return file.metadata()


@pytest.fixture(scope="module")
def init_fit(subject_dir, sd1_file, tmp_path_factory) -> tuple[LoRAFineTuner, Path]:
    """Two steps from an init_lora file (a copy), checkpointed every step and exported at the end: the model and
    its run folder ``run/version_0`` (the file is ``init.safetensors`` beside ``run``)."""
    run = tmp_path_factory.mktemp("init-fit") / "run" / "version_0"
    init = run.parent.parent / "init.safetensors"
    init.write_bytes(sd1_file.read_bytes())
    model = lora_tuner(family("sd1"), lr=1e-2, rank=RANK, train_text_encoder=True, init_lora=str(init))
    saving = ModelCheckpoint(dirpath=run / "checkpoints", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    cpu_trainer(run, max_steps=2, callbacks=[saving, FinalExport()]).fit(model, datamodule=subject_data(subject_dir))
    return model, run


def test_the_final_export_holds_both_files_and_the_kohya_header_the_run_s_steps_resolution_and_prompt(init_fit):
    model, run = init_fit
    assert sorted(path.name for path in (run / "final").iterdir()) == sorted(
        ["README.md", kohya_file_name(None, 2), LORA_WEIGHTS]
    )
    notes = header(kohya_file(run / "final"))
    assert (notes["ss_steps"], notes["ss_resolution"], notes["modelspec.resolution"]) == ("2", "(32, 32)", "32x32")
    assert notes["modelspec.trigger_phrase"] == PROMPT
    assert json.loads(notes["ss_tag_frequency"]) == {"subject": {PROMPT: 1}}


def test_an_export_of_a_checkpoint_s_weights_records_the_checkpoint_s_step(init_fit, tmp_path):
    model, run = init_fit
    with live_weights_kept(model):  # as the evaluator exports the best step from its checkpoint
        apply_checkpoint(model, run / "checkpoints" / "step=1.ckpt")
        assert header(kohya_file(model.export(tmp_path / "best").parent))["ss_steps"] == "1"
    assert header(kohya_file(model.export(tmp_path / "again").parent))["ss_steps"] == "2"


def test_a_resumed_fit_continues_from_the_checkpoint_not_from_init_lora(init_fit, subject_dir, tmp_path):
    _, run = init_fit
    random_lora("sd1", seed=1).export(tmp_path / "other")
    other = str(kohya_file(tmp_path / "other"))
    resumed = lora_tuner(family("sd1"), rank=RANK, train_text_encoder=True, init_lora=other)
    checkpoint = run / "checkpoints" / "step=2.ckpt"
    data = subject_data(subject_dir)
    cpu_trainer(tmp_path / "resumed", max_steps=2).fit(resumed, datamodule=data, ckpt_path=checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(value, saved[key]) for key, value in resumed.trainable_state_dict().items())


def test_exporting_a_checkpoint_writes_the_chosen_formats_with_the_run_s_notes_without_init_lora(init_fit, subject_dir):
    _, run = init_fit
    init = run.parent.parent / "init.safetensors"
    init.unlink()  # the checkpoint holds the weights: the file is not read
    tiny_sd1 = {"class_path": "sdft.families.StableDiffusion", "init_args": {"pretrained_model_name_or_path": TINY}}
    options = {"family": tiny_sd1, "rank": RANK, "train_text_encoder": True, "init_lora": str(init)}
    data = {"instance_dir": str(subject_dir), "instance_prompt": PROMPT, "resolution": 32}
    config = {
        "model": {"class_path": "sdft.methods.LoRAFineTuner", "init_args": options},
        "data": {"class_path": "sdft.data.SubjectDataModule", "init_args": data},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    exported = export_checkpoint(run / "checkpoints" / "step=1.ckpt", formats=["kohya"])
    assert exported == run / "exports" / "step=1" / kohya_file_name("run", 1)
    assert sorted(path.name for path in exported.parent.iterdir()) == ["README.md", exported.name]
    notes = header(exported)
    assert (notes["ss_steps"], notes["modelspec.title"], notes["modelspec.trigger_phrase"]) == ("1", "run", PROMPT)
    with pytest.raises(UserError, match="--format must list one or more of diffusers, kohya"):
        export_checkpoint(run / "checkpoints" / "step=1.ckpt", formats=["a1111"])
