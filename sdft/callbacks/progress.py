"""A training progress bar that counts optimizer steps, the unit sdft trains in."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting optimizer steps (``steps 40/120``) instead of epochs and batches, and
    without the logger's version number among the values shown."""

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.n = trainer.global_step
        bar.set_description("steps")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if bar is None or bar.disable or bar.n == step:
            return
        if step % max(self.refresh_rate, 1) == 0 or step == trainer.max_steps:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
