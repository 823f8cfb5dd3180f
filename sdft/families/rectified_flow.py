"""What the rectified-flow MMDiT families (SD3 / SD3.5, Flux.1) share: the objective read from a model's scheduler
config, their VAE latents, their tokenization and their option checks.

One schedule object serves both families, so their objectives cannot drift apart; the math is in
:mod:`sdft.flow_matching`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from torch import nn

from sdft.errors import UserError
from sdft.families.base import NoisedLatents
from sdft.flow_matching import (
    DENSITIES,
    LOSS_WEIGHTINGS,
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

KEY = "model.init_args.family.init_args"


def check_flow_options(weighting_scheme: str, loss_weighting: str, logit_std: float) -> None:
    """Raise a :class:`UserError` naming the family's key unless the objective's options are valid."""
    if weighting_scheme not in DENSITIES:
        raise UserError(f"{KEY}.weighting_scheme must be one of {', '.join(DENSITIES)}, got {weighting_scheme!r}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise UserError(f"{KEY}.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
    if logit_std <= 0:
        raise UserError(f"{KEY}.logit_std must be positive, got {logit_std}")


def flow_objective(
    weighting_scheme: str,
    logit_mean: float,
    logit_std: float,
    mode_scale: float,
    loss_weighting: str,
    precondition_outputs: bool,
    resolution_shift: bool,
) -> dict[str, Any]:
    """A family's objective options, checked (see :func:`check_flow_options`), as the keyword arguments of
    :meth:`RectifiedFlowSchedule.from_pretrained`; the arguments are :class:`RectifiedFlowSchedule`'s."""
    check_flow_options(weighting_scheme, loss_weighting, logit_std)
    return {
        "weighting_scheme": weighting_scheme,
        "logit_mean": logit_mean,
        "logit_std": logit_std,
        "mode_scale": mode_scale,
        "loss_weighting": loss_weighting,
        "precondition_outputs": precondition_outputs,
        "resolution_shift": resolution_shift,
    }


def check_max_sequence_length(max_sequence_length: int) -> None:
    """Raise a :class:`UserError` naming the family's key unless the T5 prompt length is one the pipelines take."""
    if not 0 < max_sequence_length <= 512:
        raise UserError(f"{KEY}.max_sequence_length must be in [1, 512] (T5 tokens), got {max_sequence_length}")


def latent_scaling(vae: AutoencoderKL) -> tuple[float, float]:
    """The (shift, factor) of the transformer's latent space ``(z - shift_factor) * scaling_factor``, read from the VAE
    config: what the SD3 and Flux pipelines undo before decoding."""
    return vae.config.shift_factor or 0.0, vae.config.scaling_factor


