"""An exponential moving average of the trained weights, exported beside the last step's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from sdft.averaging import ema_decay, update_average
from sdft.callbacks.export import live_weights_kept
from sdft.errors import UserError
from sdft.methods.base import DiffusionFineTuner


class ExponentialMovingAverage(Callback):
    """Average the trained tensors over the optimizer steps; export the average to ``<run>/<dirname>`` at the end.

    Only the tensors that train (``trainable_state_dict()``: adapters, token embeddings, or a whole UNet) are
    averaged, in float32 on their parameters' devices. Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` are not
    used because they deep-copy the whole module, frozen base model included (many GB).

    The average starts as the weights of optimizer step ``start_step`` and then moves towards the weights after
    every ``every_n_steps``-th optimizer step (once per optimizer step under gradient accumulation):
    ``average = decay * average + (1 - decay) * weights``. It is saved in the checkpoints, so a resumed run continues
    the uninterrupted run's average. When a fit ends (not when it is interrupted), global rank 0 exports the average
    in the method's format (as ``final/`` holds the last step's weights); the weights in training are unchanged.
    """

    def __init__(
        self,
        decay: float = 0.999,
        start_step: int = 0,
        every_n_steps: int = 1,
        warmup: bool = False,
        dirname: str = "ema",
    ) -> None:
        """
        Args:
            decay: the weight of the old average at each update, in (0, 1); the average spans about
                ``every_n_steps / (1 - decay)`` steps.
            start_step: the optimizer step whose weights start the average (0: the weights before training).
            every_n_steps: update the average after every this many optimizer steps.
            warmup: lower the decay over the first updates to ``min(decay, (1 + n) / (10 + n))`` after ``n``
                updates (diffusers' ``EMAModel``), so that the starting weights fade quickly.
            dirname: sub-folder of the run folder to export the average into.
        """
        check_options(decay, start_step, every_n_steps)
        self.decay, self.start_step, self.every_n_steps = decay, start_step, every_n_steps
        self.warmup, self.dirname = warmup, dirname
        self.average: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self.step = 0  # the last optimizer step seen
        self.run_dir = Path()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirname=self.dirname)

    def setup(self, trainer: Trainer, pl_module: DiffusionFineTuner, stage: str) -> None:
        self.run_dir = Path(trainer.log_dir)  # a collective call under DDP: every rank makes it here

    def on_train_start(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> None:
        weights = pl_module.trainable_state_dict()
        if self.average is not None:  # restored from a checkpoint
            self.average = {key: value.to(weights[key].device, torch.float32) for key, value in self.average.items()}
        elif trainer.global_step >= self.start_step:
            self.start(weights)

    def on_train_batch_end(self, trainer: Trainer, pl_module: DiffusionFineTuner, *args: Any) -> None:
        if trainer.global_step == self.step:  # within an accumulated step: the weights have not moved
            return
        self.step = trainer.global_step
        if self.average is None and self.step >= self.start_step:
            self.start(pl_module.trainable_state_dict())
        elif self.average is not None and (self.step - self.start_step) % self.every_n_steps == 0:
            self.update(pl_module.trainable_state_dict())

    def start(self, weights: dict[str, torch.Tensor]) -> None:
        """Start the average as a float32 copy of ``weights``."""
        self.average = {key: value.to(torch.float32, copy=True) for key, value in weights.items()}
        self.num_updates = 0

    def update(self, weights: dict[str, torch.Tensor]) -> None:
        """Move the average towards ``weights`` (the trained tensors by state-dict key)."""
        decay = ema_decay(self.decay, self.num_updates, self.warmup)
        update_average(list(self.average.values()), [weights[key] for key in self.average], decay)
        self.num_updates += 1

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> None:
        if trainer.interrupted:
            return
        directory = self.run_dir / self.dirname
        if self.average is None:
            rank_zero_warn(
                f"training ended at step {trainer.global_step}, before ExponentialMovingAverage.start_step="
                f"{self.start_step}: there is no average and {directory} was not written"
            )
            return
        with live_weights_kept(pl_module):
            pl_module.load_state_dict(self.average, strict=False)
            path = pl_module.export(directory, average=self.description(trainer.global_step))
        rank_zero_info(f"exported the moving average of {self.num_updates} updates to {path}")

    def description(self, step: int) -> str:
        """The average in words, for the export's model card, e.g. ``the exponential moving average (decay 0.999)
        of the trained weights from step 0 to step 400 (400 updates, one every optimizer step)``."""
        warmup = ", with warm-up" if self.warmup else ""
        every = "every optimizer step" if self.every_n_steps == 1 else f"every {self.every_n_steps} optimizer steps"
        return (
            f"the exponential moving average (decay {self.decay}{warmup}) of the trained weights from step "
            f"{self.start_step} to step {step} ({self.num_updates} updates, one {every})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "num_updates": self.num_updates, "step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.average = state_dict["average"]
        self.num_updates = state_dict["num_updates"]
        self.step = state_dict["step"]


def check_options(decay: float, start_step: int, every_n_steps: int) -> None:
    """Raise a :class:`UserError` naming the first bad ExponentialMovingAverage option (see its ``__init__``)."""
    if not 0 < decay < 1:
        raise UserError(
            f"trainer.callbacks: ExponentialMovingAverage.decay must be in (0, 1), got {decay}; e.g. 0.999 averages "
            "about the last 1000 steps"
        )
    if start_step < 0:
        raise UserError(f"trainer.callbacks: ExponentialMovingAverage.start_step must be >= 0, got {start_step}")
    if every_n_steps < 1:
        raise UserError(f"trainer.callbacks: ExponentialMovingAverage.every_n_steps must be >= 1, got {every_n_steps}")
