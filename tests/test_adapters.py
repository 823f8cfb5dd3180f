"""The adapter kinds beside LoRA (DoRA, LoKr, LoHa): their weight formulas against hand-computed values and against
peft's own layers, their exports against the loaders that read them (diffusers for DoRA, ComfyUI's formulas for LoKr
and LoHa, fused modules included), the formats that refuse them, files read back and started from, the merge and
extract commands, ``sdft generate``, and a fit through the CLI with the evaluator, the card and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from comfyui_weights import apply_comfyui
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from training import brief_fit, stock_images, stock_pipeline, trained_images

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families import Flux, Flux2Klein, ModelFamily, StableDiffusion, StableDiffusion3, StableDiffusionXL, ZImage
from sdft.interop.formats import read_lora
from sdft.interop.kohya import to_kohya
from sdft.interop.kohya_names import KohyaModule, KohyaNames, kohya_names
from sdft.interop.lora_weights import LoraLayer, adapted_weight, lora_weights_of
from sdft.interop.lycoris import LohaLayer, LokrLayer, decomposed_weight
from sdft.interop.merge_commands import Merge, extract
from sdft.methods import LoRAFineTuner
from sdft.methods.lora import LORA_WEIGHTS, kohya_file, kohya_file_name
from sdft.reporting import write_report
from sdft.tools.sources import load_loras

TINY = "builtin:tiny-sd1"


def random_adapter(family: ModelFamily, adapter: str, seed: int = 0, **options) -> LoRAFineTuner:
    """A rank-4, alpha-3 adapter of one kind on the denoiser and text encoders, its weights moved off their start."""
    options = {"rank": 4, "alpha": 3.0, "train_text_encoder": True, **options}
    model = LoRAFineTuner(family, adapter=adapter, **options)
    model.configure_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def peft_deltas(model: LoRAFineTuner) -> dict[str, torch.Tensor]:
    """Each adapted module's update as peft computes it (``get_delta_weight``)."""
    return {
        f"{component}.{name}": layer.get_delta_weight("default")
        for component, module in model.adapted_components().items()
        for name, layer in module.named_modules()
        if hasattr(layer, "get_delta_weight") and "default" in getattr(layer, "r", {})
    }


def peft_weights(model: LoRAFineTuner) -> dict[str, torch.Tensor]:
    """Each adapted module's weight as peft computes it (DoRA: its forward's rescaled weight)."""
    found = {}
    for component, module in model.adapted_components().items():
        for name, layer in module.named_modules():
            if not hasattr(layer, "get_delta_weight") or "default" not in getattr(layer, "r", {}):
                continue
            weight = layer.get_base_layer().weight.detach() + layer.get_delta_weight("default")
            if "default" in getattr(layer, "lora_magnitude_vector", {}):
                magnitude = layer.lora_magnitude_vector["default"].weight.detach()
                weight = weight * (magnitude / weight.flatten(1).norm(dim=1)).reshape(-1, *[1] * (weight.dim() - 1))
            found[f"{component}.{name}"] = weight
    return found


# -- formulas ---------------------------------------------------------------------------------------------------------


def test_lokr_is_the_kronecker_product_scaled_only_where_a_factor_is_split():
    w1, w2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    kron = torch.tensor([[0.0, 1, 0, 2], [1, 0, 2, 0], [0, 3, 0, 4], [3, 0, 4, 0]])
    whole = LokrLayer({"lokr_w1": w1, "lokr_w2": w2}, alpha=8.0)  # both whole: no alpha / r (ComfyUI, LyCORIS)
    torch.testing.assert_close(whole.update(torch.Size([4, 4])), kron)
    split = LokrLayer({"lokr_w1": w1, "lokr_w2_a": torch.ones(2, 1), "lokr_w2_b": torch.tensor([[1.0, -1.0]])}, 3.0)
    assert split.rank == 1 and split.fits(torch.Size([4, 4]))
    ones = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    torch.testing.assert_close(split.update(torch.Size([4, 4])), 3.0 * torch.kron(w1, ones))


