"""Memory and speed switches on the tiny models: frozen weights in bfloat16 beside float32 trained ones under
autocast, channels-last UNets, diffusers' attention backends, torch.compile, and the optimizers the extras bring
(8-bit AdamW, Prodigy) beside fused AdamW."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.cli import OptimizerCallable
from peft.utils import get_peft_model_state_dict
from training import fit, full_tuner, lora_tuner, sampled_latents, subject_data, training_noise

from sdft.errors import UserError
from sdft.families import Flux, ModelFamily, StableDiffusion, StableDiffusion3, StableDiffusionXL
from sdft.methods import LoRAFineTuner
from sdft.speed import SpeedOptions, apply_speed_options

BF16 = SpeedOptions(frozen_dtype="bfloat16")


def lora_family(folder, family_class: type[ModelFamily] = StableDiffusion, **kwargs) -> ModelFamily:
    """A loaded family with a rank-4 LoRA on its denoiser (and, with ``train_text_encoder``, its text encoders)."""
    tuner = lora_tuner(family_class(str(folder)), **kwargs)
    tuner.configure_model()
    return tuner.family


def full_family(folder, family_class: type[ModelFamily]) -> ModelFamily:
    """A loaded family whose whole denoiser trains."""
    tuner = full_tuner(family_class(str(folder)))
    tuner.configure_model()
    return tuner.family


def example_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        "prompts": ["a photo of sks toy", "a toy"],
        "original_size": torch.tensor([[32, 32], [40, 32]]),
        "crop_top_left": torch.tensor([[0, 0], [4, 0]]),
    }


def denoising_losses(family: ModelFamily) -> torch.Tensor:
    """Each example's denoising MSE (2,) on a fixed batch with fixed posterior samples, levels and noise."""
    batch = example_batch()
    latents = sampled_latents(family, batch["pixel_values"], torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2))
    prediction = family.predict(noised, family.encode_conditioning(batch))
    return (prediction.float() - noised.target.float()).pow(2).mean(dim=(1, 2, 3))


def fixed_losses(family: ModelFamily) -> torch.Tensor:
    """:func:`denoising_losses` without gradients."""
    with torch.no_grad():
        return denoising_losses(family)


def trained_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("family_class", "fixture", "method"),
    [
        pytest.param(StableDiffusion, "tiny_sd1", "lora", id="sd1-lora-with-text-encoder"),
        pytest.param(StableDiffusionXL, "tiny_sdxl", "lora", id="sdxl-lora"),
        pytest.param(StableDiffusion3, "tiny_sd3", "full", id="sd3-full"),
        pytest.param(Flux, "tiny_flux", "lora", id="flux-lora"),
    ],
)
def test_frozen_weights_go_to_bfloat16_and_train_beside_float32_ones_under_autocast(
    family_class, fixture, method, request
):
    folder = request.getfixturevalue(fixture)
    if method == "lora":
        family = lora_family(folder, family_class, train_text_encoder=family_class is StableDiffusion)
    else:
        family = full_family(folder, family_class)
    reference = fixed_losses(family)
    apply_speed_options(family, BF16, "bf16-mixed")

    vae_dtype = family_class.capabilities.vae_dtype or torch.bfloat16
    components = {family.denoiser_name: family.denoiser, "vae": family.vae, **family.text_encoders()}
    for name, component in components.items():
        for parameter_name, parameter in component.named_parameters():
            frozen = vae_dtype if name == "vae" else torch.bfloat16
            expected = torch.float32 if parameter.requires_grad else frozen
            assert parameter.dtype == expected, (name, parameter_name)
    trained = trained_parameters(family)
    assert trained

    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = denoising_losses(family)
    torch.testing.assert_close(losses, reference, rtol=0.02, atol=0)
    losses.mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())


def test_a_lower_frozen_dtype_needs_the_matching_mixed_precision(tiny_sd1):
    family = lora_family(tiny_sd1)
    # Lightning runs 16-mixed on a CPU as bf16-mixed, so float16 frozen weights on a CPU are refused by name
    cpu_precision = Trainer(accelerator="cpu", precision="16-mixed", logger=False).precision
    assert cpu_precision == "bf16-mixed"
    with pytest.raises(UserError, match=r"model\.init_args\.speed\.frozen_dtype float16 needs trainer\.precision 16"):
        apply_speed_options(family, SpeedOptions(frozen_dtype="float16"), cpu_precision)
    with pytest.raises(UserError, match=r"frozen_dtype bfloat16 needs trainer\.precision bf16-mixed, got 32-true"):
        apply_speed_options(family, BF16, "32-true")
    assert all(p.dtype == torch.float32 for p in family.parameters())  # refused before anything changed
    apply_speed_options(family, SpeedOptions(frozen_dtype="float32"), "32-true")
    assert all(p.dtype == torch.float32 for p in family.parameters())


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(UserError, match=r"^model\.init_args\.speed\.attention_backend must be .*_native_math.*'sdpa'"):
        SpeedOptions(attention_backend="sdpa")
    with pytest.raises(UserError, match=r"^model\.init_args\.speed\.frozen_dtype must be null or one of float32, "):
        SpeedOptions(frozen_dtype="bf16")


def test_channels_last_stores_the_unets_convolutions_channels_last_with_the_same_output(tiny_sd1):
    family = lora_family(tiny_sd1)
    reference = fixed_losses(family)
    apply_speed_options(family, SpeedOptions(channels_last=True), "32-true")
    kernels = [p for p in family.unet.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)
    torch.testing.assert_close(fixed_losses(family), reference)


def test_channels_last_is_refused_for_a_transformer(tiny_sd3):
    family = lora_family(tiny_sd3, StableDiffusion3)
    with pytest.raises(UserError, match=r"^model\.init_args\.speed\.channels_last is for convolutional denoisers"):
        apply_speed_options(family, SpeedOptions(channels_last=True), "32-true")


