"""The denoising math against hand computations and against diffusers' schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from sdft.objectives import (
    add_noise,
    diffusion_target,
    levels_to_timesteps,
    per_example_mse,
    step_seed,
    velocity,
)


def test_add_noise_and_velocity_by_hand():
    x0, noise, alpha_bar = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0), torch.tensor([0.64])
    assert add_noise(x0, noise, alpha_bar).item() == pytest.approx(0.8 * 2.0 + 0.6 * -1.0)
    assert velocity(x0, noise, alpha_bar).item() == pytest.approx(0.8 * -1.0 - 0.6 * 2.0)


def test_forward_process_matches_diffusers_ddpm():
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 499, 999])
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    torch.testing.assert_close(add_noise(x0, noise, alpha_bar), scheduler.add_noise(x0, noise, timesteps))
    torch.testing.assert_close(velocity(x0, noise, alpha_bar), scheduler.get_velocity(x0, noise, timesteps))


def test_diffusion_target_by_prediction_type():
    x0, noise, alpha_bar = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.25, 1.0])
    assert torch.equal(diffusion_target(x0, noise, alpha_bar, "epsilon"), noise)
    assert torch.equal(diffusion_target(x0, noise, alpha_bar, "sample"), x0)
    v = diffusion_target(x0, noise, alpha_bar, "v_prediction")
    assert v[0].flatten().tolist() == pytest.approx([-math.sqrt(0.75)] * 4)
    assert v[1].abs().max() == 0
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        diffusion_target(x0, noise, alpha_bar, "flow")


def test_levels_map_onto_every_timestep():
    levels = torch.tensor([0.0, 0.0005, 0.001, 0.5, 0.9999])
    assert levels_to_timesteps(levels, 1000).tolist() == [0, 0, 1, 500, 999]


def test_per_example_mse_by_hand():
    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert per_example_mse(prediction, target).tolist() == pytest.approx([2.0, 5.0])


def test_step_seed_is_a_function_of_its_keys():
    assert step_seed(0, 10, 0, 0) == step_seed(0, 10, 0, 0)
    seeds = {step_seed(0, step, micro, rank) for step in range(50) for micro in range(2) for rank in range(2)}
    assert len(seeds) == 200
    assert all(0 <= seed < 2**63 for seed in seeds)