def test_loha_is_the_hadamard_product_of_two_low_rank_products_times_alpha_over_rank():
    layer = LohaLayer(
        {
            "hada_w1_a": torch.tensor([[1.0], [2.0]]),
            "hada_w1_b": torch.tensor([[3.0, 4.0]]),
            "hada_w2_a": torch.tensor([[1.0], [1.0]]),
            "hada_w2_b": torch.tensor([[1.0, -1.0]]),
        },
        alpha=2.0,
    )
    torch.testing.assert_close(layer.update(torch.Size([2, 2])), torch.tensor([[6.0, -8.0], [12.0, -16.0]]))


def test_dora_rescales_rows_or_columns_to_the_magnitude():
    weight = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    rows = decomposed_weight(weight, torch.zeros(2, 2), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(rows, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    columns = decomposed_weight(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2), torch.tensor([[6.0, 8.0]]))
    torch.testing.assert_close(columns, torch.tensor([[6.0, 8.0], [0.0, 0.0]]))


KINDS = [
    pytest.param("dora", {}, id="dora"),
    pytest.param("lokr", {}, id="lokr-whole-factors"),
    pytest.param("lokr", {"rank": 2, "target_modules": ["to_q", "to_v", "conv1"]}, id="lokr-split-w2-conv"),
    pytest.param("lokr", {"rank": 1, "decompose_both": True}, id="lokr-decompose-both"),
    pytest.param("lokr", {"lokr_factor": 2}, id="lokr-factor"),
    pytest.param("loha", {"target_modules": ["to_k", "to_out.0", "conv2"]}, id="loha-conv"),
]


@pytest.mark.parametrize(("adapter", "options"), KINDS)
def test_the_layers_read_from_peft_and_from_the_export_make_peft_s_weights(adapter, options, tmp_path):
    model = random_adapter(StableDiffusion(TINY), adapter, **options)
    expected = peft_weights(model)
    live = lora_weights_of(model.adapted_components())
    assert live.keys() == expected.keys() and {layer.kind for layer in live.values()} == {adapter}
    read = read_lora(model.export(tmp_path / "export"), StableDiffusion(TINY))
    assert read.keys() == expected.keys()
    components = model.adapted_components()
    for path, weight in expected.items():
        component, _, name = path.partition(".")
        base = components[component].get_submodule(name).get_base_layer().weight.detach()
        torch.testing.assert_close(adapted_weight(live[path], base), weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapted_weight(read[path], base), weight, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("adapter", "options"), [k for k in KINDS if k.values[0] != "dora"])
def test_comfyui_s_formulas_on_the_lycoris_export_give_peft_s_weights(adapter, options, tmp_path):
    model = random_adapter(StableDiffusion(TINY), adapter, **options)
    assert model.export(tmp_path) == kohya_file(tmp_path)
    pipeline = stock_pipeline(resolve(TINY))
    apply_comfyui(pipeline, kohya_file(tmp_path), ("unet", "text_encoder"))
    for path, weight in peft_weights(model).items():
        component, _, name = path.partition(".")
        torch.testing.assert_close(getattr(pipeline, component).get_submodule(name).weight, weight, atol=1e-6, rtol=0)


def test_a_loha_of_fused_projections_is_one_module_comfyui_splits_exactly(tmp_path):
    model = random_adapter(Flux("builtin:tiny-flux"), "loha", target_blocks=[0, 2])
    path = model.export(tmp_path)
    keys = load_file(path)
    assert "lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a" in keys  # q, k, v in one module, as ComfyUI reads
    assert not any(key.startswith("lycoris_") for key in keys)
    pipeline = stock_pipeline(resolve("builtin:tiny-flux"), Flux)
    apply_comfyui(pipeline, path, Flux.capabilities.lora_components)
    read = read_lora(path, Flux("builtin:tiny-flux"))
    for module, weight in peft_weights(model).items():
        component, _, name = module.partition(".")
        torch.testing.assert_close(getattr(pipeline, component).get_submodule(name).weight, weight, atol=1e-6, rtol=0)
        assert read[module].kind == "loha"


#: the diffusers projections that the original layers of SD3, Flux.1, FLUX.2 and Z-Image fuse (q, k, v of each stream)
FUSED_PROJECTION = re.compile(r".*(attn|attention)\.(to_[qkv]|add_[qkv]_proj)")


@pytest.mark.parametrize(
    ("family_class", "builtin", "example"),
    [
        pytest.param(Flux, "builtin:tiny-flux", "lycoris_single_transformer_blocks_1_attn_to_v", id="flux"),
        pytest.param(StableDiffusion3, "builtin:tiny-sd3", "lycoris_transformer_blocks_3_attn_add_q_proj", id="sd3"),
        pytest.param(Flux2Klein, "builtin:tiny-flux2-klein", "lycoris_transformer_blocks_0_attn_to_k", id="flux2"),
        pytest.param(ZImage, "builtin:tiny-zimage", "lycoris_noise_refiner_0_attention_to_q", id="zimage"),
    ],
)
def test_a_lokr_of_fused_projections_is_written_per_projection_under_comfyui_s_lycoris_names(
    family_class, builtin, example, tmp_path
):
    model = random_adapter(family_class(builtin), "lokr")
    path = model.export(tmp_path)
    modules = {key.split(".")[0] for key in load_file(path)}
    deltas = peft_deltas(model)
    fused = {
        "lycoris_" + name.partition(".")[2].replace(".", "_") for name in deltas if FUSED_PROJECTION.fullmatch(name)
    }
    assert example in fused
    assert {name for name in modules if name.startswith("lycoris_")} == fused
    others = len(deltas) - len(fused)  # every other module under its kohya name, as before
    assert len(modules - fused) == others and all(name.startswith("lora_") for name in modules - fused)
    read = read_lora(path, family_class(builtin))
    assert read.keys() == deltas.keys()
    for module, delta in deltas.items():
        torch.testing.assert_close(read[module].update(delta.shape), delta, atol=1e-6, rtol=0)
    pipeline = stock_pipeline(resolve(builtin), family_class)
    apply_comfyui(pipeline, path, family_class.capabilities.lora_components)
    for module, weight in peft_weights(model).items():
        component, _, name = module.partition(".")
        torch.testing.assert_close(getattr(pipeline, component).get_submodule(name).weight, weight, atol=1e-6, rtol=0)


def test_a_lokr_of_fused_projections_without_lycoris_names_is_refused_naming_the_model():
    module = KohyaModule("lora_unet_qkv", ("transformer.to_q", "transformer.to_k"), (4, 4))
    lokr = LokrLayer({"lokr_w1": torch.ones(2, 2), "lokr_w2": torch.ones(2, 2)}, 1.0)
    weights = {"transformer.to_q": lokr, "transformer.to_k": lokr}
    with pytest.raises(UserError, match=r"^the LoKr of .* one module lora_unet_qkv .* no lycoris_ names of Tiny"):
        to_kohya(weights, KohyaNames([module], model="Tiny"))


# -- exports and the formats that refuse a kind -----------------------------------------------------------------------


def test_the_dora_export_loads_in_diffusers_with_its_text_encoder_magnitudes(tmp_path):
    model = random_adapter(StableDiffusion(TINY), "dora")
    assert model.export(tmp_path) == tmp_path / LORA_WEIGHTS
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", LORA_WEIGHTS]
    pipeline = stock_pipeline(resolve(TINY))
    pipeline.load_lora_weights(str(tmp_path))
    expected = trained_images(model)
    assert np.abs(stock_images(pipeline) - expected).max() <= 1
    assert np.abs(stock_images(stock_pipeline(resolve(TINY))) - expected).mean() > 1


@pytest.mark.parametrize(
    ("adapter", "formats", "message"),
    [
        ("lokr", ["diffusers"], r"diffusers cannot carry a LoKr .* use export_formats: \[kohya\]"),
        ("loha", ["kohya", "diffusers"], r"diffusers cannot carry a LoHa \(diffusers' load_lora_weights loads LoRA"),
        ("dora", ["kohya"], r"kohya cannot carry a DoRA .*ComfyUI .* use export_formats: \[diffusers\]"),
    ],
)
def test_a_format_whose_consumers_would_misread_the_kind_is_refused_in_one_line(adapter, formats, message):
    with pytest.raises(UserError, match=f"^model.init_args.export_formats: {message}"):
        LoRAFineTuner(StableDiffusion(TINY), adapter=adapter, export_formats=formats)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter": "loha", "dropout": 0.1}, r"^model.init_args.dropout: peft's LoHa has no input dropout"),
        ({"adapter": "lora", "lokr_factor": 4}, r"^model.init_args.lokr_factor and decompose_both are LoKr's"),
        ({"adapter": "lokr", "lokr_factor": 0}, r"^model.init_args.lokr_factor must be a positive integer or -1"),
    ],
)
def test_options_of_another_kind_are_refused_naming_the_key(options, message):
    with pytest.raises(UserError, match=message):
        LoRAFineTuner(StableDiffusion(TINY), **options)


