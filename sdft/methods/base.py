"""The shared training step: every method trains some part of a model family with the family's objective."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from PIL import Image

from sdft.batches import Batch, cat_batches, split_prior
from sdft.families.base import Conditioning, ModelFamily, NoisedLatents
from sdft.files import write_folder_atomic
from sdft.objectives import per_example_mse, prior_preservation_loss, step_seed

ParameterGroups = list[dict[str, Any]]

#: generator key of the initial values of new weights (adapters, token embeddings)
INIT_STREAM = 3
#: extra generator key of the class (prior) examples, so instance examples draw what they would without them
PRIOR_STREAM = 1


class DiffusionFineTuner(LightningModule):
    """Base of every method: owns the family, the seeded training step, validation loss and slim checkpoints.

    A method (subclass) fills in two hooks: :meth:`configure_trainable` decides what trains, and
    :meth:`write_export` writes the trained result in the format its consumers load. It may also override
    :meth:`parameter_groups` (per-part learning rates) and :meth:`rewrite_prompts` (e.g. spelling a new word as its
    tokens). The family, not the method, turns a batch into conditioning (:meth:`ModelFamily.encode_conditioning`).
    Checkpoints hold only trainable tensors plus the optimizer, scheduler and loop state; the frozen base model is
    reloaded from its source on resume.

    Batches with an ``is_prior`` mask (prior preservation, see :class:`sdft.data.SubjectDataModule`) are trained on
    ``instance loss + prior_loss_weight * prior loss``; both parts are logged.
    """

    def __init__(
        self,
        family: ModelFamily,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
        validation_noise_levels: int = 4,
        prior_loss_weight: float | None = None,
    ) -> None:
        """
        Args:
            family: the model family and base weights, e.g. ``sdft.families.StableDiffusion``.
            optimizer: optimizer class and its arguments (lr, weight decay, ...); gets the trainable parameters only.
            lr_scheduler: learning-rate scheduler, stepped every optimizer step; None keeps the rate constant.
            gradient_checkpointing: recompute denoiser activations in the backward pass to save memory.
            seed: seeds the noise, timesteps and posterior samples of every step (a function of seed and step).
            validation_noise_levels: each validation image is scored at this many evenly spaced noise levels.
            prior_loss_weight: weight of the class-image (prior preservation) loss; None means 1 when the data has
                class images. Setting it for data without class images is an error.
        """
        super().__init__()
        self.family = family
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.validation_noise_levels = validation_noise_levels
        if prior_loss_weight is not None and prior_loss_weight < 0:
            raise ValueError(f"model.init_args.prior_loss_weight must be >= 0, got {prior_loss_weight}")
        self.prior_loss_weight = prior_loss_weight
        self.strict_loading = False  # checkpoints omit the frozen base model

    # -- hooks for methods -------------------------------------------------------------------------------------

    @abstractmethod
    def configure_trainable(self) -> None:
        """Make the trained parameters (and only those) require gradients, adding adapters if the method has any."""

    @abstractmethod
    def write_export(self, directory: Path) -> Path:
        """Write the trained result into the empty folder ``directory``; return the main file or folder written."""

    def parameter_groups(self) -> ParameterGroups:
        """The optimizer's parameter groups; one group of every trainable parameter unless a method splits them
        (e.g. to give the text encoder its own learning rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts as the text encoders should read them; unchanged unless a method adds words."""
        return prompts

    def conditioning(self, batch: Batch) -> Conditioning:
        """A batch -> the denoiser's conditioning, by the family, from the method's rewritten prompts."""
        return self.family.encode_conditioning({**batch, "prompts": self.rewrite_prompts(list(batch["prompts"]))})

    def export(self, directory: str | Path) -> Path:
        """Write the trained result where its consumers load it (a diffusers LoRA file, a pipeline, ...).

        The export is written beside ``directory`` and renamed into place, so an existing export is replaced only
        by a complete one. Returns the main file or folder written.
        """
        directory = Path(directory)
        return directory / write_folder_atomic(
            directory, lambda staging: self.write_export(staging).relative_to(staging)
        )

    # -- model ---------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.family.is_loaded:
            return
        self.family.load()
        with torch.random.fork_rng(devices=[]):  # new weights (adapters, tokens) are a function of the seed alone
            torch.manual_seed(step_seed(self.seed, INIT_STREAM))
            self.configure_trainable()
        if self.gradient_checkpointing:
            self.family.denoiser.enable_gradient_checkpointing()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: every parameter that requires a gradient, by state-dict key."""
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer(self.parameter_groups())
        if self.lr_scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"},
        }

    # -- steps ---------------------------------------------------------------------------------------------------

    def noised_latents(
        self, pixels: torch.Tensor, generator: torch.Generator, levels: torch.Tensor | None = None, repeats: int = 1
    ) -> NoisedLatents:
        """Images -> noised latents and targets, all randomness (posterior sample, noise, levels) from ``generator``.

        Args:
            pixels: images (B, 3, H, W) in [-1, 1].
            generator: the source of the posterior sample, noise and (when ``levels`` is None) noise levels.
            levels: noise levels in [0, 1) for each of the B * repeats examples; None samples them.
            repeats: noise each image this many times (consecutive rows), e.g. at several fixed levels.
        """
        latents = self.family.encode_images(pixels, generator).repeat_interleave(repeats, 0)
        return self.family.add_training_noise(latents, generator, levels)

    def denoising_losses(
        self, batch: Batch, generator: torch.Generator, levels: torch.Tensor | None = None, repeats: int = 1
    ) -> torch.Tensor:
        """Per-example denoising loss (B * repeats,), all randomness drawn from ``generator``.

        Args:
            batch: ``pixel_values`` (B, 3, H, W) in [-1, 1], ``prompts`` (B strings) and what else the family reads.
            generator: the source of the posterior sample, noise and (when ``levels`` is None) noise levels.
            levels: noise levels in [0, 1) for each of the B * repeats examples; None samples them.
            repeats: score each image this many times (consecutive rows), e.g. at several fixed levels.
        """
        noised = self.noised_latents(batch["pixel_values"], generator, levels, repeats)
        conditioning = self.conditioning(batch).repeat_interleave(repeats)
        return weighted_losses(self.family.predict(noised, conditioning), noised)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        keys = (self.seed, self.global_step, micro_batch, self.global_rank)
        parts = split_prior(batch) if "is_prior" in batch else (batch,)
        if len(parts) == 1 and self.prior_loss_weight is not None:
            raise ValueError(
                "model.init_args.prior_loss_weight is set but the batches hold no class images: set "
                "data.class_prompt to turn prior preservation on, or drop prior_loss_weight"
            )
        # Instance examples draw the noise they would draw without class examples (so prior_loss_weight 0 is plain
        # training); the class examples draw from their own stream. One denoiser pass serves both.
        streams = (keys, (*keys, PRIOR_STREAM))
        noised = NoisedLatents.cat(
            [
                self.noised_latents(part["pixel_values"], self.make_generator(*stream))
                for part, stream in zip(parts, streams, strict=False)
            ]
        )
        losses = weighted_losses(self.family.predict(noised, self.conditioning(cat_batches(parts))), noised)
        if len(parts) == 1:
            loss = losses.mean()
        else:
            instance, prior = losses.split([len(part["prompts"]) for part in parts])
            weight = 1.0 if self.prior_loss_weight is None else self.prior_loss_weight
            loss = prior_preservation_loss(instance, prior, weight)
            self.log("train/instance_loss", instance.mean(), batch_size=len(instance))
            self.log("train/prior_loss", prior.mean(), batch_size=len(prior))
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
        training = [module for module in self.modules() if module.training]
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
                **self.family.sampling_options(),
            ).images
        finally:
            for module in training:  # only what trained before: frozen encoders stay in eval mode (T5 dropout)
                module.train()

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


def weighted_losses(prediction: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
    """Each example's loss: its MSE against the target, times the family's per-example weight (B,)."""
    return per_example_mse(prediction, noised.target) * noised.weight
