"""The rectified-flow math against hand computations and against diffusers' scheduler and training utilities."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from sdft.flow_matching import (
    add_flow_noise,
    density_quantile,
    flow_sigma_table,
    flow_velocity,
    loss_weight,
    precondition_output,
    resolution_shift_mu,
    schedule_index,
    shift_sigmas,
)

#: Phi(1), the standard normal's CDF at 1: the logit-normal quantile there is sigmoid(m + s)
PHI_1 = 0.8413447460685429


def test_noisy_input_velocity_and_preconditioning_by_hand():
    x0, noise, sigma = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0), torch.tensor([0.25])
    noisy = add_flow_noise(x0, noise, sigma)
    assert noisy.item() == pytest.approx(0.75 * 2.0 + 0.25 * -1.0)  # 1.25
    velocity = flow_velocity(x0, noise)
    assert velocity.item() == pytest.approx(-3.0)
    # An exact velocity, preconditioned, is the clean latent: 1.25 - 0.25 * (-3) = 2.
    assert precondition_output(velocity, noisy, sigma).item() == pytest.approx(2.0)


def test_noise_levels_are_per_example():
    x0, noise = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    noisy = add_flow_noise(x0, noise, torch.tensor([0.0, 1.0]))
    assert noisy[0].unique().tolist() == [1.0] and noisy[1].unique().tolist() == [0.0]


@pytest.mark.parametrize(
    ("density", "options", "q", "expected"),
    [
        ("uniform", {}, 0.3, 0.3),
        ("logit_normal", {}, 0.5, 0.5),
        ("logit_normal", {}, PHI_1, 1 / (1 + math.exp(-1.0))),  # sigmoid(0 + 1 * 1)
        ("logit_normal", {"logit_mean": 0.5, "logit_std": 2.0}, PHI_1, 1 / (1 + math.exp(-2.5))),
        ("mode", {}, 0.5, 0.5),  # f(0.5) = 0.5 - 1.29 * (cos^2(pi / 4) - 0.5) = 0.5
        ("mode", {}, 0.25, 0.25 + 1.29 * (0.25 - math.cos(3 * math.pi / 8) ** 2)),  # f(0.75) = 0.38358...
        ("mode", {"mode_scale": 0.0}, 0.25, 0.25),  # scale 0 is uniform
        ("cosmap", {}, 0.5, 0.5),  # 1 - 1 / (tan(pi / 4) + 1)
        ("cosmap", {}, 1 / 3, 1 - 1 / (math.tan(math.pi / 6) + 1)),  # 0.36602...
    ],
)
def test_density_quantiles_by_hand(density, options, q, expected):
    assert density_quantile(torch.tensor([q], dtype=torch.float64), density, **options).item() == pytest.approx(
        expected, abs=1e-9
    )


@pytest.mark.parametrize("density", ["logit_normal", "mode", "uniform"])
def test_uniform_quantiles_draw_the_distribution_diffusers_draws(density):
    """Our quantile function of evenly spaced quantiles against diffusers' random draws: the same distribution."""
    options = {"logit_mean": 0.3, "logit_std": 1.2, "mode_scale": 1.29}
    ours = density_quantile((torch.arange(20_000) + 0.5) / 20_000, density, **options)
    drawn = compute_density_for_timestep_sampling(
        density, 20_000, generator=torch.Generator().manual_seed(0), **options
    ).sort()[0]
    assert (ours - drawn).abs().max() < 0.02


def test_quantiles_rise_with_the_level():
    q = torch.linspace(0, 1, 101)
    for density in ("logit_normal", "mode", "cosmap", "uniform"):
        u = density_quantile(q, density)
        assert (u.diff() >= 0).all(), density
        assert u.min() >= 0 and u.max() <= 1


def test_cosmap_density_and_cosmap_weighting_agree():
    """Sampling CosMap and weighting uniform levels by its density are the same expectation: P(t <= 0.3) =
    (2 / pi) * atan(0.3 / 0.7) both ways (Esser et al. 2024, eq. 21)."""
    expected = 2 / math.pi * math.atan(3 / 7)  # 0.25776
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    sampled = (density_quantile(grid, "cosmap") <= 0.3).double().mean().item()
    weighted = (loss_weight(grid, "cosmap").double() * (grid <= 0.3)).mean().item()
    assert sampled == pytest.approx(expected, abs=1e-4) and weighted == pytest.approx(expected, abs=1e-4)


def test_schedule_index_by_hand():
    u = torch.tensor([0.0, 0.0005, 0.001, 0.5, 0.9999, 1.0])
    assert schedule_index(u, 1000).tolist() == [0, 0, 1, 500, 999, 999]


def test_sigma_table_by_hand_and_against_the_scheduler():
    assert flow_sigma_table(4).tolist() == [1.0, 0.75, 0.5, 0.25]
    assert flow_sigma_table(4, shift=3.0).tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5])  # 3s / (1 + 2s)
    for shift in (1.0, 3.0):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        assert torch.equal(flow_sigma_table(1000, shift), scheduler.sigmas)
        assert torch.equal(flow_sigma_table(1000, shift) * 1000, scheduler.timesteps)


def test_resolution_shift_by_hand_and_against_diffusers():
    assert resolution_shift_mu(256) == pytest.approx(0.5) and resolution_shift_mu(4096) == pytest.approx(1.15)
    assert resolution_shift_mu(1024) == pytest.approx(0.5 + 768 * 0.65 / 3840)  # 0.63: a 512 px Flux image
    assert resolution_shift_mu(16) == pytest.approx(calculate_shift(16))
    sigma = torch.tensor([0.25, 0.5, 0.9])
    assert shift_sigmas(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = resolution_shift_mu(1024)
    torch.testing.assert_close(shift_sigmas(sigma, math.exp(mu)), scheduler.time_shift(mu, 1.0, sigma))


def test_loss_weights_by_hand_and_against_diffusers():
    sigma = torch.tensor([0.25, 0.5])
    assert loss_weight(sigma, "sigma_sqrt").tolist() == [16.0, 4.0]
    assert loss_weight(sigma, "cosmap").tolist() == pytest.approx([2 / (0.625 * math.pi), 4 / math.pi])
    assert loss_weight(sigma, "none").tolist() == [1.0, 1.0]
    grid = torch.linspace(0.01, 1, 50)
    for weighting in ("sigma_sqrt", "cosmap", "none"):
        torch.testing.assert_close(loss_weight(grid, weighting), compute_loss_weighting_for_sd3(weighting, grid))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown timestep density 'beta'"):
        density_quantile(torch.tensor([0.5]), "beta")
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'"):
        loss_weight(torch.tensor([0.5]), "snr")
