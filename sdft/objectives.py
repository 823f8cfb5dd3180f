"""The denoising objectives, as pure functions of tensors.

DDPM (Ho et al. 2020, arXiv 2006.11239) noises ``x0`` at step ``t`` as
``x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps``. The denoiser is trained to predict ``eps``
(epsilon prediction), ``x0`` (sample prediction), or the velocity ``v = sqrt(alpha_bar_t) * eps - sqrt(1 -
alpha_bar_t) * x0`` of Salimans & Ho 2022 (arXiv 2202.00512, SD 2.x 768 px models).

Three options change the training examples: min-SNR weighting of each example's loss (Hang et al. 2023), offset noise
(Guttenberg 2023) and input perturbation (Ning et al. 2023).
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


def signal_to_noise(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` of the DDPM forward process at each timestep (B,)."""
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556): the weight ``min(SNR, gamma)`` of
    the loss on ``x0``, expressed for the loss on the prediction type's target: ``min(SNR, gamma) / SNR`` for
    epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v, ``min(SNR, gamma)`` for the sample itself.

    The epsilon weight is computed as ``min(gamma / SNR, 1)``, which is 1 rather than 0/0 where the SNR is 0 (a
    zero-terminal-SNR schedule's last step).

    Args:
        alpha_bar: cumulative signal rate at each example's timestep (B,).
        gamma: the SNR above which the weight stops growing (5 in the paper).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
    Returns:
        (B,) weights.
    """
    snr = signal_to_noise(alpha_bar)
    if prediction_type == "epsilon":
        return (gamma / snr).clamp(max=1)
    if prediction_type == "v_prediction":
        return snr.clamp(max=gamma) / (snr + 1)
    if prediction_type == "sample":
        return snr.clamp(max=gamma)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def offset_noise(noise: torch.Tensor, offset: float, draws: torch.Tensor) -> torch.Tensor:
    """Offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): ``noise + offset * draws``, a random shift of
    each example's channels, so the model learns to change an image's overall brightness and colour.

    Args:
        noise: standard normal noise (B, C, H, W).
        offset: the shift's standard deviation, e.g. 0.05.
        draws: standard normal draws (B, C, 1, 1), one per example and channel.
    """
    return noise + offset * draws.to(noise)


def perturbed_noise(noise: torch.Tensor, gamma: float, draws: torch.Tensor) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, arXiv 2301.11706): ``noise + gamma * draws``, the noise that
    makes the denoiser's input while its target keeps ``noise``, to reduce exposure bias.

    Args:
        noise: the noise of the target (B, C, H, W).
        gamma: the perturbation's standard deviation, e.g. 0.1.
        draws: standard normal draws of the same shape.
    """
    return noise + gamma * draws.to(noise)


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


def latent_loss_mask(pixel_weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel loss weights (B, 1, H, W) -> the latents' (B, 1, h, w): each latent pixel weighs the mean of the pixels
    it stands for (area averaging), whatever the factor from pixels to latents (8 for the SD, SD3 and FLUX.1
    autoencoders, 16 for FLUX.2's 2x2-patchified latents).

    Args:
        pixel_weights: each pixel's loss weight, (B, 1, H, W).
        size: the latents' (h, w).
    """
    return F.interpolate(pixel_weights.float(), size=tuple(size), mode="area")


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each example under latent-pixel weights, in float32: ``sum(w * (prediction -
    target)^2) / sum(w)`` over channels and pixels, (B, C, h, w) x2 and weights (B, 1, h, w) -> (B,).

    The sum is divided by the weights' sum (OneTrainer's ``normalize_masked_area_loss``), not by the number of
    pixels (kohya's and SimpleTuner's mean of weighted errors): weights of ones give :func:`per_example_mse`, so an
    image without a mask (a class image) trains as it would without masks, and an example's loss, so its learning
    rate, does not shrink with the subject's share of the frame. Weights that are all 0 give a loss of 0.

    Args:
        prediction: the denoiser's output (B, C, h, w).
        target: what it should have predicted, the same shape.
        weights: each latent pixel's weight (B, 1, h, w), from :func:`latent_loss_mask`.
    """
    errors = F.mse_loss(prediction.float(), target.float(), reduction="none")
    weights = weights.float().expand_as(errors)
    total = weights.flatten(1).sum(dim=1)
    return (errors * weights).flatten(1).sum(dim=1) / total.clamp(min=torch.finfo(total.dtype).tiny)


def prior_preservation_loss(instance: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """DreamBooth's loss (Ruiz et al. 2022, arXiv 2208.12242, eq. 2): ``mean(instance) + weight * mean(prior)``.

    Args:
        instance: per-example losses of the subject's photos.
        prior: per-example losses of the class images generated by the base model.
        weight: the prior-preservation weight lambda.
    """
    return instance.mean() + weight * prior.mean()
