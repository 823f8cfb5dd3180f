"""The loss options: min-SNR-gamma weights, offset noise and input perturbation, by hand and in training."""

from __future__ import annotations

import math

import pytest
import torch
from training import LossRecorder, cpu_trainer, fit, loaded, lora_tuner, subject_data

from sdft.errors import UserError
from sdft.families import StableDiffusion, StableDiffusionXL
from sdft.families.ddpm import DDPMSchedule
from sdft.methods.base import INSTANCE_STREAM, VALIDATION_STREAM
from sdft.objectives import min_snr_weight, offset_noise, perturbed_noise

#: two DDPM steps with alpha_bar 0.8 then 0.8 * 0.5 = 0.4: SNR 4 and 2/3
TWO_STEPS = {"num_train_timesteps": 2, "trained_betas": [0.2, 0.5]}
#: the hand-computed min-SNR weights at SNR 4 and 2/3 for gamma 1, by prediction type
GAMMA_1_WEIGHTS = {"epsilon": [1 / 4, 1.0], "v_prediction": [1 / 5, 2 / 5], "sample": [1.0, 2 / 3]}
#: examples of the statistical checks: 64 examples x 4 latent channels of 8 x 8
EXAMPLES = 64


@pytest.mark.parametrize("prediction_type", list(GAMMA_1_WEIGHTS))
def test_min_snr_weight_by_hand(prediction_type):
    alpha_bar = torch.tensor([0.8, 0.4])
    weights = min_snr_weight(alpha_bar, 1.0, prediction_type)
    assert weights.tolist() == pytest.approx(GAMMA_1_WEIGHTS[prediction_type], rel=1e-6)


def test_min_snr_weight_above_and_at_the_ends_of_the_schedule():
    alpha_bar = torch.tensor([0.8, 0.0, 1.0])  # SNR 4, 0 and infinite
    assert min_snr_weight(alpha_bar, 5.0, "epsilon").tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert min_snr_weight(alpha_bar, 5.0, "v_prediction").tolist() == pytest.approx([4 / 5, 0.0, 0.0])
    assert min_snr_weight(alpha_bar, 5.0, "sample").tolist() == pytest.approx([4.0, 0.0, 5.0])
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        min_snr_weight(alpha_bar, 5.0, "flow")


def test_offset_and_perturbed_noise_by_hand():
    noise = torch.ones(1, 2, 2, 2)
    shifted = offset_noise(noise, 0.1, torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    assert shifted[0, 0].flatten().tolist() == pytest.approx([1.1] * 4)
    assert shifted[0, 1].flatten().tolist() == pytest.approx([0.8] * 4)
    draws = torch.arange(8.0).view(1, 2, 2, 2)
    assert perturbed_noise(noise, 0.5, draws).flatten().tolist() == pytest.approx([1 + 0.5 * d for d in range(8)])


@pytest.mark.parametrize("prediction_type", list(GAMMA_1_WEIGHTS))
def test_ddpm_schedule_weights_examples_by_min_snr(prediction_type):
    latents, noise, levels = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.25, 0.75])
    weighted = DDPMSchedule(TWO_STEPS, prediction_type, min_snr_gamma=1.0).noise_latents(latents, noise, levels)
    assert weighted.timesteps.tolist() == [0, 1]
    assert weighted.weight.tolist() == pytest.approx(GAMMA_1_WEIGHTS[prediction_type], rel=1e-6)
    assert DDPMSchedule(TWO_STEPS, prediction_type).noise_latents(latents, noise, levels).weight.tolist() == [1, 1]


@pytest.mark.parametrize("family_class", [StableDiffusion, StableDiffusionXL])
@pytest.mark.parametrize("gamma", [0.0, -1.0, math.nan])
def test_min_snr_gamma_must_be_positive(family_class, gamma):
    with pytest.raises(UserError, match=r"model\.init_args\.family\.init_args\.min_snr_gamma"):
        family_class("never/loaded", min_snr_gamma=gamma)


@pytest.mark.parametrize("key", ["noise_offset", "input_perturbation"])
def test_noise_options_must_not_be_negative(key):
    with pytest.raises(UserError, match=rf"model\.init_args\.{key} must be >= 0"):
        lora_tuner(StableDiffusion("never/loaded"), **{key: -0.1})


