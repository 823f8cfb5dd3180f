"""The Flux.1 family on its tiny offline model: 2x2 latent packing and image ids as FluxPipeline lays them out, the
pipeline's prompt encoding, the rectified-flow objective and the resolution shift by hand, the guidance embedding,
and LoRA and full fine-tuning that learn, checkpoint what trains, resume exactly and export what FluxPipeline
reproduces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors import safe_open
from safetensors.torch import load_file
from training import (
    PROMPT,
    SEEDS,
    check_full_transformer_fine_tuning,
    equal_tensors,
    fit,
    fit_shipped_config,
    loaded,
    lora_tuner,
    resumed_losses,
    stock_images,
    stock_pipeline,
    subject_data,
    trained_images,
    training_noise,
)

from sdft.errors import UserError
from sdft.families import Flux
from sdft.families.flux import latent_image_ids, pack_latents, unpack_latents
from sdft.methods import PivotalTuning
from sdft.methods.lora import LORA_WEIGHTS
from sdft.tiny_transformer_models import build_tiny_flux

#: the distilled guidance (the guidance embedding's input) of every image comparison
GUIDANCE = 3.5


@pytest.fixture(scope="module")
def family(tiny_flux) -> Flux:
    return loaded(Flux(str(tiny_flux)))


def test_packing_round_trips_and_matches_the_pipelines_layout():
    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 3 * 4, 16)
    assert torch.equal(unpack_latents(tokens, 6, 8), latents)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    # the pipeline unpacks from the image size: 8x the latent size for its VAE of factor 8
    assert torch.equal(unpack_latents(tokens, 6, 8), FluxPipeline._unpack_latents(tokens, 48, 64, 8))
    # token 0 is the top-left 2x2 patch, channels first: (c0 of the 4 pixels, c1 of them, ...)
    assert tokens[0, 0, :4].tolist() == latents[0, 0, :2, :2].flatten().tolist()
    assert tokens[0, 1, :4].tolist() == latents[0, 0, :2, 2:4].flatten().tolist()


def test_image_ids_are_row_and_column_as_the_pipeline_makes_them():
    ids = latent_image_ids(3, 4, torch.device("cpu"), torch.float32)
    assert ids.shape == (12, 3)
    assert ids[5].tolist() == [0.0, 1.0, 1.0] and ids[11].tolist() == [0.0, 2.0, 3.0]
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 4, torch.device("cpu"), torch.float32))


def test_the_tiny_model_samples_through_the_stock_pipeline_and_is_a_function_of_its_seed(tiny_flux, tmp_path):
    stock = stock_pipeline(tiny_flux, Flux)
    images = stock_images(stock, guidance_scale=GUIDANCE)
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).mean() > 1  # two seeds, two images
    assert stock.transformer.config.guidance_embeds and stock.scheduler.config.use_dynamic_shifting
    again = build_tiny_flux(tmp_path / "again", seed=0)
    weights = sorted(path.relative_to(again) for path in again.rglob("*.safetensors"))
    assert {path.parts[0] for path in weights} == {"transformer", "vae", "text_encoder", "text_encoder_2"}
    assert all(equal_tensors(load_file(tiny_flux / path), load_file(again / path)) for path in weights)


def test_conditioning_is_the_pipelines_prompt_encoding(family, tiny_flux):
    prompts = [PROMPT, "a dog on the beach"]
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": prompts}).kwargs
        states, pooled, _ = pipeline.encode_prompt(prompts, None, max_sequence_length=512)
    assert conditioning["encoder_hidden_states"].shape == (2, 512, 96)
    assert torch.equal(conditioning["encoder_hidden_states"], states)
    assert torch.equal(conditioning["pooled_projections"], pooled)


def test_noisy_input_and_velocity_target_at_fixed_levels_by_hand(family):
    """Flux trains on the unshifted table by default (its shift is dynamic): level q -> uniform quantile u = 1 - q
    -> index floor(1000 u) -> sigma (1000 - index) / 1000, i.e. 0.5 and 0.9; the target is noise - x0."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5, 0.9])[:, None, None, None]
    assert noised.timesteps.tolist() == pytest.approx([500.0, 900.0])
    torch.testing.assert_close(noised.noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noised.target, noise - latents)


def test_the_resolution_shift_by_hand(tiny_flux):
    """8x8 latents are 16 tokens: mu = 0.5 + (16 - 256) * 0.65 / 3840 = 0.459375, and sigma 0.5 shifts to
    e^mu * 0.5 / (1 + (e^mu - 1) * 0.5) = 0.61287 (the sampler's own shift at this size)."""
    family = Flux(str(tiny_flux), resolution_shift=True)
    family.load()
    noised = training_noise(family, torch.zeros(1, 4, 8, 8), torch.Generator().manual_seed(0), torch.tensor([0.5]))
    shift = math.exp(0.5 + (16 - 256) * 0.65 / 3840)
    assert noised.timesteps.item() / 1000 == pytest.approx(shift * 0.5 / (1 + (shift - 1) * 0.5))
    assert noised.timesteps.item() / 1000 == pytest.approx(0.6128659)


