"""The denoising objectives, as pure functions of tensors.

DDPM (Ho et al. 2020, arXiv 2006.11239) noises ``x0`` at step ``t`` as
``x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps``. The denoiser is trained to predict ``eps``
(epsilon prediction), ``x0`` (sample prediction), or the velocity ``v = sqrt(alpha_bar_t) * eps - sqrt(1 -
alpha_bar_t) * x0`` of Salimans & Ho 2022 (arXiv 2202.00512, SD 2.x 768 px models).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def step_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys such as (run seed, global step, micro-batch, rank).

    Two runs that reach the same keys draw the same random numbers, however they got there (resume included).

    Args:
        keys: non-negative integers identifying the draw.
    """
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values (B,) to (B, 1, ..., 1) so they broadcast against ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """DDPM forward process: ``sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise``.

    Args:
        x0: clean latents (B, C, H, W).
        noise: standard normal noise, same shape.
        alpha_bar: cumulative signal rate at each example's timestep (B,).
    """
    alpha_bar = broadcast_to(alpha_bar.to(x0.dtype), x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0`` (Salimans & Ho 2022, eq. 7).

    Args:
        x0: clean latents (B, C, H, W).
        noise: the noise added to them, same shape.
        alpha_bar: cumulative signal rate at each example's timestep (B,).
    """
    alpha_bar = broadcast_to(alpha_bar.to(x0.dtype), x0)
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def diffusion_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What a DDPM denoiser with the given ``prediction_type`` should output; shapes as :func:`velocity`.

    Args:
        x0: clean latents (B, C, H, W).
        noise: the noise added to them.
        alpha_bar: cumulative signal rate at each example's timestep (B,).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(x0, noise, alpha_bar)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def levels_to_timesteps(levels: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Map noise levels in [0, 1) to integer DDPM timesteps in [0, T).

    Args:
        levels: uniform quantiles (B,) in [0, 1).
        num_train_timesteps: T, 1000 for every SD model.
    """
    return (levels * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def per_example_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each example, computed in float32: (B, ...) x2 -> (B,).

    Args:
        prediction: the denoiser's output.
        target: what it should have predicted.
    """
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
