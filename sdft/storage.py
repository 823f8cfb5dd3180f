"""Where a fit writes, checked before any model loads: the run folder can be written (a probe file is written and
removed), and its disk has room for the first checkpoint and the export.

A fit that cannot write its run folder would otherwise stop at the first file it writes, after the model loaded; one
whose disk is too small would stop at its first checkpoint, after training up to it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from sdft.errors import UserError

#: bytes of one trained (float32) element in a checkpoint or an export
TRAINED_BYTES = 4


def check_run_storage(trainer: Any, model: Any) -> None:
    """Refuse, in one line naming the folder and its config key, a fit whose run or checkpoint folders cannot be
    written, or whose disk holds less than the first checkpoint and the export will take.

    Args:
        trainer: the fit's trainer, before ``fit``.
        model: the fine-tuner, not loaded (a :class:`~sdft.methods.DiffusionFineTuner` has its needs estimated).
    """
    folders = write_folders(trainer)
    for folder, key in folders.items():
        check_writable(folder, key)
    from sdft.methods import DiffusionFineTuner

    if isinstance(model, DiffusionFineTuner):
        try:
            need = first_files_bytes(model)
        except OSError:  # the model's configs cannot be read here: loading it names that
            return
        for folder, key in folders.items():
            check_free_space(folder, key, need)


def write_folders(trainer: Any) -> dict[Path, str]:
    """The folders a fit writes into, each with the config key that sets it: the logger's run folders (or the
    trainer's root without a logger) and every ``ModelCheckpoint.dirpath`` that is set."""
    logger = trainer.logger
    if logger is not None and (logger.root_dir or logger.save_dir):
        folders = {Path(logger.root_dir or logger.save_dir): "trainer.logger.init_args.save_dir"}
    else:
        folders = {Path(trainer.default_root_dir): "trainer.default_root_dir"}
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is not None:
            folders.setdefault(Path(callback.dirpath), "ModelCheckpoint.dirpath")
    return folders


def existing_ancestor(folder: Path) -> Path:
    """``folder`` itself when it exists, else its nearest ancestor that does (where it would be created)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(folder: Path, key: str) -> None:
    """Write and remove a probe file where ``folder`` is or would be created; refuse in one line if it cannot."""
    place = existing_ancestor(folder)
    if not place.is_dir():
        raise UserError(f"{key}: {folder} cannot be made, {place} is a file; choose a folder in a writable place")
    probe = place / f".sdft-write-probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"{key}: {folder} cannot be written ({error.strerror} in {place}); choose a folder you can write to, "
            "before anything loads"
        ) from None


def check_free_space(folder: Path, key: str, need: int) -> None:
    """Refuse when the disk of ``folder`` has less than ``need`` bytes free."""
    from sdft.memory import size_text

    free = shutil.disk_usage(existing_ancestor(folder)).free
    if free < need:
        raise UserError(
            f"{key}: {folder} has {size_text(free)} free, and the first checkpoint and the export of this fit need "
            f"about {size_text(need)}; free disk space or choose a folder on a larger disk"
        )


def first_files_bytes(model: Any) -> int:
    """About what the first checkpoint and the export of ``model`` take: the trained tensors (float32) and the
    optimizer's state in the checkpoint, the trained tensors again in the export; measured on a weightless copy
    built from the model's configs."""
    from sdft.memory import meta_copy, optimizer_state_bytes, trained_elements

    meta = meta_copy(model)
    trained = trained_elements(meta)
    optimizer_bytes, _ = optimizer_state_bytes(meta)
    return 2 * TRAINED_BYTES * trained + optimizer_bytes
