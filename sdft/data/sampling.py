"""Step-indexed sampling: example ``p`` of a run is a pure function of ``p`` and the seed.

A run that sees ``max_steps`` optimizer steps consumes positions ``0 .. max_steps * global_batch``. Position ``p``
is image ``permutation(epoch)[p mod n]`` with its own seeded augmentation, and rank ``r`` of ``w`` takes positions
``p = r (mod w)``. Resuming at step ``k`` starts at position ``k * global_batch``, so an interrupted run sees exactly
the batches the uninterrupted run would have seen, whatever the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from sdft.objectives import step_seed


def epoch_order(num_items: int, epoch: int, seed: int) -> list[int]:
    """The shuffled order of ``num_items`` items in one pass over them (a fresh permutation per epoch).

    Args:
        num_items: how many items there are.
        epoch: which pass (position // num_items).
        seed: the run's data seed.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, epoch))
    return torch.randperm(num_items, generator=generator).tolist()


def item_at(position: int, num_items: int, seed: int) -> int:
    """The index of the item shown at a run position: ``epoch_order(epoch)[position mod num_items]``."""
    epoch, slot = divmod(position, num_items)
    return epoch_order(num_items, epoch, seed)[slot]


class RunSampler(DistributedSampler):
    """Yields this rank's run positions ``start + rank, start + rank + world, ... < stop``.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping it in another one: the
    rank split is already done here.
    """

    def __init__(self, start: int, stop: int, num_replicas: int = 1, rank: int = 0) -> None:
        """
        Args:
            start: first global position (steps done so far x global batch size).
            stop: one past the last global position (max steps x global batch size).
            num_replicas: world size.
            rank: this process's global rank.
        """
        super().__init__(range(stop), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.positions = range(start + rank, stop, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)
