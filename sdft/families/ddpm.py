"""The DDPM training objective of the UNet families (SD 1.x/2.x, SDXL), read from a model's scheduler config."""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import DDPMScheduler, SchedulerMixin
from torch import nn

from sdft.errors import UserError
from sdft.families.base import NoisedLatents
from sdft.objectives import PREDICTION_TYPES, add_noise, diffusion_target, levels_to_timesteps, min_snr_weight

#: the UNet's attention projections, LoRA's default targets there (as in diffusers' scripts)
UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def check_prediction_type(prediction_type: str | None) -> None:
    """Raise a :class:`UserError` naming the family's ``prediction_type`` key unless it is None or known."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"model.init_args.family.init_args.prediction_type must be one of {', '.join(PREDICTION_TYPES)} or null "
            f"(read the model's scheduler config), got {prediction_type!r}"
        )


def check_min_snr_gamma(min_snr_gamma: float | None) -> None:
    """Raise a :class:`UserError` naming the family's ``min_snr_gamma`` key unless it is None or positive."""
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise UserError(
            "model.init_args.family.init_args.min_snr_gamma must be positive (5 in the paper) or null (every "
            f"example weighs 1), got {min_snr_gamma}"
        )


def with_prediction_type(scheduler: SchedulerMixin, prediction_type: str | None) -> SchedulerMixin:
    """``scheduler`` itself when ``prediction_type`` is None, else a copy of its class and config that predicts
    ``prediction_type`` (the user's override of a base pipeline's own)."""
    if prediction_type is None:
        return scheduler
    return type(scheduler).from_config({**scheduler.config, "prediction_type": prediction_type})


class DDPMSchedule(nn.Module):
    """The DDPM forward process (Ho et al. 2020, arXiv 2006.11239) of a model's noise schedule, and its sampler.

    A family holds one as a child module, so ``alphas_cumprod`` follows the family's device; it is not saved in
    checkpoints. The prediction type (epsilon, or v for SD 2.x 768 px models) comes from the scheduler config
    unless the user overrides it, and the sampler is the model's own scheduler class with that prediction type.
    Every example's loss weighs 1 unless ``min_snr_gamma`` is set.
    """

    def __init__(
        self,
        scheduler_config: dict[str, Any],
        prediction_type: str | None = None,
        min_snr_gamma: float | None = None,
    ) -> None:
        """
        Args:
            scheduler_config: the model's ``scheduler/scheduler_config.json`` (any diffusers scheduler class).
            prediction_type: ``epsilon``, ``v_prediction`` or ``sample``; None reads ``scheduler_config``.
            min_snr_gamma: weight each example's loss by min-SNR-gamma (:func:`sdft.objectives.min_snr_weight`);
                None weighs every example 1.
        """
        super().__init__()
        check_min_snr_gamma(min_snr_gamma)
        self.prediction_type = prediction_type or scheduler_config.get("prediction_type", "epsilon")
        self.min_snr_gamma = min_snr_gamma
        self.sampler_config = {**scheduler_config, "prediction_type": self.prediction_type}
        alphas_cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        revision: str | None = None,
        prediction_type: str | None = None,
        min_snr_gamma: float | None = None,
    ) -> DDPMSchedule:
        """The schedule of a diffusers model, read from its ``scheduler`` subfolder.

        Args:
            source: a local diffusers folder or hub id.
            revision: hub revision (branch, tag or commit).
            prediction_type: overrides the scheduler config's; None keeps it.
            min_snr_gamma: the min-SNR-gamma weighting's gamma; None weighs every example 1.
        """
        config = DDPMScheduler.load_config(source, subfolder="scheduler", revision=revision)
        return cls(dict(config), prediction_type, min_snr_gamma)

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> NoisedLatents:
        """Noise latents at the given levels; the target follows the prediction type, and each example's loss
        weight is its min-SNR-gamma weight when ``min_snr_gamma`` is set.

        Args:
            latents: clean latents (B, C, H, W).
            noise: standard normal noise of the same shape.
            levels: noise levels (B,) in [0, 1), mapped to integer timesteps.
        """
        timesteps = levels_to_timesteps(levels.to(latents.device), len(self.alphas_cumprod))
        noise = noise.to(latents)
        alpha_bar = self.alphas_cumprod[timesteps]
        target = diffusion_target(latents, noise, alpha_bar, self.prediction_type)
        gamma = self.min_snr_gamma
        weight = None if gamma is None else min_snr_weight(alpha_bar, gamma, self.prediction_type)
        return NoisedLatents(add_noise(latents, noise, alpha_bar), timesteps, target, weight)

    def sampler(self) -> SchedulerMixin:
        """A fresh instance of the model's own scheduler class, with the training prediction type."""
        return getattr(diffusers, self.sampler_config["_class_name"]).from_config(self.sampler_config)
