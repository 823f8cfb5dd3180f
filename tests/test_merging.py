"""Merging LoRAs, fusing one into its base, merging whole models and extracting LoRAs, checked against the formulas
and against diffusers' own LoRA loading."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from jsonargparse import auto_cli
from lora_samples import random_lora, summed_update, write_lora_with_alpha

from sdft.errors import UserError
from sdft.interop.formats import read_lora
from sdft.interop.lora_weights import LoraLayer, LoraWeights
from sdft.interop.merge_commands import Merge, extract
from sdft.interop.merge_operations import ExtractionOptions, extract_from_models, family_of, write_lora_file
from sdft.interop.merging import concatenate_loras, merge_loras, resize_lora
from sdft.interop.model_folders import ModelFolder
from sdft.tiny_models import build_tiny_sd1

ATTENTION = {"unet": ("attn1.to_q", "attn2.to_v"), "text_encoder": ("self_attn.q_proj",)}


def layer(out_dim: int, in_shape: tuple[int, ...], rank: int, alpha: float, seed: int) -> LoraLayer:
    generator = torch.Generator().manual_seed(seed)
    up_shape = (out_dim, rank, 1, 1) if len(in_shape) == 3 else (out_dim, rank)
    return LoraLayer(
        torch.randn(rank, *in_shape, generator=generator), torch.randn(up_shape, generator=generator), alpha
    )


@pytest.fixture
def three_loras() -> list[LoraWeights]:
    """Linear and Conv2d layers of several ranks and alphas; ``only.first`` is in one LoRA only."""
    return [
        {
            "unet.a": layer(6, (5,), 2, 1.0, 0),
            "unet.conv": layer(4, (3, 3, 3), 2, 4.0, 1),
            "only.first": layer(3, (2,), 1, 1, 2),
        },
        {"unet.a": layer(6, (5,), 3, 6.0, 3), "unet.conv": layer(4, (3, 3, 3), 1, 1.0, 4)},
        {"unet.a": layer(6, (5,), 1, 0.5, 5)},
    ]


def truncated(delta: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(delta.flatten(1), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(delta.shape)


def read_output(path: Path, model: Path) -> LoraWeights:
    """A written LoRA file, read back for ``model`` by sdft's reader of every format."""
    return read_lora(path, family_of(ModelFolder.open(model, "model"), "model"))


def printed_error(output: str) -> float:
    """The overall relative error a command printed."""
    return float(re.search(r"relative Frobenius error (\S+) overall", output)[1])


def test_concatenated_merge_is_the_weighted_sum_of_updates(three_loras) -> None:
    weights = [1.0, -0.5, 2.0]
    merged = concatenate_loras(three_loras, weights)
    assert merged["unet.a"].rank == 6 and merged["unet.conv"].rank == 3 and merged["only.first"].rank == 1
    for path, merged_layer in merged.items():
        assert merged_layer.scale == 1.0
        expected = summed_update(three_loras, weights, path)
        torch.testing.assert_close(merged_layer.delta(), expected, atol=1e-5, rtol=1e-5)


def test_svd_merge_is_the_truncated_svd_of_the_summed_update(three_loras) -> None:
    weights = [1.0, 0.5, 1.0]
    merged, errors = merge_loras(three_loras, weights, rank=2)
    for path, merged_layer in merged.items():
        summed = summed_update(three_loras, weights, path)
        assert merged_layer.rank == min(2, sum(lora[path].rank for lora in three_loras if path in lora))
        torch.testing.assert_close(merged_layer.delta(), truncated(summed, 2), atol=1e-5, rtol=1e-5)
        expected = torch.linalg.matrix_norm(summed.flatten(1) - truncated(summed, 2).flatten(1)) / summed.norm()
        assert errors.relative(path) == pytest.approx(float(expected), abs=1e-5)
    assert errors.relative("only.first") == 0.0 and errors.worst()[1] == pytest.approx(errors.relative("unet.a"))


def test_resize_to_its_rank_is_exact_and_to_a_lower_rank_is_the_truncated_svd(three_loras) -> None:
    lora = three_loras[1]
    same, errors = resize_lora(lora, rank=3)
    for path in lora:
        torch.testing.assert_close(same[path].delta(), lora[path].delta(), atol=1e-5, rtol=1e-5)
    assert errors.overall < 1e-6
    lower, errors = resize_lora(lora, rank=1)
    torch.testing.assert_close(lower["unet.a"].delta(), truncated(lora["unet.a"].delta(), 1), atol=1e-5, rtol=1e-5)
    assert lower["unet.a"].rank == 1 and 0.1 < errors.relative("unet.a") < 1


