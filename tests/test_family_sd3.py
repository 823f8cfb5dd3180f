"""The SD3 / SD3.5 family on its tiny offline model: the stock pipeline's prompt encoding, the rectified-flow
objective at fixed levels by hand, LoRA and full fine-tuning that learn, checkpoint what trains, resume exactly
and export what StableDiffusion3Pipeline reproduces, and the methods it refuses by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors import safe_open
from safetensors.torch import load_file
from training import (
    PROMPT,
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
from transformers import T5TokenizerFast

from sdft.errors import UserError
from sdft.families import StableDiffusion3
from sdft.methods import TextualInversion
from sdft.methods.lora import LORA_WEIGHTS
from sdft.tiny_transformer_models import build_tiny_sd3
from sdft.tokenizers import write_t5_tokenizer

#: the classifier-free guidance of every image comparison
GUIDANCE = 3.5
#: Phi(1), the standard normal's CDF at 1: the logit-normal(0, 1) density's Phi(1) quantile is sigmoid(1)
PHI_1 = 0.8413447460685429


@pytest.fixture(scope="module")
def family(tiny_sd3) -> StableDiffusion3:
    return loaded(StableDiffusion3(str(tiny_sd3)))


def test_the_tiny_model_samples_through_the_stock_pipeline_and_is_a_function_of_its_seed(tiny_sd3, tmp_path):
    stock = stock_pipeline(tiny_sd3, StableDiffusion3)
    images = stock_images(stock, guidance_scale=GUIDANCE)
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).mean() > 1  # two seeds, two images
    tokenizer = stock.tokenizer_3
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    again = build_tiny_sd3(tmp_path / "again", seed=0)
    weights = sorted(path.relative_to(again) for path in again.rglob("*.safetensors"))
    assert {path.parts[0] for path in weights} == {
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    }
    assert all(equal_tensors(load_file(tiny_sd3 / path), load_file(again / path)) for path in weights)


def test_the_t5_tokenizer_is_a_unigram_tokenizer_in_t5s_layout(tmp_path):
    tokenizer = T5TokenizerFast.from_pretrained(write_t5_tokenizer(tmp_path / "t5"))
    ids = tokenizer("a photo of sks dog!", padding="max_length", max_length=10).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["\u2581a", "\u2581photo", "\u2581of", "\u2581sk", "s", "\u2581dog", "!", "</s>", "<pad>", "<pad>"]
    assert ids[-3:] == [1, 0, 0] and tokenizer.convert_tokens_to_ids("<unk>") == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of sks dog!"
    assert tokenizer("caf\u00e9").input_ids[-2:] == [2, 1]  # outside ASCII: unknown, as T5 without byte fallback


@pytest.mark.parametrize("use_t5", [True, False], ids=["t5", "no-t5"])
def test_conditioning_is_the_pipelines_prompt_encoding(tiny_sd3, use_t5):
    family = StableDiffusion3(str(tiny_sd3), use_t5=use_t5, max_sequence_length=40)
    family.load()
    prompts = [PROMPT, "a dog on the beach"]
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": prompts}).kwargs
        pipeline = StableDiffusion3Pipeline.from_pretrained(
            tiny_sd3, **({} if use_t5 else {"text_encoder_3": None, "tokenizer_3": None})
        )
        states, _, pooled, _ = pipeline.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=40
        )
    assert conditioning["encoder_hidden_states"].shape == (2, 77 + 40, 96)
    assert torch.equal(conditioning["encoder_hidden_states"], states)
    assert torch.equal(conditioning["pooled_projections"], pooled)
    assert (conditioning["encoder_hidden_states"][:, 77:].abs().sum() == 0) is not use_t5  # zeros without T5


def shifted(index: int) -> float:
    """Sigma at index ``index`` of SD3's table, by hand: s = (1000 - index) / 1000, shifted by 3."""
    s = (1000 - index) / 1000
    return 3 * s / (1 + 2 * s)


