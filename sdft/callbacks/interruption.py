"""A checkpoint of the current step when a fit is interrupted (SIGTERM from a scheduler or a preemptible host, or
Ctrl-C), so that nothing since the last periodic checkpoint is lost."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: the signals that stop a fit after the current step
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InterruptionCheckpoint(Callback):
    """On SIGTERM or Ctrl-C, finish the current optimizer step, save a checkpoint of it, print how to resume, stop.

    The checkpoint is written (atomically, through the trainer's checkpoint writer) where the first
    ``ModelCheckpoint`` writes and under the name it would give that step, so resuming from it is exactly
    like resuming from a periodic checkpoint. The fit stops at the next hook after Lightning has logged the step
    (the next batch's start, or the epoch's end), so the interrupted step's ``train/loss`` is in the logs like any
    other. Under DDP the ranks agree on stopping at the same step. A second Ctrl-C stops at once, without a
    checkpoint. :attr:`signal` tells which signal stopped the fit.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.requested: int | None = None
        self.previous_handlers: dict[int, object] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous_handlers = {number: signal.signal(number, self.request_stop) for number in STOP_SIGNALS}

    def request_stop(self, number: int, frame: FrameType | None) -> None:
        """Signal handler: note the request; a second Ctrl-C interrupts at once."""
        if self.requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = number
        rank_zero_info(f"\n{signal.Signals(number).name}: stopping after this step (Ctrl-C again to stop at once)")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # mid-step: every rank is at the same batch
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            return
        self.signal = self.requested or signal.SIGTERM  # another rank may have received it
        path = checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"saved step {trainer.global_step} to {path}; resume with:\n  {resume_command(trainer, path)}")
        self.restore_handlers()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        self.stop_if_saved()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_if_saved()

    def stop_if_saved(self) -> None:
        """End the fit once the interrupted step is saved (and, by now, logged)."""
        if self.signal is not None:
            raise KeyboardInterrupt if self.signal == signal.SIGINT else SIGTERMException(128 + self.signal)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)
        self.previous_handlers = {}


def checkpoint_path(trainer: Trainer) -> Path:
    """Where the first ModelCheckpoint would write this step's checkpoint (``<run>/checkpoints/`` without one)."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.dirpath is None:
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return folder / f"step={trainer.global_step:06d}.ckpt"
    metrics = {**trainer.callback_metrics, "step": trainer.global_step, "epoch": trainer.current_epoch}
    return Path(callback.format_checkpoint_name(metrics))


def resume_command(trainer: Trainer, checkpoint: Path) -> str:
    """The ``sdft fit`` command line that continues from ``checkpoint``."""
    config = Path(trainer.log_dir or trainer.default_root_dir) / "config.yaml"
    configuration = f"--config {config}" if config.is_file() else "--config <your config>"
    return f"sdft fit {configuration} --ckpt_path {checkpoint}"