def images(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    options = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "pt"}
    return pipeline("a photo of a dog", generator=generator, **options).images


def test_fused_model_draws_what_the_base_with_the_lora_draws(tiny_sd1: Path, tmp_path: Path) -> None:
    base = ModelFolder.open(tiny_sd1, "model")
    lora = random_lora(base, ATTENTION, rank=4, alpha=8.0, seed=0)
    lora_file = write_lora_with_alpha(lora, tmp_path, StableDiffusionPipeline, rank=4, alpha=8.0)
    Merge().fuse(str(tiny_sd1), lora_file, tmp_path / "fused", scale=0.7)

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd1)
    plain = images(pipeline)
    pipeline.load_lora_weights(lora_file, adapter_name="subject")
    pipeline.set_adapters("subject", 0.7)
    expected = images(pipeline)
    fused = images(StableDiffusionPipeline.from_pretrained(tmp_path / "fused"))
    assert (expected - plain).abs().max() > 0.05  # the LoRA changes the picture
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=0)


def test_a_half_precision_variant_is_read_and_written_in_its_dtype(tiny_sd1: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_sd1, tmp_path / "base")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet").half()
    (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(tmp_path / "base" / "unet", variant="fp16")  # as a hub download of the fp16 variant
    base = ModelFolder.open(tmp_path / "base", "model")
    lora = random_lora(base, {"unet": ("attn1.to_q",)}, rank=2, alpha=2.0, seed=6)
    write_lora_file(lora, tmp_path / "lora.safetensors", family_of(base, "model"), "diffusers", torch.float32)
    Merge().fuse(str(tmp_path / "base"), tmp_path / "lora.safetensors", tmp_path / "fused")
    fused = ModelFolder.open(tmp_path / "fused", "model")
    assert fused.variant("unet") is None and fused.stored_dtype("unet") == torch.float16
    path = next(iter(lora)).partition(".")[2]
    expected = (unet.state_dict()[f"{path}.weight"].float() + lora[f"unet.{path}"].delta()).half()
    torch.testing.assert_close(fused.load("unet", torch.float16).state_dict()[f"{path}.weight"], expected)


def test_exact_merge_loads_as_both_loras_together(tiny_sd1: Path, tmp_path: Path) -> None:
    base = ModelFolder.open(tiny_sd1, "model")
    first = random_lora(base, ATTENTION, rank=2, alpha=4.0, seed=1, size=0.2)
    second = random_lora(base, {"unet": ("attn1.to_q", "attn1.to_k")}, rank=3, alpha=3.0, seed=2, size=0.2)
    files = [
        write_lora_with_alpha(first, tmp_path / "first", StableDiffusionPipeline, rank=2, alpha=4.0),
        write_lora_with_alpha(second, tmp_path / "second", StableDiffusionPipeline, rank=3, alpha=3.0),
    ]
    merged = tmp_path / "merged.safetensors"
    Merge().loras(str(tiny_sd1), [str(file) for file in files], merged, weights=[0.8, -0.6])

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd1)
    pipeline.load_lora_weights(files[0], adapter_name="first")
    pipeline.load_lora_weights(files[1], adapter_name="second")
    pipeline.set_adapters(["first", "second"], [0.8, -0.6])
    together = images(pipeline)
    pipeline.delete_adapters(["first", "second"])
    pipeline.load_lora_weights(merged, adapter_name="merged")
    torch.testing.assert_close(images(pipeline), together, atol=1e-4, rtol=0)


def test_merged_files_in_both_formats_hold_the_merged_updates(tiny_sd1: Path, tmp_path: Path) -> None:
    base = ModelFolder.open(tiny_sd1, "model")
    loras = [random_lora(base, ATTENTION, rank=2, alpha=1.0, seed=seed) for seed in (7, 8)]
    family = family_of(base, "model")
    files = [
        write_lora_file(lora, tmp_path / f"{i}.safetensors", family, "kohya", torch.float32)
        for i, lora in enumerate(loras)
    ]
    for form in ("diffusers", "kohya"):
        output = tmp_path / f"merged-{form}.safetensors"
        Merge().loras(str(tiny_sd1), [str(file) for file in files], output, weights=[1.0, 0.5], format=form)
        merged = read_output(output, tiny_sd1)
        assert merged.keys() == loras[0].keys()
        for path, merged_layer in merged.items():
            expected = summed_update(loras, [1.0, 0.5], path)
            torch.testing.assert_close(merged_layer.delta(), expected, atol=1e-5, rtol=1e-5)