def test_the_lycoris_header_names_lycoris_s_module_and_the_algorithm(tmp_path):
    random_adapter(StableDiffusion(TINY), "lokr", lokr_factor=4).export(tmp_path)
    with safe_open(kohya_file(tmp_path), "pt") as file:
        header = file.metadata()
    assert header["ss_network_module"] == "lycoris.kohya"
    assert json.loads(header["ss_network_args"]) == {"algo": "lokr", "factor": "4", "decompose_both": "False"}
    card = (tmp_path / "README.md").read_text()
    assert "- lycoris" in card and "- lokr" in card and "LoKr" in card
    assert "load_lora_weights" not in card and "sdft generate" in card


# -- files read and started from --------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["dora", "lokr", "loha"])
def test_init_lora_starts_an_adapter_of_the_same_kind_at_the_file_s_update(adapter, tmp_path):
    file = random_adapter(StableDiffusion(TINY), adapter).export(tmp_path)
    started = LoRAFineTuner(StableDiffusion(TINY), adapter=adapter, rank=4, alpha=8.0, train_text_encoder=True)
    started.init_lora = str(file)
    started.configure_model()
    expected = read_lora(file, StableDiffusion(TINY))
    components = started.adapted_components()
    for path, layer in lora_weights_of(components).items():
        component, _, name = path.partition(".")
        base = components[component].get_submodule(name).get_base_layer().weight.detach()
        torch.testing.assert_close(adapted_weight(layer, base), adapted_weight(expected[path], base))
    other = LoRAFineTuner(StableDiffusion(TINY), rank=4, train_text_encoder=True, init_lora=str(file))
    with pytest.raises(UserError, match=r"init_lora: .* is a \w+ where model.init_args.adapter is lora: set adapter"):
        other.configure_model()


