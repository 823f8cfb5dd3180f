"""The rectified-flow objective of SD3 and Flux.1, as pure functions of tensors.

Rectified flow (Liu et al. 2022, arXiv 2209.03003; flow matching, Lipman et al. 2022, arXiv 2210.02747) joins data and
noise by a straight line, ``x_t = (1 - sigma) * x0 + sigma * noise``, and trains the network to predict the constant
velocity ``noise - x0`` along it. SD3 (Esser et al. 2024, arXiv 2403.03206) draws the noise level ``sigma`` from a
non-uniform density (logit-normal by default, sec. 3.1) and shifts it towards noise for larger images (sec. 5.3.2);
Flux.1 makes that shift a function of the image's token count.

Noise levels are read from the sampler's table, as diffusers' training scripts do: a density value ``u`` in [0, 1]
picks the index ``floor(u * N)`` of the ``N`` scheduler sigmas (descending from 1), and the timestep the network sees
is ``sigma * N``. Every density is written as a quantile function of a uniform number, so a fixed quantile (a
validation level) gives a fixed sigma and a uniform draw gives a draw from the density.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sdft.objectives import broadcast_to

#: timestep densities: SD3's logit-normal and mode (with heavy tails), CosMap, and uniform (Esser et al. sec. 3.1)
DENSITIES = ("logit_normal", "mode", "cosmap", "uniform")
#: per-example loss weights as functions of sigma (diffusers' ``compute_loss_weighting_for_sd3``)
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


def add_flow_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The rectified-flow forward process ``(1 - sigma) * x0 + sigma * noise`` (Esser et al. 2024, eq. 3 with
    ``a_t = 1 - t``, ``b_t = t``).

    Args:
        x0: clean latents (B, C, H, W).
        noise: standard normal noise, same shape.
        sigma: each example's noise level (B,) in [0, 1].
    """
    sigma = broadcast_to(sigma.to(x0.dtype), x0)
    return (1 - sigma) * x0 + sigma * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity ``d x_t / d sigma = noise - x0`` that a rectified-flow network predicts (Liu et al. 2022, eq. 1).

    Args:
        x0: clean latents (B, C, H, W).
        noise: the noise added to them, same shape.
    """
    return noise - x0


def precondition_output(model_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A velocity prediction turned into a clean-latent estimate, ``noisy - sigma * model_output``: the EDM-style
    output preconditioning (Karras et al. 2022, arXiv 2206.00364, sec. 5) of diffusers' SD3 scripts, trained
    against ``x0``.

    Args:
        model_output: the network's velocity prediction (B, C, H, W).
        noisy: its input ``x_t``, same shape.
        sigma: each example's noise level (B,).
    """
    return model_output * -broadcast_to(sigma.to(model_output.dtype), model_output) + noisy


def density_quantile(
    q: torch.Tensor, density: str, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29
) -> torch.Tensor:
    """The value below which a fraction ``q`` of a timestep density lies (Esser et al. 2024, sec. 3.1): uniform
    ``q`` gives draws from the density, and diffusers' ``compute_density_for_timestep_sampling`` draws the same
    distribution.

    - ``logit_normal``: ``sigmoid(m + s * Phi^-1(q))``, eq. 19.
    - ``mode``: ``f(1 - q)`` with ``f(u) = 1 - u - scale * (cos^2(pi u / 2) - 1 + u)``, eq. 20 (decreasing in ``u``
      for ``scale`` below ``2 / (pi - 2)``).
    - ``cosmap``: ``1 - 1 / (tan(pi q / 2) + 1)``, eq. 21.
    - ``uniform``: ``q``.

    Args:
        q: quantiles (B,) in [0, 1].
        density: one of :data:`DENSITIES`.
        logit_mean: m, the mean of the logit-normal's underlying normal.
        logit_std: s, its standard deviation.
        mode_scale: the mode density's scale (1.29 in diffusers' scripts).
    """
    if density == "logit_normal":
        normal = math.sqrt(2) * torch.special.erfinv((2 * q - 1).clamp(-1, 1))
        return torch.sigmoid(logit_mean + logit_std * normal)
    if density == "mode":
        u = 1 - q
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    if density == "cosmap":
        return 1 - 1 / (torch.tan(math.pi * q / 2) + 1)
    if density == "uniform":
        return q
    raise ValueError(f"unknown timestep density {density!r}; expected one of {DENSITIES}")


def schedule_index(u: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """A density value in [0, 1] -> an index ``floor(u * N)`` into the scheduler's N sigmas, clamped to [0, N).

    Args:
        u: density values (B,).
        num_train_timesteps: N, the length of the scheduler's table (1000 for SD3 and Flux).
    """
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def shift_sigmas(sigma: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """The timestep shift ``shift * sigma / (1 + (shift - 1) * sigma)`` (Esser et al. 2024, eq. 23, with
    ``shift = sqrt(m / n)``), which moves noise levels towards noise for ``shift > 1``. With ``shift = exp(mu)``
    this is diffusers' exponential ``time_shift(mu, 1, sigma)`` of Flux.1.

    Args:
        sigma: noise levels in [0, 1], any shape.
        shift: the factor (3.0 for SD3), or a tensor broadcastable to ``sigma``.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigma_table(num_train_timesteps: int, shift: float = 1.0) -> torch.Tensor:
    """The training sigmas of diffusers' ``FlowMatchEulerDiscreteScheduler``: ``(N - i) / N`` for ``i`` in [0, N),
    descending from 1, shifted by ``shift`` (computed in float32 as the scheduler computes them).

    Args:
        num_train_timesteps: N.
        shift: the static shift of the scheduler config (1.0 when the shift is dynamic, as the scheduler does).
    """
    timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    return shift_sigmas(torch.from_numpy(timesteps) / num_train_timesteps, shift)


def resolution_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux.1's resolution-dependent shift exponent: ``mu`` linear in the image's token count, from ``base_shift``
    at ``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len`` (diffusers' ``calculate_shift``; the shift
    factor is ``exp(mu)``, after Esser et al. 2024, sec. 5.3.2).

    Args:
        image_seq_len: the number of image tokens (latent patches) the transformer sees.
        base_seq_len: the token count where ``mu = base_shift`` (256: a 256 px Flux.1 image).
        max_seq_len: the token count where ``mu = max_shift`` (4096: a 1024 px Flux.1 image).
        base_shift: mu at ``base_seq_len``.
        max_shift: mu at ``max_seq_len``.
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def loss_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """Each example's loss weight as a function of its noise level (diffusers' ``compute_loss_weighting_for_sd3``):

    - ``sigma_sqrt``: ``sigma^-2``;
    - ``cosmap``: ``2 / (pi * (1 - 2 sigma + 2 sigma^2))``, the CosMap density (Esser et al. 2024, eq. 21), which
      with uniform levels weights the loss as CosMap sampling would;
    - ``none``: 1.

    Args:
        sigma: noise levels (B,).
        weighting: one of :data:`LOSS_WEIGHTINGS`.
    Returns:
        (B,) float32.
    """
    sigma = sigma.float()
    if weighting == "sigma_sqrt":
        return sigma**-2.0
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    if weighting == "none":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {LOSS_WEIGHTINGS}")