def test_extraction_recovers_a_known_lora(tiny_sd1: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ModelFolder.open(tiny_sd1, "model")
    targets = {**ATTENTION, "unet": ("attn1.to_q", "attn2.to_v", "resnets.0.conv1")}
    lora = random_lora(base, targets, rank=3, alpha=3.0, seed=3, size=0.2)
    lora_file = write_lora_with_alpha(lora, tmp_path, StableDiffusionPipeline, rank=3, alpha=3.0)
    Merge().fuse(str(tiny_sd1), lora_file, tmp_path / "tuned")

    output = tmp_path / "x.safetensors"
    extract(str(tiny_sd1), output, tuned=str(tmp_path / "tuned"), rank=3, conv_rank=3, text_encoders=True)
    assert printed_error(capsys.readouterr().out) < 1e-5
    extracted = read_output(output, tiny_sd1)
    assert set(extracted) == set(lora)  # unchanged modules are left out
    for path in lora:
        torch.testing.assert_close(extracted[path].delta(), lora[path].delta(), atol=2e-5, rtol=1e-4)

    family, tuned = family_of(base, "base"), ModelFolder.open(tmp_path / "tuned", "tuned")
    every_linear = ExtractionOptions(rank=3, conv_rank=3, modules="linear", text_encoders=True)
    assert set(extract_from_models(tuned, base, family, every_linear)[0]) == set(lora)  # the others are unchanged
    lower, errors = extract_from_models(tuned, base, family, ExtractionOptions(rank=2))
    assert {path.partition(".")[0] for path in lower} == {"unet"} and not any("conv" in path for path in lower)
    for path, extracted_layer in lower.items():
        torch.testing.assert_close(extracted_layer.delta(), truncated(lora[path].delta(), 2), atol=2e-5, rtol=1e-4)
    assert 0.05 < errors.overall < 1

    with pytest.raises(UserError, match=r"differs from .* by more than min_difference=1e\+06 .* was not written"):
        extract(str(tiny_sd1), tmp_path / "empty.safetensors", tuned=str(tmp_path / "tuned"), min_difference=1e6)
    assert not (tmp_path / "empty.safetensors").exists()


@pytest.mark.parametrize(
    ("model", "targets"),
    [
        ("tiny_sdxl", {"unet": ("attn2.to_k",), "text_encoder_2": ("self_attn.out_proj",)}),
        ("tiny_sd3", {"transformer": ("attn.to_q", "attn.add_v_proj"), "text_encoder_2": ("self_attn.k_proj",)}),
        ("tiny_flux", {"transformer": ("attn.to_v", "ff.net.2"), "text_encoder": ("self_attn.q_proj",)}),
        ("tiny_zimage", {"transformer": ("attention.to_k", "feed_forward.w2")}),
        ("tiny_flux2_klein", {"transformer": ("attn.to_q", "attn.to_qkv_mlp_proj")}),
        ("tiny_qwen_image", {"transformer": ("attn.to_v", "attn.to_out.0")}),
        ("tiny_flux2_dev", {"transformer": ("attn.to_k", "attn.to_qkv_mlp_proj")}),
    ],
)
def test_every_family_fuses_and_extracts(model: str, targets, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    base_path = request.getfixturevalue(model)
    base = ModelFolder.open(base_path, "model")
    family = family_of(base, "model")
    lora = random_lora(base, targets, rank=2, alpha=2.0, seed=5, size=0.2)
    write_lora_file(lora, tmp_path / "lora.safetensors", family, "kohya", torch.float32)
    Merge().fuse(str(base_path), tmp_path / "lora.safetensors", tmp_path / "tuned")
    tuned = ModelFolder.open(tmp_path / "tuned", "tuned")
    extracted, errors = extract_from_models(tuned, base, family, ExtractionOptions(rank=2, text_encoders=True))
    assert set(extracted) == set(lora) and errors.overall < 1e-5
    for path in lora:
        torch.testing.assert_close(extracted[path].delta(), lora[path].delta(), atol=2e-5, rtol=1e-4)


def test_resize_command_prints_its_error(tiny_sd1: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lora = random_lora(ModelFolder.open(tiny_sd1, "model"), {"unet": ("to_q",)}, rank=4, alpha=2.0, seed=4)
    lora_file = write_lora_with_alpha(lora, tmp_path, StableDiffusionPipeline, rank=4, alpha=2.0)
    extract(str(tiny_sd1), tmp_path / "same.safetensors", resize=lora_file, rank=4)
    assert printed_error(capsys.readouterr().out) < 1e-5
    same = read_output(tmp_path / "same.safetensors", tiny_sd1)
    for path in lora:
        torch.testing.assert_close(same[path].delta(), lora[path].delta(), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("models")
    return [build_tiny_sd1(folder / f"seed-{seed}", seed=seed) for seed in range(3)]


def component_state(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return ModelFolder.open(folder, "model").load(name).state_dict()


def test_weighted_sum_and_add_difference_follow_their_formulas(three_models: list[Path], tmp_path: Path) -> None:
    a, b, c = (str(folder) for folder in three_models)
    Merge().models(a, b, tmp_path / "sum", multiplier=0.3, multipliers={"vae": 0.0})
    Merge().models(a, b, tmp_path / "difference", model_c=c, multiplier=0.7)
    for name in ("unet", "text_encoder", "vae"):
        sa, sb, sc = (component_state(folder, name) for folder in three_models)
        summed, difference = component_state(tmp_path / "sum", name), component_state(tmp_path / "difference", name)
        m = 0.0 if name == "vae" else 0.3
        for key, tensor in sa.items():
            torch.testing.assert_close(summed[key], (1 - m) * tensor + m * sb[key], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(difference[key], tensor + 0.7 * (sb[key] - sc[key]), atol=1e-6, rtol=1e-6)
    vocabulary = "tokenizer/vocab.json"
    assert (tmp_path / "sum" / vocabulary).read_bytes() == (Path(a) / vocabulary).read_bytes()


def test_models_of_another_architecture_are_refused_in_one_line(
    tiny_sd1: Path, tiny_sd2_v: Path, tiny_sdxl: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"^unet of model_b: tensor \S+ has shape .* merge models of one architecture$"):
        Merge().models(str(tiny_sd1), str(tiny_sd2_v), tmp_path / "out")
    with pytest.raises(UserError, match="^model_b: StableDiffusionXLPipeline .* use models of one architecture$"):
        Merge().models(str(tiny_sd1), str(tiny_sdxl), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mistakes_are_refused_in_one_line(tiny_sd1: Path, tiny_sd3: Path, tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    family = family_of(ModelFolder.open(tiny_sd1, "model"), "model")
    write_lora_file({"unet.conv_in": layer(32, (4, 3, 3), 1, 1.0, 0)}, lora, family, "diffusers", torch.float32)
    model, out = str(tiny_sd1), tmp_path / "m.safetensors"
    cases = [
        (lambda: Merge().loras(model, [str(lora), str(lora)], out, weights=[1.0]), "^weights: give one weight"),
        (lambda: Merge().loras(model, [str(lora)], tmp_path / "m.ckpt"), "^output: .* must be a .safetensors"),
        (lambda: Merge().loras(model, [str(tmp_path / "none.safetensors")], out), "^loras: .* not found"),
        (lambda: Merge().loras(str(tiny_sd3), [str(lora)], out), "^loras: .* adapts 1 modules the model lacks"),
        (lambda: Merge().fuse(str(tiny_sd3), lora, tmp_path / "x.safetensors"), "^output: single-file checkpoints"),
        (lambda: Merge().fuse(str(tmp_path), lora, tmp_path / "x"), "^model: .* is not a diffusers model folder"),
        (lambda: Merge().models(model, model, tmp_path / "x", multipliers={"unte": 1}), "^multipliers: .* no comp"),
        (lambda: extract(model, out), "^tuned, resize: give one"),
        (lambda: extract(model, out, resize=lora, rank=0), "^rank must be a positive integer"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()


def test_command_lines_parse(tiny_sd1: Path, tmp_path: Path) -> None:
    base = ModelFolder.open(tiny_sd1, "model")
    family = family_of(base, "model")
    loras = [random_lora(base, {"unet": ("attn1.to_q",)}, rank=2, alpha=2.0, seed=seed) for seed in (9, 10)]
    files = [
        write_lora_file(lora, tmp_path / f"{i}.sft.safetensors", family, "diffusers", torch.float32)
        for i, lora in enumerate(loras)
    ]
    listed = "[" + ",".join(str(file) for file in files) + "]"
    merged = tmp_path / "m.safetensors"
    auto_cli(Merge, args=["loras", str(tiny_sd1), listed, str(merged), "--weights", "[1, 0.5]", "--rank", "1"])
    path = next(iter(loras[0]))
    expected = truncated(summed_update(loras, [1.0, 0.5], path), 1)
    torch.testing.assert_close(read_output(merged, tiny_sd1)[path].delta(), expected, atol=1e-5, rtol=1e-5)
    resized = tmp_path / "r.safetensors"
    auto_cli(extract, args=[str(tiny_sd1), str(resized), "--resize", str(files[1]), "--rank", "1", "--format", "kohya"])
    assert read_output(resized, tiny_sd1)[path].rank == 1