def foreign_lycoris_file(path: Path) -> dict[str, torch.Tensor]:
    """A LyCORIS file as LyCORIS trains one: a Tucker LoKr on a 3x3 convolution with both factors split, a Tucker
    LoHa on another, and a DoRA on a linear layer with its magnitude per input column; returns the tensors."""
    generator = torch.Generator().manual_seed(3)

    def random(*shape: int) -> torch.Tensor:
        return 0.3 * torch.randn(shape, generator=generator)

    lokr, loha, dora = "lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_mid_block_resnets_0_conv2", "lora_te_"
    dora += "text_model_encoder_layers_0_mlp_fc1"
    tensors = {
        f"{lokr}.lokr_w1_a": random(4, 2),  # the tiny UNet's convolutions: 32 -> 32, 3x3
        f"{lokr}.lokr_w1_b": random(2, 4),
        f"{lokr}.lokr_w2_a": random(2, 8),
        f"{lokr}.lokr_w2_b": random(2, 8),
        f"{lokr}.lokr_t2": random(2, 2, 3, 3),
        f"{lokr}.alpha": torch.tensor(1.0),
        f"{loha}.hada_w1_a": random(2, 64),  # the mid block's: 64 -> 64, 3x3
        f"{loha}.hada_w1_b": random(2, 64),
        f"{loha}.hada_t1": random(2, 2, 3, 3),
        f"{loha}.hada_w2_a": random(2, 64),
        f"{loha}.hada_w2_b": random(2, 64),
        f"{loha}.hada_t2": random(2, 2, 3, 3),
        f"{loha}.alpha": torch.tensor(4.0),
        f"{dora}.lora_down.weight": random(2, 32),  # the tiny CLIP's first MLP layer: 32 -> 64
        f"{dora}.lora_up.weight": random(64, 2),
        f"{dora}.dora_scale": 1 + random(1, 32).abs(),
        f"{dora}.alpha": torch.tensor(1.0),
    }
    save_file(tensors, path)
    return tensors