def sdpa_kernels(family: ModelFamily) -> set[str]:
    """The aten attention kernels one denoiser pass of ``family`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fixed_losses(family)
    return {event.key for event in profile.key_averages() if "scaled_dot_product" in event.key}


def test_attention_backends_give_the_same_output_through_the_chosen_kernel(tiny_flux):
    family = lora_family(tiny_flux, Flux)
    with attention_backend("native"):  # diffusers makes a model's backend the process default: restore it after
        reference = fixed_losses(family)
        apply_speed_options(family, SpeedOptions(attention_backend="_native_math"), "32-true")
        assert "aten::_scaled_dot_product_attention_math" in sdpa_kernels(family)
        torch.testing.assert_close(fixed_losses(family), reference)
        apply_speed_options(family, SpeedOptions(attention_backend="native"), "32-true")
        torch.testing.assert_close(fixed_losses(family), reference)


@pytest.mark.parametrize(
    ("family_class", "fixture"),
    [pytest.param(StableDiffusion, "tiny_sd1", id="sd1"), pytest.param(StableDiffusion3, "tiny_sd3", id="sd3")],
)
def test_an_attention_backend_is_refused_where_the_denoiser_calls_sdpa_itself(family_class, fixture, request):
    family = lora_family(request.getfixturevalue(fixture), family_class)
    with pytest.raises(UserError, match=r"^model\.init_args\.speed\.attention_backend: the (unet|transformer) of"):
        apply_speed_options(family, SpeedOptions(attention_backend="_native_math"), "32-true")


def test_compiling_keeps_parameter_names_and_the_lora_file(tiny_sd1):
    family = lora_family(tiny_sd1)
    names, lora_keys = list(family.state_dict()), list(get_peft_model_state_dict(family.unet))
    apply_speed_options(family, SpeedOptions(compile=True), "32-true")
    assert list(family.state_dict()) == names
    assert list(get_peft_model_state_dict(family.unet)) == lora_keys


@pytest.mark.slow
def test_compiled_unet_matches_eager_in_output_and_adapter_gradients(tiny_sd1):
    eager = lora_family(tiny_sd1)
    compiled = copy.deepcopy(eager)
    apply_speed_options(compiled, SpeedOptions(compile=True), "32-true")
    compiling = []
    compiled.unet.register_forward_pre_hook(lambda *_: compiling.append(torch.compiler.is_compiling()))
    results = []
    for family in (eager, compiled):
        losses = denoising_losses(family)
        losses.mean().backward()
        results.append((losses.detach(), {name: p.grad for name, p in trained_parameters(family).items()}))
    assert compiling == [True]
    torch.testing.assert_close(results[1], results[0])


# -- optimizers --------------------------------------------------------------------------------------------------


def configured_optimizer(class_path: str, **init_args) -> OptimizerCallable:
    """An optimizer as LightningCLI makes ``model.init_args.optimizer`` from a config's class_path and init_args."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--optimizer", type=OptimizerCallable)
    config = parser.parse_object({"optimizer": {"class_path": class_path, "init_args": init_args}})
    return parser.instantiate(config).optimizer


def adamw_steps(family: ModelFamily, start: dict[str, torch.Tensor], fused: bool) -> dict[str, torch.Tensor]:
    """The trained weights after three AdamW steps on a fixed loss from ``start``."""
    parameters = trained_parameters(family)
    for name, parameter in parameters.items():
        parameter.data.copy_(start[name])
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-2, weight_decay=0.01, fused=fused)
    for _ in range(3):
        optimizer.zero_grad()
        denoising_losses(family).mean().backward()
        optimizer.step()
    return {name: p.detach().clone() for name, p in parameters.items()}


def test_fused_adamw_runs_on_cpu_and_updates_as_the_unfused_one(tiny_sd1):
    family = lora_family(tiny_sd1)
    start = {name: p.detach().clone() for name, p in trained_parameters(family).items()}
    unfused, fused = (adamw_steps(family, start, fused) for fused in (False, True))
    assert all(not torch.equal(unfused[name], start[name]) for name in start)
    # within a hundredth of one step (lr 1e-2): the kernels round differently and Adam amplifies it in small grads
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("module", "class_path", "init_args"),
    [
        # min_8bit_size 0: the tiny model's adapters are far below the 4096 elements from which states go 8-bit
        pytest.param("bitsandbytes", "bitsandbytes.optim.AdamW8bit", {"lr": 3e-3, "min_8bit_size": 0}, id="adamw8bit"),
        # d0 0.01: Prodigy's initial step-size estimate; its 1e-6 default needs more steps to grow than this fit has
        pytest.param("prodigyopt", "prodigyopt.Prodigy", {"lr": 1.0, "d0": 0.01}, id="prodigy"),
    ],
)
def test_optional_optimizers_train_a_lora_from_their_config(
    module, class_path, init_args, tiny_sd1, subject_dir, tmp_path
):
    pytest.importorskip(module)
    model = LoRAFineTuner(
        StableDiffusion(str(tiny_sd1)), optimizer=configured_optimizer(class_path, **init_args), rank=4, alpha=8.0
    )
    trained = fit(model, subject_data(subject_dir), tmp_path, steps=8)
    assert trained.loss_after < trained.loss_before
    optimizer = trained.model.trainer.optimizers[0]
    module_path, name = class_path.rsplit(".", 1)
    assert isinstance(optimizer, getattr(importlib.import_module(module_path), name))
    if module == "bitsandbytes":
        states = [state for state in optimizer.state.values() if "state1" in state]
        assert states and all(state["state1"].dtype == torch.uint8 for state in states)
