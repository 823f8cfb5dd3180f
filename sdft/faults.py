"""Numerical faults: a loss, gradient or trained tensor holding a nan or an infinity, found before it spreads.

A fine-tuner checks every optimizer step before the weights change (``model.init_args.nonfinite``: stop the fit, or
skip the step), and refuses to write a checkpoint or an export whose trained tensors are not finite, so a file that
exists holds usable weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.distributed.tensor import DTensor

from sdft.errors import UserError

#: what a step with a non-finite loss or gradient does: end the fit, or drop the step (no update) and count it
NONFINITE_ACTIONS = ("stop", "skip")


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding a nan or an infinity, None when every one is finite.

    A sharded tensor is checked on this rank's shard; one synchronisation with the device for all of them.

    Args:
        tensors: tensors by name, on one device.
    """
    if not tensors:
        return None
    names = list(tensors)
    finite = torch.stack([local_part(tensor).isfinite().all() for tensor in tensors.values()])
    if bool(finite.all()):
        return None
    return names[int((~finite).nonzero()[0])]


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (this rank's shard of a sharded tensor), in one synchronisation
    with the device.

    A tensor's sum is not finite when one of its values is not, so finite sums settle it with one reduction per
    tensor; when a sum is not finite (a nan or an infinity, or finite values that overflowed) the values are
    checked one by one.

    Args:
        tensors: tensors on one device.
    """
    if not tensors:
        return True
    parts = [local_part(tensor) for tensor in tensors]
    if bool(torch.stack([part.sum().float() for part in parts]).isfinite().all()):
        return True
    return bool(torch.stack([part.isfinite().all() for part in parts]).all())


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (FSDP2's ``DTensor``), else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def nonfinite_step_message(step: int, fault: str) -> str:
    """The one-line message that ends a fit at a non-finite step: the step, what was found, the likely causes
    and what to do.

    Args:
        step: the optimizer step that would have applied it (1 for the first).
        fault: what was found, e.g. ``the training loss is not finite``.
    """
    return (
        f"step {step}: {fault}, so the fit stopped before the weights changed; the learning rate is likely too high "
        "(model.init_args.optimizer.init_args.lr) or float16 overflowed (trainer.precision: use bf16-mixed or "
        "32): lower the rate, or set model.init_args.nonfinite: skip to drop such steps; the checkpoints written "
        "so far hold finite weights"
    )


def check_finite_weights(tensors: Mapping[str, torch.Tensor], what: str, step: int) -> None:
    """Refuse to write ``what`` when a trained tensor is not finite, naming the tensor and the step.

    Args:
        tensors: the trained tensors by name.
        what: what would have been written, e.g. ``a checkpoint`` or ``the export runs/x/final``.
        step: the training step of the tensors.
    """
    name = first_nonfinite(tensors)
    if name is not None:
        raise nonfinite_weights_error(name, what, step)


def nonfinite_weights_error(name: str | None, what: str, step: int) -> UserError:
    """The error refusing to write ``what`` of ``step`` because the trained tensor ``name`` (None: on another
    rank) is not finite."""
    where = f"the trained tensor {name}" if name is not None else "a trained tensor on another rank"
    return UserError(
        f"step {step}: {where} holds nan or inf, so {what} was not written (what was there is kept); use an "
        "earlier checkpoint, and train with a lower learning rate or model.init_args.nonfinite: skip"
    )