class RectifiedFlowSchedule(nn.Module):
    """The rectified-flow forward process of a model's ``FlowMatchEulerDiscreteScheduler`` config, and its sampler.

    A family holds one as a child module, so the sigma table follows the family's device; it is not saved in
    checkpoints. Training draws a quantile ``q`` uniformly; the density's quantile function of ``1 - q`` indexes the
    scheduler's descending sigmas as diffusers' scripts do (:mod:`sdft.flow_matching`), so a fixed level ``q`` (a
    validation level) is the noise level below which a fraction ``q`` of training draws fall: 0 is the least noise.
    With ``resolution_shift`` and a scheduler with ``use_dynamic_shifting`` (Flux.1), the levels are then shifted by
    ``exp(mu)``, ``mu`` from the image's token count, as the sampler shifts its own.
    """

    def __init__(
        self,
        scheduler_config: dict[str, Any],
        patch_size: int,
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
        precondition_outputs: bool = False,
        resolution_shift: bool = False,
    ) -> None:
        """
        Args:
            scheduler_config: the model's ``scheduler/scheduler_config.json``.
            patch_size: latent pixels per image token along each side (the image's token count sets Flux's shift).
            weighting_scheme: the timestep density, one of :data:`sdft.flow_matching.DENSITIES`.
            logit_mean: mean of the logit-normal density's normal.
            logit_std: standard deviation of the logit-normal density's normal.
            mode_scale: scale of the ``mode`` density.
            loss_weighting: per-example loss weight, one of :data:`sdft.flow_matching.LOSS_WEIGHTINGS`.
            precondition_outputs: train ``noisy - sigma * output`` against the clean latents instead of the output
                against the velocity.
            resolution_shift: shift the training levels by the scheduler's resolution-dependent ``mu``.
        """
        super().__init__()
        check_flow_options(weighting_scheme, loss_weighting, logit_std)
        self.scheduler_config = dict(scheduler_config)
        self.dynamic = bool(self.scheduler_config.get("use_dynamic_shifting", False))
        if resolution_shift and not self.dynamic:
            raise UserError(
                f"{KEY}.resolution_shift is true but the model's scheduler has no resolution-dependent shift "
                "(use_dynamic_shifting is false); set resolution_shift: false"
            )
        self.num_train_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))
        self.patch_size = patch_size
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.loss_weighting = loss_weighting
        self.precondition_outputs = precondition_outputs
        self.resolution_shift = resolution_shift
        static_shift = 1.0 if self.dynamic else float(self.scheduler_config.get("shift", 1.0))
        self.register_buffer("sigmas", flow_sigma_table(self.num_train_timesteps, static_shift), persistent=False)

    @classmethod
    def from_pretrained(cls, source: str, revision: str | None, patch_size: int, **options) -> RectifiedFlowSchedule:
        """The schedule of the diffusers model folder or hub id ``source`` (its ``scheduler`` subfolder)."""
        config = FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", revision=revision)
        return cls(dict(config), patch_size, **options)

    def image_seq_len(self, latents: torch.Tensor) -> int:
        """The number of image tokens the transformer sees for latents (B, C, H, W)."""
        return (latents.shape[-2] // self.patch_size) * (latents.shape[-1] // self.patch_size)

    def mu(self, image_seq_len: int) -> float:
        """The scheduler's resolution-dependent shift exponent for ``image_seq_len`` image tokens."""
        config = self.scheduler_config
        return resolution_shift_mu(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )

    def sigmas_at(self, levels: torch.Tensor, image_seq_len: int) -> torch.Tensor:
        """Noise levels (B,) in [0, 1) -> sigmas (B,), increasing with the level.

        Args:
            levels: quantiles of the training density (uniform draws when training).
            image_seq_len: the image's token count (used with ``resolution_shift``).
        """
        q = 1 - levels.to(self.sigmas.device, torch.float32)
        u = density_quantile(q, self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale)
        sigma = self.sigmas[schedule_index(u, self.num_train_timesteps)]
        if self.resolution_shift:
            sigma = shift_sigmas(sigma, math.exp(self.mu(image_seq_len)))
        return sigma

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> NoisedLatents:
        """Noise latents at the sigmas of the given levels; timesteps are ``sigma * N``.

        Args:
            latents: clean latents (B, C, H, W).
            noise: standard normal noise of the same shape.
            levels: noise levels (B,) in [0, 1), quantiles of the training density.
        """
        sigma = self.sigmas_at(levels, self.image_seq_len(latents)).to(latents.device)
        noise = noise.to(latents)
        target = latents if self.precondition_outputs else flow_velocity(latents, noise)
        weight = loss_weight(sigma, self.loss_weighting)
        return NoisedLatents(add_flow_noise(latents, noise, sigma), sigma * self.num_train_timesteps, target, weight)

    def prediction(self, model_output: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
        """The network's output made comparable with ``noised.target`` (preconditioned when so configured)."""
        if not self.precondition_outputs:
            return model_output
        return precondition_output(model_output, noised.noisy, noised.timesteps / self.num_train_timesteps)

    def sampler(self) -> FlowMatchEulerDiscreteScheduler:
        """A fresh instance of the model's own scheduler."""
        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
