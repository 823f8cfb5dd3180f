"""Helpers for the SD3 and Flux family tests: tuners on a family, the stock pipeline's images and the trained
model's, at 32 px, 4 steps and fixed seeds, and a short recorded fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from training import LossRecorder, checkpointer, cpu_trainer, subject_data, validation_loss

from sdft.families import ModelFamily
from sdft.methods import DiffusionFineTuner, FullFineTuner, LoRAFineTuner

PROMPT = "a photo of sks toy"
SEEDS = (3, 4)
#: the guidance of every image comparison (CFG for SD3, the distilled guidance embedding for Flux)
GUIDANCE = 3.5


def adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr)


def lora_tuner(family: ModelFamily, lr: float = 5e-3, **kwargs) -> LoRAFineTuner:
    return LoRAFineTuner(family, optimizer=adamw(lr), **{"rank": 4, "alpha": 8.0, **kwargs})


def full_tuner(family: ModelFamily, lr: float = 1e-3, **kwargs) -> FullFineTuner:
    return FullFineTuner(family, optimizer=adamw(lr), **kwargs)


def stock_pipeline(family_class: type[ModelFamily], folder: Path) -> DiffusionPipeline:
    """The family's diffusers pipeline loaded from a model folder, as a user loads it."""
    pipeline = family_class.pipeline_class.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_images(pipeline: DiffusionPipeline, prompt: str = PROMPT) -> np.ndarray:
    """Images of ``prompt`` at :data:`SEEDS` (32 px, 4 steps) from a stock pipeline, as int16 arrays."""
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    images = pipeline(
        [prompt] * len(SEEDS),
        generator=generators,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=GUIDANCE,
    ).images
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def trained_images(model: DiffusionFineTuner, prompt: str = PROMPT) -> np.ndarray:
    """The same images from the model in training (its ``generate``)."""
    images = model.generate(
        [prompt] * len(SEEDS), list(SEEDS), resolution=32, num_inference_steps=4, guidance_scale=GUIDANCE
    )
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


@dataclass
class Fit:
    """A short fit: the model, its per-step training losses, and its validation loss before and after."""

    model: DiffusionFineTuner
    root: Path
    losses: dict[int, float]
    loss_before: float
    loss_after: float

    def checkpoint(self, step: int) -> Path:
        return self.root / "checkpoints" / f"step={step}.ckpt"


def fit(model: DiffusionFineTuner, subject_dir: Path, root: Path, steps: int, every: int) -> Fit:
    """Train ``steps`` steps on the toy subject at 32 px, checkpointing every ``every`` steps."""
    data, recorder = subject_data(subject_dir), LossRecorder()
    trainer = cpu_trainer(root, steps, [recorder, checkpointer(root, every)])
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    return Fit(model, root, recorder.losses, before, validation_loss(trainer, model, data))


def resumed_losses(model: DiffusionFineTuner, subject_dir: Path, root: Path, steps: int, checkpoint: Path) -> dict:
    """The training losses of a fresh ``model`` resumed from ``checkpoint`` and run to ``steps``."""
    recorder = LossRecorder()
    cpu_trainer(root, steps, [recorder]).fit(model, datamodule=subject_data(subject_dir), ckpt_path=checkpoint)
    return recorder.losses
