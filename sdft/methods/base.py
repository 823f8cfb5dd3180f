"""The shared training step: every method trains some part of a model family with the family's objective."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from PIL import Image

from sdft.families.base import ModelFamily
from sdft.objectives import per_example_mse, step_seed

Batch = dict[str, Any]


class DiffusionFineTuner(LightningModule):
    """Base of every method: owns the family, the seeded training step, validation loss and slim checkpoints.

    A method (subclass) fills in two hooks: :meth:`configure_trainable` decides what trains, and :meth:`export`
    writes the trained result in the format its consumers load. Checkpoints hold only trainable tensors plus the
    optimizer, scheduler and loop state; the frozen base model is reloaded from its source on resume.
    """

    def __init__(
        self,
        family: ModelFamily,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
        validation_noise_levels: int = 4,
    ) -> None:
        """
        Args:
            family: the model family and base weights, e.g. ``sdft.families.StableDiffusion``.
            optimizer: optimizer class and its arguments (lr, weight decay, ...); gets the trainable parameters only.
            lr_scheduler: learning-rate scheduler, stepped every optimizer step; None keeps the rate constant.
            gradient_checkpointing: recompute denoiser activations in the backward pass to save memory.
            seed: seeds the noise, timesteps and posterior samples of every step (a function of seed and step).
            validation_noise_levels: each validation image is scored at this many evenly spaced noise levels.
        """
        super().__init__()
        self.family = family
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.validation_noise_levels = validation_noise_levels
        self.strict_loading = False  # checkpoints omit the frozen base model

    # -- hooks for methods -------------------------------------------------------------------------------------

    @abstractmethod
    def configure_trainable(self) -> None:
        """Make the trained parameters (and only those) require gradients, adding adapters if the method has any."""

    @abstractmethod
    def export(self, directory: str | Path) -> Path:
        """Write the trained result where its consumers load it (a diffusers LoRA file, a pipeline, ...)."""

    # -- model ---------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.family.is_loaded:
            return
        self.family.load()
        self.configure_trainable()
        if self.gradient_checkpointing:
            self.family.denoiser.enable_gradient_checkpointing()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: every parameter that requires a gradient, by state-dict key."""
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"},
        }

    # -- steps ---------------------------------------------------------------------------------------------------

    def denoising_losses(
        self, batch: Batch, generator: torch.Generator, levels: torch.Tensor | None = None, repeats: int = 1
    ) -> torch.Tensor:
        """Per-example denoising loss (B * repeats,), all randomness drawn from ``generator``.

        Args:
            batch: ``pixel_values`` (B, 3, H, W) in [-1, 1] and ``prompts`` (B strings).
            generator: the source of the posterior sample, noise and (when ``levels`` is None) noise levels.
            levels: noise levels in [0, 1) for each of the B * repeats examples; None samples them.
            repeats: score each image this many times (consecutive rows), e.g. at several fixed levels.
        """
        latents = self.family.encode_images(batch["pixel_values"], generator).repeat_interleave(repeats, 0)
        conditioning = self.family.encode_prompts(batch["prompts"])
        conditioning = {key: value.repeat_interleave(repeats, 0) for key, value in conditioning.items()}
        noised = self.family.add_training_noise(latents, generator, levels)
        return per_example_mse(self.family.predict(noised, conditioning), noised.target)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        generator = self.make_generator(self.seed, self.global_step, micro_batch, self.global_rank)
        loss = self.denoising_losses(batch, generator).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["prompts"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Loss on fixed images at fixed, evenly spaced noise levels and fixed noise: comparable across steps."""
        num_levels, size = self.validation_noise_levels, len(batch["prompts"])
        levels = ((torch.arange(num_levels, device=self.device) + 0.5) / num_levels).repeat(size)
        generator = self.make_generator(self.seed, batch_idx, 2**31)
        loss = self.denoising_losses(batch, generator, levels, repeats=num_levels).mean()
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        return loss

    def make_generator(self, *keys: int) -> torch.Generator:
        """A generator on this module's device, seeded from integer keys."""
        return torch.Generator(self.device).manual_seed(step_seed(*keys))

    # -- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        resolution: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
    ) -> list[Image.Image]:
        """One image per (prompt, seed) pair, from the weights in training, in eval mode."""
        pipeline = self.family.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        was_training = self.training
        self.eval()
        try:
            generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
            return pipeline(
                prompts,
                generator=generators,
                height=resolution,
                width=resolution,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
            ).images
        finally:
            self.train(was_training)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_state_dict()
        checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items() if key in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        missing = sorted(set(self.trainable_state_dict()) - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} trained tensors (first: {missing[0]}); it was written by another "
                "method or configuration: resume with the config of the run that wrote it"
            )
