"""The FLUX.2 [klein] and [dev] families on their tiny offline models: the pipeline's prompt encoding (three stacked
Qwen3 layers), latents patchified and batch-normalised where the pipeline draws its noise, the packed transformer with
the pipeline's position ids, the default LoRA targets diffusers' script adapts, and the ComfyUI names; [dev]'s
Mistral encoding through its processor's chat template and its distilled guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from safetensors.torch import load_file
from training import equal_tensors, fit_shipped_config, loaded, stock_images, stock_pipeline, training_noise

from sdft.errors import UserError
from sdft.families import Flux2, Flux2Klein
from sdft.families.flux2 import pack, patchify, position_ids, unpack
from sdft.interop.kohya_names import adaptable_modules
from sdft.methods import LoRAFineTuner, TextualInversion
from sdft.methods.lora import kohya_file
from sdft.tiny_chat_models import build_tiny_flux2_klein

PROMPTS = ["a photo of sks toy", "a dog on the beach, at dusk"]


@pytest.fixture(scope="module")
def family(tiny_flux2_klein) -> Flux2Klein:
    return loaded(Flux2Klein(str(tiny_flux2_klein)))


def test_the_tiny_model_samples_through_the_stock_pipeline_and_is_a_function_of_its_seed(tiny_flux2_klein, tmp_path):
    images = stock_images(stock_pipeline(tiny_flux2_klein, Flux2Klein), guidance_scale=4.0)
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).mean() > 1
    again = build_tiny_flux2_klein(tmp_path / "again", seed=0)
    weights = sorted(path.relative_to(again) for path in again.rglob("*.safetensors"))
    assert {path.parts[0] for path in weights} == {"transformer", "vae", "text_encoder"}
    assert all(equal_tensors(load_file(tiny_flux2_klein / path), load_file(again / path)) for path in weights)


def test_conditioning_is_the_pipelines_prompt_encoding(family, tiny_flux2_klein):
    pipeline = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein)
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": PROMPTS}).kwargs
        states, text_ids = pipeline.encode_prompt(list(PROMPTS))
    assert conditioning["encoder_hidden_states"].shape == (2, 512, 120)
    assert torch.equal(conditioning["encoder_hidden_states"], states)
    _, ours = position_ids(2, 3, 4, 512, torch.device("cpu"))
    assert torch.equal(ours, text_ids)


def test_latents_are_patchified_and_normalised_as_the_pipeline_encodes_and_draws_them(family, tiny_flux2_klein):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pipeline = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein)
    with torch.no_grad():
        posterior = family.encode_posterior(pixels)
        expected = pipeline._encode_vae_image(pixels, torch.Generator().manual_seed(0))  # the posterior's mode
    torch.testing.assert_close(posterior.mean, expected)
    assert not torch.allclose(family.vae.bn.running_mean, torch.zeros(16))  # the normalisation is exercised
    latents, image_ids = pipeline.prepare_latents(2, 4, 32, 32, torch.float32, "cpu", torch.Generator())
    assert latents.shape == pack(posterior.mean).shape  # the pipeline's noise has the training latents' shape
    ours, _ = position_ids(2, 4, 4, 8, torch.device("cpu"))
    assert torch.equal(ours, image_ids)
    assert torch.equal(patchify(torch.arange(16.0).view(1, 1, 4, 4))[0, :, 0, 0], torch.tensor([0.0, 1, 4, 5]))
    tokens = torch.randn(2, 12, 16)
    assert torch.equal(pack(unpack(tokens, 3, 4)), tokens)


def test_noisy_input_and_velocity_target_on_the_unshifted_table(family):
    latents = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    assert noised.timesteps.tolist() == pytest.approx([500.0, 900.0])
    sigma = torch.tensor([0.5, 0.9])[:, None, None, None]
    torch.testing.assert_close(noised.noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noised.target, noise - latents)


def test_prediction_runs_the_packed_transformer_as_the_pipeline_does(family):
    latents = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": PROMPTS})
        predicted = family.predict(noised, conditioning)
        states = conditioning.kwargs["encoder_hidden_states"]
        output = family.transformer(
            hidden_states=Flux2KleinPipeline._pack_latents(noised.noisy),
            encoder_hidden_states=states,
            timestep=noised.timesteps / 1000,
            guidance=None,
            img_ids=Flux2KleinPipeline._prepare_latent_ids(noised.noisy),
            txt_ids=Flux2KleinPipeline._prepare_text_ids(states),
        ).sample
    unpacked = Flux2KleinPipeline._unpack_latents_with_ids(output, Flux2KleinPipeline._prepare_latent_ids(latents))
    torch.testing.assert_close(predicted, unpacked)


def test_default_targets_are_diffusers_scripts_and_target_blocks_keep_the_single_blocks_output(family):
    model = LoRAFineTuner(Flux2Klein(family.pretrained_model_name_or_path), rank=2)
    model.configure_model()
    adapted = {name.removesuffix(".base_layer") for name, _ in model.family.transformer.named_modules()
               if name.endswith(".base_layer")}  # fmt: skip
    assert "single_transformer_blocks.1.attn.to_out" in adapted and "transformer_blocks.0.attn.to_out.0" in adapted
    assert "transformer_blocks.0.attn.add_q_proj" not in adapted  # diffusers' default leaves the text stream alone
    chosen = LoRAFineTuner(Flux2Klein(family.pretrained_model_name_or_path), rank=2, target_blocks=[2])
    chosen.configure_model()
    adapted = {name.removesuffix(".base_layer") for name, _ in chosen.family.transformer.named_modules()
               if name.endswith(".base_layer")}  # fmt: skip
    assert adapted == {"single_transformer_blocks.1.attn.to_qkv_mlp_proj", "single_transformer_blocks.1.attn.to_out"}


def test_the_comfyui_file_uses_the_bfl_names_with_qkv_fused(family, tmp_path):
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "linear_in", "linear_out", "to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"]  # fmt: skip
    model = LoRAFineTuner(Flux2Klein(family.pretrained_model_name_or_path), rank=4, target_modules=targets)
    model.configure_model()
    state = load_file(kohya_file(model.export(tmp_path / "export").parent))
    modules = {key.split(".")[0] for key in state}
    expected = {f"lora_unet_double_blocks_0_{name}" for name in (
        "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0",
        "txt_mlp_2")} | {"lora_unet_single_blocks_0_linear1", "lora_unet_single_blocks_1_linear1",
                         "lora_unet_single_blocks_0_linear2"}  # fmt: skip
    assert modules == expected
    shapes = adaptable_modules(model.family.transformer)
    qkv = state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    assert qkv.shape[0] == 3 * shapes["transformer_blocks.0.attn.to_q"][0]


def test_new_tokens_and_bad_options_are_refused_by_name(tiny_flux2_klein):
    model = TextualInversion(Flux2Klein(str(tiny_flux2_klein)), placeholder_token="<sks>", initializer_token="toy")
    with pytest.raises(UserError, match=r"family: Flux2Klein takes no new tokens.* StableDiffusion\b"):
        model.configure_model()
    with pytest.raises(UserError, match="model.init_args.family.init_args.max_sequence_length must be positive"):
        Flux2Klein("builtin:tiny-flux2-klein", max_sequence_length=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "builtin"),
    [
        ("dreambooth_lora", "tiny-flux2-klein"),
        ("dreambooth", "tiny-flux2-klein"),
        ("dev_dreambooth_lora", "tiny-flux2-dev"),
    ],
)
def test_the_shipped_configs_fit_the_tiny_model_with_class_images_from_its_pipeline(config, builtin, tmp_path):
    cpu = "--model.init_args.speed.frozen_dtype=float32"  # bf16 frozen weights need bf16-mixed, unlike a CPU fit
    run = fit_shipped_config(f"configs/flux2/{config}.yaml", tmp_path, f"builtin:{builtin}", cpu)
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # made by the family's pipeline from the base weights
    assert (run / "evaluation" / "selection.json").is_file()
    if config == "dreambooth":
        assert isinstance(stock_pipeline(run / "final", Flux2Klein), Flux2KleinPipeline)
    else:
        assert kohya_file(run / "final") is not None


@pytest.fixture(scope="module")
def dev(tiny_flux2_dev) -> Flux2:
    return loaded(Flux2(str(tiny_flux2_dev)))


def test_dev_conditioning_is_the_pipelines_mistral_encoding_with_its_system_message(dev, tiny_flux2_dev):
    pipeline = Flux2Pipeline.from_pretrained(tiny_flux2_dev)
    with torch.no_grad():
        conditioning = dev.encode_conditioning({"prompts": PROMPTS}).kwargs
        states, _ = pipeline.encode_prompt(list(PROMPTS))
    assert conditioning["encoder_hidden_states"].shape == (2, 512, 120)
    assert torch.equal(conditioning["encoder_hidden_states"], states)
    text = dev.tokenizer.apply_chat_template(
        [[{"role": "system", "content": [{"type": "text", "text": "S"}]},
          {"role": "user", "content": [{"type": "text", "text": "a dog"}]}]], tokenize=False)  # fmt: skip
    assert text == ["<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]a dog[/INST]"]


def test_dev_tells_the_transformer_its_distilled_guidance(dev, monkeypatch):
    assert dev.guidance(2, torch.device("cpu")).tolist() == [1.0, 1.0]
    latents = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noised = training_noise(dev, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        conditioning = dev.encode_conditioning({"prompts": PROMPTS})
        predicted = dev.predict(noised, conditioning)
        monkeypatch.setattr(dev, "guidance_scale", 3.5)
        guided = dev.predict(noised, conditioning)
    assert (guided - predicted).abs().max() > 1e-4


def test_dev_bad_options_name_their_key():
    with pytest.raises(UserError, match="model.init_args.family.init_args.weighting_scheme must be one of"):
        Flux2("builtin:tiny-flux2-dev", weighting_scheme="none")
