"""Checkpoint files that are either complete or absent, and that name themselves when they cannot be read.

Lightning's default checkpoint writer stages the file in the system's temporary folder and moves it into place;
when that folder is on another filesystem (a tmpfs ``/tmp`` is common) the move is a copy, and a process killed
during the copy leaves a truncated ``.ckpt``. :class:`AtomicCheckpointIO` writes into a hidden sibling of the
checkpoint and renames it, so a checkpoint that exists is complete.
"""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sdft.errors import UserError
from sdft.files import WriteError, write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on local filesystems; load errors name the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        try:
            write_atomic(Path(path), lambda file: torch.save(checkpoint, file))
        except WriteError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(
                f"no space left to write checkpoint {path} ({os.strerror(error.errno)}); nothing was replaced and the "
                "checkpoints already written are intact: free disk space (or set SubjectEvaluator.keep_last_n) and "
                "resume from the last of them with --ckpt_path last"
            ) from None

    def load_checkpoint(
        self, path: str | Path, map_location: Callable | None = lambda storage, loc: storage, weights_only=None
    ) -> dict[str, Any]:
        return read_checkpoint(Path(path), map_location, weights_only=weights_only is not False)


def read_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False, weights_only=True) -> dict[str, Any]:
    """Load a ``.ckpt`` file; a missing, truncated or foreign file, or one that would run code when unpickled, is a
    :class:`UserError` naming it.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``torch.load``'s argument).
        mmap: map the file instead of reading it (cheap when only a few fields are needed).
        weights_only: restrict unpickling to tensors and plain containers (sdft's checkpoints hold nothing else);
            False only for a file the user trusts.
    """
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} not found; pass an existing .ckpt file (e.g. from <run>/checkpoints/)")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=weights_only)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        if "Weights only load failed" in str(error):
            raise UserError(
                f"checkpoint {path} holds objects that unpickling would build by running code, so it was not loaded "
                "(sdft's checkpoints hold only tensors and plain values); use a checkpoint written by sdft fit"
            ) from None
        raise UserError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated or not a "
            "checkpoint: delete it and resume from an earlier one"
        ) from error


#: the values of ``--ckpt_path`` that name no file: Lightning's (and sdft's ``last``) own choices
CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")
#: what a fit's checkpoint holds beside the trained tensors
CHECKPOINT_KEYS = ("state_dict", "global_step")


def check_checkpoint_file(path: str | Path | None, key: str = "--ckpt_path") -> None:
    """Refuse, before any model loads, a checkpoint file that ``sdft fit`` did not write: missing, truncated or
    random bytes, one that would run code when unpickled, a safetensors file (a LoRA or an export), or one without
    the trained tensors and step a fit resumes from. Only the file's header and index are read (tensors are
    mapped, not loaded). None and the names Lightning resolves itself (``last``, ``best``, ...) pass.

    Args:
        path: the checkpoint, or None.
        key: the option that named it, quoted in the error.
    """
    if path is None or str(path) in CHECKPOINT_NAMES:
        return
    path = Path(path)
    if is_safetensors(path):
        raise UserError(
            f"{key}: {path} is a safetensors file (a LoRA or an exported model), not a checkpoint of sdft fit; give "
            "a .ckpt from <run>/checkpoints/ (a LoRA goes to sdft generate --lora or model.init_args.init_lora)"
        )
    try:
        checkpoint = read_checkpoint(path, mmap=True)
    except UserError as error:
        raise UserError(f"{key}: {error}") from None
    missing = [name for name in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or name not in checkpoint]
    if missing:
        raise UserError(
            f"{key}: {path} is not a checkpoint of sdft fit (it holds no {missing[0]}); give a .ckpt from "
            "<run>/checkpoints/"
        )


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header length, then a JSON
    object that fits in the file."""
    try:
        with path.open("rb") as file:
            head = file.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= size - 8
