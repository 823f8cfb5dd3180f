"""Export the trained result at the end of fit, in the method's consumer format."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sdft.methods.base import DiffusionFineTuner
from sdft.sharding import whole_model


class FinalExport(Callback):
    """Call the method's ``export`` into ``<run>/<dirname>`` when training ends (global rank 0)."""

    def __init__(self, dirname: str = "final") -> None:
        """
        Args:
            dirname: sub-folder of the run folder to export into.
        """
        self.dirname = dirname
        self.run_dir = Path()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.log_dir)  # a collective call under DDP: every rank makes it here

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted:
            return
        with whole_model(pl_module):  # every rank, for a sharded model; rank 0 writes
            if trainer.is_global_zero:
                path = pl_module.export(self.run_dir / self.dirname)
                rank_zero_info(f"exported step {trainer.global_step} to {path}")


@contextmanager
def live_weights_kept(pl_module: DiffusionFineTuner) -> Iterator[None]:
    """Restore the trained tensors as they are now when the block ends, so that other weights (a checkpoint's, an
    average) can be loaded into the model inside it, e.g. to export them."""
    live = {key: value.clone() for key, value in pl_module.trainable_state_dict().items()}
    try:
        yield
    finally:
        pl_module.load_state_dict(live, strict=False)