def test_noisy_input_target_and_weight_at_fixed_levels_by_hand(family):
    """Level 0.5 is the logit-normal's median, sigmoid(0) = 0.5 -> index 500 -> sigma 0.75; level 1 - Phi(1) is
    sigmoid(1) = 0.731 -> index 731 -> sigma 0.5247 (less noise). Preconditioned: the target is the clean latent."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 1 - PHI_1]))
    sigma = torch.tensor([shifted(500), shifted(731)])
    assert sigma.tolist() == pytest.approx([0.75, 0.5247074])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        noised.noisy, (1 - sigma[:, None, None, None]) * latents + sigma[:, None, None, None] * noise
    )
    torch.testing.assert_close(noised.timesteps, 1000 * sigma)
    assert torch.equal(noised.target, latents) and noised.weight.tolist() == [1.0, 1.0]


def test_prediction_is_the_preconditioned_transformer_output(family):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": [PROMPT] * 2})
        predicted = family.predict(noised, conditioning)
        output = family.transformer(noised.noisy, **conditioning.kwargs, timestep=noised.timesteps).sample
    sigma = (noised.timesteps / 1000)[:, None, None, None]
    torch.testing.assert_close(predicted, noised.noisy - sigma * output)


def test_the_objective_options_reach_the_noised_latents(tiny_sd3):
    family = StableDiffusion3(str(tiny_sd3), loss_weighting="sigma_sqrt", precondition_outputs=False)
    family.load()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5]))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    assert noised.weight.item() == pytest.approx(0.75**-2)
    torch.testing.assert_close(noised.target, noise - latents)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"weighting_scheme": "beta"}, "weighting_scheme"),
        ({"loss_weighting": "snr"}, "loss_weighting"),
        ({"logit_std": 0.0}, "logit_std"),
        ({"max_sequence_length": 600}, "max_sequence_length"),
    ],
)
def test_bad_objective_options_name_their_key(options, key):
    with pytest.raises(UserError, match=rf"model.init_args.family.init_args.{key} must"):
        StableDiffusion3("builtin:tiny-sd3", **options)


def test_a_resolution_shift_needs_a_dynamic_scheduler(tiny_sd3):
    with pytest.raises(UserError, match=r"resolution_shift is true but .*\(use_dynamic_shifting is false\)"):
        StableDiffusion3(str(tiny_sd3), resolution_shift=True).load()


def test_textual_inversion_is_refused_by_name(tiny_sd3):
    model = TextualInversion(StableDiffusion3(str(tiny_sd3)), placeholder_token="<sks>", initializer_token="toy")
    with pytest.raises(UserError, match=r"family: StableDiffusion3 takes no new tokens.* StableDiffusion\b"):
        model.configure_model()


@pytest.fixture(scope="module")
def lora_fit(tiny_sd3, subject_dir, tmp_path_factory):
    """A LoRA on the transformer and both CLIPs, 6 steps, checkpointed at 3 and 6."""
    model = lora_tuner(StableDiffusion3(str(tiny_sd3)), lr=3e-2, train_text_encoder=True)
    return fit(model, subject_data(subject_dir), tmp_path_factory.mktemp("sd3-lora"), steps=6, every=3)


def test_lora_learns_and_its_export_loads_in_the_stock_pipeline_with_the_same_images(lora_fit, tiny_sd3, tmp_path):
    assert lora_fit.loss_after < 0.97 * lora_fit.loss_before, (lora_fit.loss_before, lora_fit.loss_after)
    path = lora_fit.model.export(tmp_path)
    with safe_open(path, "pt") as file:
        keys = list(file.keys())
    assert {key.split(".")[0] for key in keys} == {"transformer", "text_encoder", "text_encoder_2"}  # never T5
    pipeline = stock_pipeline(tiny_sd3, StableDiffusion3)
    pipeline.load_lora_weights(tmp_path, weight_name=LORA_WEIGHTS)
    expected = trained_images(lora_fit.model, guidance_scale=GUIDANCE)
    assert np.abs(stock_images(pipeline, guidance_scale=GUIDANCE) - expected).max() <= 1
    untrained = stock_images(stock_pipeline(tiny_sd3, StableDiffusion3), guidance_scale=GUIDANCE)
    assert np.abs(untrained - expected).mean() > 1  # the adapter changes the images: the equality means something


def test_lora_checkpoints_what_trains_and_resumes_exactly(lora_fit, tiny_sd3, subject_dir, tmp_path):
    state = torch.load(lora_fit.checkpoint(6), weights_only=False)["state_dict"]
    assert set(state) == set(lora_fit.model.trainable_state_dict())
    assert {key.split(".")[1] for key in state} == {"transformer", "text_encoder", "text_encoder_2"}
    fresh = lora_tuner(StableDiffusion3(str(tiny_sd3)), lr=3e-2, train_text_encoder=True)
    resumed = resumed_losses(fresh, subject_data(subject_dir), tmp_path, 6, lora_fit.checkpoint(3))
    assert sorted(resumed) == [4, 5, 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(lora_fit.losses[step], rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_full_fine_tuning_exports_a_pipeline_that_reproduces_the_images(tiny_sd3, subject_dir, tmp_path):
    check_full_transformer_fine_tuning(StableDiffusion3, tiny_sd3, subject_dir, tmp_path, GUIDANCE)


def test_training_without_t5_samples_like_the_pipeline_without_it(tiny_sd3):
    model = lora_tuner(StableDiffusion3(str(tiny_sd3), use_t5=False))
    model.configure_model()
    assert set(model.family.text_encoders()) == {"text_encoder", "text_encoder_2"}
    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, text_encoder_3=None, tokenizer_3=None)
    pipeline.set_progress_bar_config(disable=True)
    assert np.array_equal(
        trained_images(model, guidance_scale=GUIDANCE), stock_images(pipeline, guidance_scale=GUIDANCE)
    )  # the adapter starts as a no-op
    assert model.family.source()["use_t5"] == "false"  # class images of the model without T5 are its own


@pytest.mark.slow
def test_the_shipped_dreambooth_lora_config_fits_the_tiny_model_with_generated_class_images(tmp_path):
    run = fit_shipped_config("configs/sd3/dreambooth_lora.yaml", tmp_path, "builtin:tiny-sd3")
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # made by the family's base_pipeline
    assert (run / "final" / LORA_WEIGHTS).is_file() and (run / "best" / LORA_WEIGHTS).is_file()
    assert (run / "evaluation" / "selection.json").is_file()
