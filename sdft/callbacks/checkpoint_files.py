"""Where the evaluator finds a step's checkpoint, and how it exports a step: the file side of keeping the best step.

A run resumed into another folder looks for the chosen step's checkpoint in its own folders first, then in those of
the run it resumed; exporting an earlier step applies its checkpoint and puts the live weights back afterwards.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from sdft.callbacks.export import live_weights_kept
from sdft.methods.base import DiffusionFineTuner
from sdft.runs import apply_checkpoint, checkpoints_by_step


def unique_paths(paths: list[Path]) -> list[Path]:
    """The resolved paths in first-seen order, without repeats."""
    return list(dict.fromkeys(Path(path).resolve() for path in paths))


def current_checkpoint_dirs(trainer: Trainer) -> list[Path]:
    """The folders of the trainer's ModelCheckpoint callbacks."""
    return [
        Path(callback.dirpath)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and callback.dirpath
    ]


def checkpoint_at(folders: list[Path], step: int) -> Path | None:
    """The first checkpoint file in ``folders`` that holds ``step``, read from the files' own ``global_step``.

    Args:
        folders: checkpoint folders, searched in order; missing ones are skipped.
        step: the global step.
    """
    for folder in folders:
        if folder.is_dir():
            found = [path for saved, path in checkpoints_by_step(folder) if saved == step]
            if found:
                return found[0]
    return None


def export_step(
    pl_module: DiffusionFineTuner, checkpoint: Path | None, current_step: int, step: int, directory: Path
) -> bool:
    """Export the weights of ``step``: the live ones if it is the current step, else those of its checkpoint.

    Returns whether ``directory`` was written (not when no checkpoint holds an earlier step).

    Args:
        pl_module: the model in training; its live weights are restored after exporting a checkpoint.
        checkpoint: the checkpoint file of ``step``, or None.
        current_step: the trainer's global step.
        step: the step to export.
        directory: the export folder.
    """
    if step == current_step:
        pl_module.export(directory)
        return True
    if checkpoint is None:
        rank_zero_warn(f"no checkpoint holds step {step}; {directory} was not written")
        return False
    with live_weights_kept(pl_module):
        apply_checkpoint(pl_module, checkpoint)
        pl_module.export(directory)
    return True
