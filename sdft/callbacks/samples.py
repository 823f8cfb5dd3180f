"""Fixed-seed sample images from the weights in training, every N steps, to TensorBoard and PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from sdft.files import write_atomic
from sdft.methods.base import DiffusionFineTuner
from sdft.sharding import whole_model
from sdft.tools.grids import image_grid


class SamplePreview(Callback):
    """Generate the same prompts with the same seeds at step 0, every ``every_n_steps`` and at the end of training.

    Images go to ``<run>/samples/step_<N>/<prompt index>_<seed>.png`` and, as one grid per step, to TensorBoard
    under ``samples/grid``. Only global rank 0 samples.
    """

    def __init__(
        self,
        prompts: list[str],
        every_n_steps: int = 200,
        num_images_per_prompt: int = 2,
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        resolution: int | None = None,
    ) -> None:
        """
        Args:
            prompts: prompts to sample, typically containing the instance identifier.
            every_n_steps: sample after every this many optimizer steps (and at steps 0 and the last).
            num_images_per_prompt: images per prompt, with seeds seed, seed + 1, ...
            seed: first sampling seed; the same seeds are used at every step so images are comparable.
            num_inference_steps: denoising steps per image.
            guidance_scale: classifier-free guidance scale.
            resolution: image side in pixels; None uses the data module's ``resolution``.
        """
        if every_n_steps < 1:
            raise ValueError(f"SamplePreview.every_n_steps must be >= 1, got {every_n_steps}")
        self.prompts, self.every_n_steps, self.num_images_per_prompt = (
            prompts,
            every_n_steps,
            num_images_per_prompt,
        )
        self.seed, self.num_inference_steps, self.guidance_scale = seed, num_inference_steps, guidance_scale
        self.resolution = resolution
        self.last_sampled_step = -1
        self.run_dir = Path()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.log_dir)  # a collective call under DDP: every rank makes it here

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sample(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sample(trainer, pl_module)

    def sample(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> None:
        """Sample once per step (hooks can meet on the same step) on rank 0, every rank holding the whole model
        meanwhile (see :func:`sdft.sharding.whole_model`)."""
        step = trainer.global_step
        if step == self.last_sampled_step:
            return
        self.last_sampled_step = step
        with whole_model(pl_module):
            if trainer.is_global_zero:
                self.write_samples(trainer, pl_module, step)

    def write_samples(self, trainer: Trainer, pl_module: DiffusionFineTuner, step: int) -> None:
        """Generate the previews of ``step``, write PNGs and log a grid."""
        prompts = [prompt for prompt in self.prompts for _ in range(self.num_images_per_prompt)]
        seeds = [self.seed + i for _ in self.prompts for i in range(self.num_images_per_prompt)]
        resolution = self.resolution or trainer.datamodule.resolution
        images = pl_module.generate(prompts, seeds, resolution, self.num_inference_steps, self.guidance_scale)
        folder = self.run_dir / "samples" / f"step_{step:06d}"
        write_images(images, folder, [f"{i // self.num_images_per_prompt}_{seed}" for i, seed in enumerate(seeds)])
        log_grid(trainer, "samples/grid", image_grid(images, columns=self.num_images_per_prompt), step)


def log_grid(trainer: Trainer, tag: str, grid: Image.Image, step: int) -> None:
    """Show an image grid in TensorBoard (the trainer's TensorBoard loggers; others have no image panel)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, np.asarray(grid), step, dataformats="HWC")


def write_images(images: list[Image.Image], folder: Path, stems: list[str]) -> list[Path]:
    """Save images as ``<folder>/<stem>.png``; return the paths."""
    paths = [folder / f"{stem}.png" for stem in stems]
    for image, path in zip(images, paths, strict=True):
        write_atomic(path, lambda file, image=image: image.save(file, format="PNG"))
    return paths