def test_a_foreign_lycoris_file_fuses_into_comfyui_s_weights(tmp_path):
    file = tmp_path / "lycoris.safetensors"
    tensors = foreign_lycoris_file(file)
    kinds = {path.rsplit(".", 1)[-1]: layer.kind for path, layer in read_lora(file, StableDiffusion(TINY)).items()}
    assert kinds == {"conv1": "lokr", "conv2": "loha", "fc1": "dora"}
    Merge().fuse(str(resolve(TINY)), file, tmp_path / "fused")
    fused = stock_pipeline(tmp_path / "fused")
    base = stock_pipeline(resolve(TINY))
    apply_comfyui(base, file, ("unet", "text_encoder"))  # LoKr and LoHa; the DoRA below by LyCORIS's formula
    for name in ("down_blocks.0.resnets.0.conv1", "mid_block.resnets.0.conv2"):
        torch.testing.assert_close(fused.unet.get_submodule(name).weight, base.unet.get_submodule(name).weight)
    linear = stock_pipeline(resolve(TINY)).text_encoder.get_submodule("encoder.layers.0.mlp.fc1")
    prefix = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    adapted = linear.weight + 0.5 * tensors[f"{prefix}.lora_up.weight"] @ tensors[f"{prefix}.lora_down.weight"]
    expected = adapted * tensors[f"{prefix}.dora_scale"] / adapted.norm(dim=0, keepdim=True)
    found = fused.text_encoder.get_submodule("encoder.layers.0.mlp.fc1").weight
    torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("family_class", "builtin"),
    [
        pytest.param(StableDiffusion, TINY, id="sd1"),
        pytest.param(StableDiffusionXL, "builtin:tiny-sdxl", id="sdxl"),
    ],
)
def test_a_simpletuner_lycoris_file_of_a_unet_reads_in_diffusers_names(family_class, builtin, tmp_path):
    model = random_adapter(family_class(builtin), "lokr")
    kohya = load_file(model.export(tmp_path / "kohya"))
    names = kohya_names(family_class.pipeline_class, model.adapted_components())
    renamed = {}  # the UNet's modules as SimpleTuner names them: lycoris_ and the diffusers path
    for key, tensor in kohya.items():
        name, _, suffix = key.partition(".")
        path = names.by_name[name].parts[0]
        if path.startswith("unet."):
            name = "lycoris_" + path.removeprefix("unet.").replace(".", "_")
        renamed[f"{name}.{suffix}"] = tensor.clone()
    assert "lycoris_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1" in renamed
    save_file(renamed, tmp_path / "lycoris.safetensors")
    read = read_lora(tmp_path / "lycoris.safetensors", family_class(builtin))
    deltas = peft_deltas(model)
    assert read.keys() == deltas.keys()
    for module, delta in deltas.items():
        torch.testing.assert_close(read[module].update(delta.shape), delta, atol=1e-6, rtol=0)
    both = {**kohya, **renamed}
    save_file(both, tmp_path / "both.safetensors")
    with pytest.raises(UserError, match=r"adapts unet\..* twice \((lora_unet|lycoris)_\w+ and another module"):
        read_lora(tmp_path / "both.safetensors", family_class(builtin))