@pytest.mark.parametrize("fixture", ["tiny_sd1", "tiny_sdxl"])
def test_families_weigh_their_examples_by_min_snr(fixture, request):
    family_class = StableDiffusionXL if fixture == "tiny_sdxl" else StableDiffusion
    family = loaded(family_class(str(request.getfixturevalue(fixture)), min_snr_gamma=5.0))
    levels = torch.tensor([0.0, 0.5, 0.999])
    noised = family.noise_latents(torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8), levels)
    alpha_bar = family.noise_schedule.alphas_cumprod[noised.timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.minimum(snr, torch.tensor(5.0)) / snr
    torch.testing.assert_close(noised.weight, expected)
    assert noised.weight[0] < 0.01 and noised.weight[2] == 1  # the least noisy step weighs little, the noisiest 1


def configured(tiny_sd1, **options):
    model = lora_tuner(tiny_sd1, **options)
    model.configure_model()
    return model


def examples(count: int) -> dict[str, torch.Tensor]:
    pixels = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {"pixel_values": pixels, "position": torch.arange(count)}


def validation_noised(model, batch):
    return model.noised_latents(batch, VALIDATION_STREAM, torch.tensor([0.25, 0.75]).repeat(len(batch["position"])), 2)


def assert_same_noised(a, b):
    for name in ("noisy", "timesteps", "target", "weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_noise_offset_shifts_each_channel_of_the_noise(tiny_sd1):
    offset, batch = 0.5, examples(EXAMPLES)
    plain, shifted = configured(tiny_sd1), configured(tiny_sd1, noise_offset=offset)
    with torch.no_grad():
        noised, reference = shifted.noised_latents(batch, INSTANCE_STREAM), plain.noised_latents(batch, INSTANCE_STREAM)
        assert_same_noised(validation_noised(shifted, batch), validation_noised(plain, batch))
    assert shifted.family.prediction_type == "epsilon"  # the target is the noise
    assert torch.equal(noised.timesteps, reference.timesteps)
    shift = noised.target - reference.target
    means = shift.mean(dim=(2, 3))
    torch.testing.assert_close(shift, means[..., None, None].expand_as(shift), atol=1e-6, rtol=0)
    # the per-channel shifts are offset * N(0, 1): n of them have mean within 4 standard errors of 0 and standard
    # deviation within 4 standard errors (offset / sqrt(2 (n - 1))) of offset
    n = means.numel()
    assert abs(means.mean().item()) < 4 * offset / math.sqrt(n)
    assert abs(means.std().item() - offset) < 4 * offset / math.sqrt(2 * (n - 1))


def test_input_perturbation_noises_the_input_only(tiny_sd1):
    gamma, batch = 0.5, examples(EXAMPLES)
    plain, perturbed = configured(tiny_sd1), configured(tiny_sd1, input_perturbation=gamma)
    with torch.no_grad():
        noised, reference = (
            perturbed.noised_latents(batch, INSTANCE_STREAM),
            plain.noised_latents(batch, INSTANCE_STREAM),
        )
        assert_same_noised(validation_noised(perturbed, batch), validation_noised(plain, batch))
    for name in ("timesteps", "target", "weight"):
        assert torch.equal(getattr(noised, name), getattr(reference, name)), name
    assert not torch.equal(noised.noisy, reference.noisy)
    # the input moves by sqrt(1 - alpha_bar) * gamma * N(0, 1): rescaled, n draws of standard deviation gamma
    alpha_bar = plain.family.noise_schedule.alphas_cumprod[noised.timesteps]
    draws = (noised.noisy - reference.noisy) / (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
    assert abs(draws.std().item() - gamma) < 4 * gamma / math.sqrt(2 * (draws.numel() - 1))


def test_options_at_zero_train_exactly_as_without_them(tiny_sd1, subject_dir, tmp_path):
    losses = []
    for name, options in (("default", {}), ("zero", {"noise_offset": 0.0, "input_perturbation": 0.0})):
        recorder = LossRecorder()
        cpu_trainer(tmp_path / name, 2, [recorder]).fit(
            lora_tuner(tiny_sd1, **options), datamodule=subject_data(subject_dir)
        )
        losses.append(recorder.losses)
    assert losses[0] == losses[1] and sorted(losses[0]) == [1, 2]


@pytest.mark.parametrize("option", ["noise_offset", "input_perturbation", "min_snr_gamma"])
def test_short_fit_with_each_option_lowers_the_validation_loss(option, tiny_sd1, subject_dir, tmp_path):
    if option == "min_snr_gamma":
        model = lora_tuner(StableDiffusion(str(tiny_sd1), min_snr_gamma=5.0))
    else:
        model = lora_tuner(tiny_sd1, **{option: 0.1})
    trained = fit(model, subject_data(subject_dir), tmp_path, steps=6)
    assert all(math.isfinite(loss) for loss in trained.losses.values())
    assert trained.loss_after < trained.loss_before, (trained.loss_before, trained.loss_after)
