"""SD 2.x v-prediction on its tiny offline model: the family reads the prediction type from the scheduler, trains on
the velocity, and its LoRA export reproduces the trained images in the stock pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training import (
    PROMPT,
    Fit,
    fit,
    loaded,
    lora_tuner,
    stock_images,
    stock_pipeline,
    subject_data,
    trained_images,
    training_noise,
)

from sdft.families import StableDiffusion


@pytest.fixture(scope="module")
def family(tiny_sd2_v) -> StableDiffusion:
    return loaded(StableDiffusion(str(tiny_sd2_v)))


def test_the_family_reads_v_prediction_and_an_openclip_style_text_encoder(family):
    assert family.prediction_type == "v_prediction"
    assert family.pipeline().scheduler.config.prediction_type == "v_prediction"
    assert family.text_encoder.config.hidden_act == "gelu"
    assert family.tokenizer("sks", padding="max_length", max_length=6).input_ids == [49406, 48136, 49407, 0, 0, 0]
    assert family.tokenizer.convert_ids_to_tokens(0) == "!"


def scaled_linear_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """SD's noise schedule by hand: betas linear in sqrt from 0.00085 to 0.012, alpha_bar their running product."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_the_training_target_is_the_velocity(family):
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = training_noise(family, x0, torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)  # the family's draws, in its order: levels, then noise
    timesteps = (torch.rand(3, generator=draws) * 1000).long()
    noise = torch.randn(x0.shape, generator=draws)
    alpha_bar = scaled_linear_alphas_cumprod()[timesteps].view(-1, 1, 1, 1)
    assert torch.equal(noised.timesteps, timesteps)
    torch.testing.assert_close(noised.noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    torch.testing.assert_close(noised.target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0)
    assert (noised.target - noise).abs().max() > 0.1  # not the epsilon target


@pytest.fixture(scope="module")
def lora_fit(tiny_sd2_v, subject_dir, tmp_path_factory) -> Fit:
    """A LoRA on the UNet and the text encoder, trained for a few steps."""
    model = lora_tuner(tiny_sd2_v, lr=1e-2, train_text_encoder=True)
    return fit(model, subject_data(subject_dir), tmp_path_factory.mktemp("sd2-lora"), steps=6)


def test_lora_fit_lowers_the_validation_loss(lora_fit):
    assert lora_fit.loss_after < 0.98 * lora_fit.loss_before, (lora_fit.loss_before, lora_fit.loss_after)


def test_lora_export_reproduces_the_trained_images_in_the_stock_pipeline(lora_fit, tiny_sd2_v, tmp_path):
    lora_fit.model.export(tmp_path)
    pipeline = stock_pipeline(tiny_sd2_v)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    untrained = stock_images(pipeline, PROMPT)
    pipeline.load_lora_weights(tmp_path)
    expected = trained_images(lora_fit.model, PROMPT)
    assert np.abs(stock_images(pipeline, PROMPT) - expected).max() <= 1
    assert np.abs(untrained - expected).mean() > 1.0  # the adapters change the images: the equality means something