def test_prediction_runs_the_packed_transformer_with_the_guidance_and_unpacks_it(family, monkeypatch):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": [PROMPT] * 2})
        predicted = family.predict(noised, conditioning)
        output = family.transformer(
            hidden_states=pack_latents(noised.noisy),
            timestep=noised.timesteps / 1000,
            guidance=torch.tensor([1.0, 1.0]),
            img_ids=latent_image_ids(4, 4, latents.device, latents.dtype),
            txt_ids=torch.zeros(512, 3),
            **conditioning.kwargs,
        ).sample
        monkeypatch.setattr(family, "guidance_scale", 3.5)
        guided = family.predict(noised, conditioning)
    assert predicted.shape == noised.target.shape
    torch.testing.assert_close(predicted, unpack_latents(output, 8, 8))
    assert (guided - predicted).abs().max() > 1e-4  # the guidance embedding is used


def test_guidance_goes_only_to_a_transformer_with_the_guidance_embedding(family, monkeypatch):
    assert family.guidance(2, torch.device("cpu")).tolist() == [1.0, 1.0]  # training default, as diffusers' README
    schnell = FluxTransformer2DModel.from_config({**family.transformer.config, "guidance_embeds": False})
    monkeypatch.setattr(family, "transformer", schnell)
    assert family.guidance(2, torch.device("cpu")) is None


def test_new_tokens_are_refused_by_name(tiny_flux):
    model = PivotalTuning(Flux(str(tiny_flux)), placeholder_token="<sks>", initializer_token="toy")
    with pytest.raises(UserError, match=r"family: Flux takes no new tokens.* StableDiffusion\b"):
        model.configure_model()


def test_bad_options_name_their_key():
    with pytest.raises(UserError, match="model.init_args.family.init_args.weighting_scheme must be one of"):
        Flux("builtin:tiny-flux", weighting_scheme="none")


@pytest.fixture(scope="module")
def lora_fit(tiny_flux, subject_dir, tmp_path_factory):
    """A LoRA on the transformer and CLIP-L, 6 steps, checkpointed at 3 and 6."""
    model = lora_tuner(Flux(str(tiny_flux)), lr=3e-2, train_text_encoder=True)
    return fit(model, subject_data(subject_dir), tmp_path_factory.mktemp("flux-lora"), steps=6, every=3)


def test_lora_learns_and_its_export_loads_in_the_stock_pipeline_with_the_same_images(lora_fit, tiny_flux, tmp_path):
    assert lora_fit.loss_after < 0.97 * lora_fit.loss_before, (lora_fit.loss_before, lora_fit.loss_after)
    path = lora_fit.model.export(tmp_path)
    with safe_open(path, "pt") as file:
        keys = list(file.keys())
    assert {key.split(".")[0] for key in keys} == {"transformer", "text_encoder"}  # never T5
    assert any(key.startswith("transformer.single_transformer_blocks.") for key in keys)
    pipeline = stock_pipeline(tiny_flux, Flux)
    pipeline.load_lora_weights(tmp_path, weight_name=LORA_WEIGHTS)
    expected = trained_images(lora_fit.model, guidance_scale=GUIDANCE)
    assert np.abs(stock_images(pipeline, guidance_scale=GUIDANCE) - expected).max() <= 1
    assert np.abs(stock_images(stock_pipeline(tiny_flux, Flux), guidance_scale=GUIDANCE) - expected).mean() > 1


def test_lora_checkpoints_what_trains_and_resumes_exactly(lora_fit, tiny_flux, subject_dir, tmp_path):
    state = torch.load(lora_fit.checkpoint(6), weights_only=False)["state_dict"]
    assert set(state) == set(lora_fit.model.trainable_state_dict())
    assert {key.split(".")[1] for key in state} == {"transformer", "text_encoder"}
    fresh = lora_tuner(Flux(str(tiny_flux)), lr=3e-2, train_text_encoder=True)
    resumed = resumed_losses(fresh, subject_data(subject_dir), tmp_path, 6, lora_fit.checkpoint(3))
    assert sorted(resumed) == [4, 5, 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(lora_fit.losses[step], rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_full_fine_tuning_exports_a_pipeline_that_reproduces_the_images(tiny_flux, subject_dir, tmp_path):
    check_full_transformer_fine_tuning(Flux, tiny_flux, subject_dir, tmp_path, GUIDANCE)


@pytest.mark.slow
def test_the_shipped_dreambooth_config_fits_the_tiny_model_with_generated_class_images(tmp_path):
    run = fit_shipped_config("configs/flux/dreambooth.yaml", tmp_path, "builtin:tiny-flux")
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # made by the family's base_pipeline
    for export in ("final", "best"):
        assert stock_pipeline(run / export, Flux).transformer.config.guidance_embeds
    assert (run / "evaluation" / "selection.json").is_file()


def test_sampling_reads_prompts_at_the_trained_t5_length(tiny_flux):
    """A family trained on 16 T5 tokens samples with 16 (the stock pipeline's default is 512), in previews,
    evaluations and class images alike, as the pipeline does when told the same length."""
    model = lora_tuner(Flux(str(tiny_flux), max_sequence_length=16))
    model.configure_model()
    pipeline = stock_pipeline(tiny_flux, Flux)
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    at_16 = pipeline(
        [PROMPT] * len(SEEDS),
        generator=generators,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=GUIDANCE,
        max_sequence_length=16,
    ).images
    trained = trained_images(model, guidance_scale=GUIDANCE)
    assert np.array_equal(trained, np.stack([np.asarray(image) for image in at_16]).astype(np.int16))
    assert not np.array_equal(trained, stock_images(pipeline, guidance_scale=GUIDANCE))