def test_a_foreign_lokr_of_flux_s_fused_q_k_v_splits_into_its_parts_exactly(tmp_path):
    generator = torch.Generator().manual_seed(4)
    name = "lora_unet_double_blocks_0_img_attn_qkv"  # the tiny Flux.1's q, k, v: 3 x 32 rows, 32 columns
    tensors = {
        f"{name}.lokr_w1": torch.randn(6, 2, generator=generator),  # w2's 16 rows divide each part's 32
        f"{name}.lokr_w2_a": torch.randn(16, 2, generator=generator),
        f"{name}.lokr_w2_b": torch.randn(2, 16, generator=generator),
        f"{name}.alpha": torch.tensor(1.0),
    }
    save_file(tensors, tmp_path / "qkv.safetensors")
    read = read_lora(tmp_path / "qkv.safetensors", Flux("builtin:tiny-flux"))
    parts = [f"transformer.transformer_blocks.0.attn.to_{x}" for x in "qkv"]
    assert sorted(read) == sorted(parts) and {layer.kind for layer in read.values()} == {"lokr"}
    Merge().fuse("builtin:tiny-flux", tmp_path / "qkv.safetensors", tmp_path / "fused")
    fused = stock_pipeline(tmp_path / "fused", Flux)
    expected = stock_pipeline(resolve("builtin:tiny-flux"), Flux)
    apply_comfyui(expected, tmp_path / "qkv.safetensors", Flux.capabilities.lora_components)
    for part in parts:
        module = part.partition(".")[2]
        found, wanted = fused.transformer.get_submodule(module), expected.transformer.get_submodule(module)
        torch.testing.assert_close(found.weight, wanted.weight, atol=1e-6, rtol=1e-5)


# -- merge, extract and generate --------------------------------------------------------------------------------------


def test_merge_and_extract_take_a_lokr_at_a_rank_and_refuse_a_dora(tmp_path, capsys):
    model = random_adapter(StableDiffusion(TINY), "lokr", train_text_encoder=False, target_modules=["to_q"])
    lokr = model.export(tmp_path / "lokr")
    dora = random_adapter(StableDiffusion(TINY), "dora").export(tmp_path / "dora")
    with pytest.raises(UserError, match=r"^rank: .* is a LoKr, which becomes a LoRA only by the truncated SVD"):
        Merge().loras(TINY, [str(lokr)], tmp_path / "m.safetensors")
    with pytest.raises(UserError, match=r"^resize: .* is a DoRA, whose update depends on the base model's weights"):
        extract(TINY, tmp_path / "r.safetensors", resize=dora, rank=2)
    extract(TINY, tmp_path / "r.safetensors", resize=lokr, rank=2)
    assert "relative Frobenius error" in capsys.readouterr().out
    resized = read_lora(tmp_path / "r.safetensors", StableDiffusion(TINY))
    unet = model.adapted_components()["unet"]
    for path, layer in lora_weights_of({"unet": unet}).items():
        u, s, vh = torch.linalg.svd(
            layer.update(unet.get_submodule(path.partition(".")[2]).get_base_layer().weight.shape)
        )
        assert isinstance(resized[path], LoraLayer) and resized[path].rank == 2
        torch.testing.assert_close(resized[path].delta(), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-4)


def test_generate_fuses_a_lokr_at_each_column_s_strength(tmp_path):
    model = random_adapter(StableDiffusion(TINY), "lokr")
    lokr = model.export(tmp_path)
    family = StableDiffusion(TINY)
    pipeline = stock_pipeline(resolve(TINY))
    names, fused = load_loras(pipeline, [lokr], family, TINY)
    assert names == [] and len(fused.changes) == len(peft_weights(model))
    fused.apply(1.0)
    assert np.abs(stock_images(pipeline) - trained_images(model)).max() <= 1
    path = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    base = stock_pipeline(resolve(TINY)).unet.get_submodule(path.partition(".")[2]).weight
    fused.apply(0.5)
    halfway = 0.5 * (base + peft_weights(model)[path])
    torch.testing.assert_close(pipeline.unet.get_submodule(path.partition(".")[2]).weight, halfway)


# -- a fit through the CLI ---------------------------------------------------------------------------------------------


def test_a_loha_fit_is_evaluated_selected_exported_carded_and_reported(tmp_path):
    run = brief_fit("configs/quickstart_tiny.yaml", tmp_path, {}, "--model.init_args.adapter=loha", max_steps=2)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["adapter"] == "loha"
    steps = [json.loads(line)["step"] for line in (run / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2]
    best = run / "best"
    assert sorted(path.name for path in best.iterdir()) == ["README.md", kohya_file_name("run", 2), "samples.png"]
    assert {key.rsplit(".", 1)[-1] for key in load_file(kohya_file(best))} >= {"hada_w1_a", "hada_w2_b", "alpha"}
    assert "LoHa" in (best / "README.md").read_text()
    report = write_report(run, tmp_path / "report")
    assert "step" in Path(report).read_text()
