"""The Qwen-Image family on its tiny offline model: the pipeline's prompt encoding (the template's opening dropped,
padding masked), the autoencoder's per-channel latent statistics, the packed transformer on a batch trimmed to its
longest prompt, classifier-free guidance as ``true_cfg_scale``, and the ComfyUI names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from safetensors.torch import load_file
from training import equal_tensors, fit_shipped_config, loaded, stock_images, stock_pipeline, training_noise

from sdft.errors import UserError
from sdft.families import QwenImage
from sdft.families.base import Conditioning
from sdft.families.flux import pack_latents, unpack_latents
from sdft.methods import LoRAFineTuner, TextualInversion
from sdft.methods.lora import kohya_file
from sdft.tiny_chat_models import build_tiny_qwen_image
from sdft.tools.generate import pipeline_default

PROMPTS = ["a photo of sks toy", "a dog on the beach, at dusk, under a red sky"]


@pytest.fixture(scope="module")
def family(tiny_qwen_image) -> QwenImage:
    return loaded(QwenImage(str(tiny_qwen_image)))


@pytest.fixture(scope="module")
def pipeline(tiny_qwen_image) -> QwenImagePipeline:
    return QwenImagePipeline.from_pretrained(tiny_qwen_image)


def test_the_tiny_model_samples_through_the_stock_pipeline_and_is_a_function_of_its_seed(tiny_qwen_image, tmp_path):
    stock = stock_pipeline(tiny_qwen_image, QwenImage)
    guided, plain = stock_images(stock, guidance_scale=4.0), stock_images(stock, guidance_scale=1.0)
    assert guided.shape == (2, 32, 32, 3) and np.abs(guided[0] - guided[1]).mean() > 1
    assert np.abs(guided - plain).max() > 0  # true_cfg_scale with the blank negative prompt guides
    again = build_tiny_qwen_image(tmp_path / "again", seed=0)
    weights = sorted(path.relative_to(again) for path in again.rglob("*.safetensors"))
    assert {path.parts[0] for path in weights} == {"transformer", "vae", "text_encoder"}
    assert all(equal_tensors(load_file(tiny_qwen_image / path), load_file(again / path)) for path in weights)


def test_conditioning_is_the_pipelines_prompt_encoding(family, pipeline):
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": PROMPTS}).kwargs
        states, mask = pipeline.encode_prompt(list(PROMPTS))
    ours, our_mask = conditioning["encoder_hidden_states"], conditioning["encoder_hidden_states_mask"]
    assert ours.shape == (2, 1024, 40) and our_mask.shape == (2, 1024)
    length = states.shape[1]
    assert int(our_mask.sum(dim=1).max()) == length and int(our_mask[0].sum()) < length  # two lengths, masked
    # the pipeline pads a batch to its longest prompt, the family to max_sequence_length (so that it caches): the
    # language model's attention then sums over other lengths of masked padding, equal up to rounding
    torch.testing.assert_close(ours[:, :length], states, rtol=1e-5, atol=1e-6)
    assert torch.equal(our_mask[:, :length], mask.bool())
    assert not ours[:, length:].any()


def test_latents_are_normalised_per_channel_as_the_pipeline_decodes_them(family):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = family.encode_posterior(pixels)
        raw = family.vae.encode(pixels.unsqueeze(2)).latent_dist.mean[:, :, 0]
    config = family.vae.config
    mean, std = torch.tensor(config.latents_mean).view(1, 4, 1, 1), torch.tensor(config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(posterior.mean, (raw - mean) / std)
    # the pipeline's decoding (latents / (1 / std) + mean) undoes it
    torch.testing.assert_close(posterior.mean / (1.0 / std) + mean, raw, atol=1e-5, rtol=1e-5)
    packed = QwenImagePipeline._pack_latents(posterior.mean.unsqueeze(1), 2, 4, 8, 8)
    assert torch.equal(pack_latents(posterior.mean), packed)
    unpacked = QwenImagePipeline._unpack_latents(packed, 32, 32, 4)[:, :, 0]
    assert torch.equal(unpack_latents(packed, 8, 8), unpacked)


def test_prediction_trims_the_batch_to_its_longest_prompt_as_the_pipeline_pads_it(family, pipeline):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        predicted = family.predict(noised, family.encode_conditioning({"prompts": PROMPTS}))
        states, mask = pipeline.encode_prompt(list(PROMPTS))
        output = family.transformer(
            hidden_states=pack_latents(noised.noisy),
            encoder_hidden_states=states,
            encoder_hidden_states_mask=mask,
            timestep=noised.timesteps / 1000,
            img_shapes=[[(1, 4, 4)]] * 2,
        ).sample
        alone = family.predict(noised, family.encode_conditioning({"prompts": [PROMPTS[0]] * 2}))
    torch.testing.assert_close(predicted, unpack_latents(output, 8, 8))
    assert (alone[1] - predicted[1]).abs().max() > 1e-4  # each image reads its own prompt


def test_guidance_is_true_cfg_with_a_blank_negative_prompt():
    assert QwenImage.guidance_options(4.0, 3) == {"true_cfg_scale": 4.0, "negative_prompt": [" "] * 3}
    assert QwenImage.guidance_options(1.0, 3) == {}
    # sdft generate's default guidance is the pipeline's true_cfg_scale (its guidance_scale defaults to None)
    assert pipeline_default(QwenImage, QwenImage.guidance_parameter) == 4.0


def test_the_comfyui_file_uses_the_diffusers_names_comfyui_maps(family, tmp_path):
    attention = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    streams = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2", "img_mod.1", "txt_mod.1"]
    targets = attention + streams
    model = LoRAFineTuner(QwenImage(family.pretrained_model_name_or_path), rank=4, target_modules=targets)
    model.configure_model()
    state = load_file(kohya_file(model.export(tmp_path / "export").parent))
    modules = {key.split(".")[0] for key in state}
    # ComfyUI's generic rule: lora_unet_ + the module of its model (whose names are diffusers'), dots as underscores
    weights = {name.removesuffix(".weight").replace(".base_layer", "") for name, tensor
               in model.family.transformer.state_dict().items() if name.endswith(".weight") and ".lora_" not in name
               and tensor.dim() == 2}  # fmt: skip
    comfyui = {"lora_unet_" + name.replace(".", "_") for name in weights}
    assert modules <= comfyui and len(modules) == 2 * 14  # two blocks, every target in each


def test_new_tokens_and_bad_options_are_refused_by_name(tiny_qwen_image):
    model = TextualInversion(QwenImage(str(tiny_qwen_image)), placeholder_token="<sks>", initializer_token="toy")
    with pytest.raises(UserError, match=r"family: QwenImage takes no new tokens.* StableDiffusion\b"):
        model.configure_model()
    with pytest.raises(UserError, match="model.init_args.family.init_args.max_sequence_length must be in"):
        QwenImage("builtin:tiny-qwen-image", max_sequence_length=2048)


def test_conditioning_joins_and_repeats_with_its_mask():
    parts = [
        Conditioning({"encoder_hidden_states": torch.ones(1, 3, 2), "encoder_hidden_states_mask": torch.ones(1, 3)})
    ]
    joined = Conditioning.cat(parts * 2).repeat_interleave(2)
    assert joined.kwargs["encoder_hidden_states"].shape == (4, 3, 2) and joined.kwargs[
        "encoder_hidden_states_mask"
    ].shape == (4, 3)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["dreambooth_lora", "dreambooth"])
def test_the_shipped_configs_fit_the_tiny_model_with_class_images_from_its_pipeline(config, tmp_path):
    cpu = "--model.init_args.speed.frozen_dtype=float32"  # bf16 frozen weights need bf16-mixed, unlike a CPU fit
    run = fit_shipped_config(f"configs/qwen_image/{config}.yaml", tmp_path, "builtin:tiny-qwen-image", cpu)
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # made by QwenImagePipeline from the base weights
    assert (run / "evaluation" / "selection.json").is_file()
    if config == "dreambooth":
        assert isinstance(stock_pipeline(run / "final", QwenImage), QwenImagePipeline)
    else:
        assert kohya_file(run / "final") is not None
