"""Helpers for tests that train: a tiny LoRA fine-tuner, its data, and a CPU trainer that records losses."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from sdft.data import SubjectDataModule
from sdft.families import StableDiffusion
from sdft.methods import LoRAFineTuner

PROMPT = "a photo of sks toy"


def lora_tuner(model_dir: Path, lr: float = 3e-3, **kwargs) -> LoRAFineTuner:
    options = {"rank": 4, "alpha": 8.0, **kwargs}
    optimizer = lambda params: torch.optim.AdamW(params, lr=lr)  # noqa: E731
    return LoRAFineTuner(StableDiffusion(str(model_dir)), optimizer=optimizer, **options)


def subject_data(subject_dir: Path, **kwargs) -> SubjectDataModule:
    options = {"resolution": 32, "batch_size": 2, "random_flip": 0.5, **kwargs}
    return SubjectDataModule(str(subject_dir), PROMPT, **options)


class LossRecorder(Callback):
    """Training loss of every optimizer step, keyed by the global step it produced."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


def cpu_trainer(root: Path, max_steps: int, callbacks: list[Callback] = (), **kwargs) -> Trainer:
    options = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    return Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        limit_val_batches=1.0,
        val_check_interval=None,
        check_val_every_n_epoch=None,
        **options,
    )


def checkpointer(root: Path, every_n_steps: int) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=root / "checkpoints", every_n_train_steps=every_n_steps, save_top_k=-1, filename="{step}"
    )
