"""Batches as dicts of per-example entries (tensors with the batch first, or lists), split and joined whatever
keys they hold: the data modules emit them, the families read them, and nothing between needs to know the keys."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

Batch = dict[str, Any]


def split_prior(batch: Batch) -> tuple[Batch, Batch]:
    """A prior-preservation batch -> its instance examples and its class examples, each a plain batch.

    Every per-example entry (a tensor with the batch first, or a list) is split; the ``is_prior`` mask is dropped.
    """
    is_prior = batch["is_prior"].bool()
    return tuple(
        {key: select(value, mask) for key, value in batch.items() if key != "is_prior"}
        for mask in (~is_prior, is_prior)
    )


def select(values: torch.Tensor | list, mask: torch.Tensor) -> torch.Tensor | list:
    """The examples of a batch entry where ``mask`` is true."""
    if isinstance(values, torch.Tensor):
        return values[mask]
    return [value for value, keep in zip(values, mask.tolist(), strict=True) if keep]


def cat_batches(parts: tuple[Batch, ...] | list[Batch]) -> Batch:
    """Consecutive parts of a batch -> one batch: every entry joined (tensors concatenated, lists chained)."""
    if len(parts) == 1:
        return parts[0]
    return {
        key: torch.cat([part[key] for part in parts])
        if isinstance(parts[0][key], torch.Tensor)
        else [value for part in parts for value in part[key]]
        for key in parts[0]
    }


def collate_pairs(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Batch:
    """(instance, class) example pairs -> B instance examples followed by B class examples, every entry joined, with
    ``is_prior`` (2B,) marking the class half (DreamBooth's prior preservation)."""
    instances, priors = (default_collate([pair[side] for pair in pairs]) for side in (0, 1))
    batch = cat_batches([instances, priors])
    batch["is_prior"] = torch.arange(2 * len(pairs)) >= len(pairs)
    return batch
