"""Step-indexed sampling: example ``p`` of a run is a pure function of ``p`` and the seed.

A run that sees ``max_steps`` optimizer steps consumes positions ``0 .. max_steps * global_batch``. Position ``p``
is image ``permutation(epoch)[p mod n]`` with its own seeded augmentation, and rank ``r`` of ``w`` takes positions
``p = r (mod w)``. Resuming at step ``k`` starts at position ``k * global_batch``, so an interrupted run sees exactly
the batches the uninterrupted run would have seen, whatever the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from sdft.data.images import prepare_image
from sdft.objectives import step_seed

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


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


def run_sampler(trainer: Trainer, batch_size: int) -> RunSampler:
    """This rank's run positions: from the steps already done to ``trainer.max_steps``, in global batches.

    Args:
        trainer: the trainer the data module is attached to.
        batch_size: examples per batch on each device.
    """
    if trainer.max_steps < 1:
        raise ValueError("trainer.max_steps is not set; sdft trains for a number of steps, e.g. max_steps: 1000")
    per_step = batch_size * trainer.accumulate_grad_batches * trainer.world_size
    return RunSampler(
        trainer.global_step * per_step, trainer.max_steps * per_step, trainer.world_size, trainer.global_rank
    )


def augmented_image_at(
    images: list[Image.Image],
    position: int,
    seed: int,
    resolution: int,
    center_crop: bool,
    flip_probability: float,
) -> tuple[int, torch.Tensor, torch.Generator]:
    """The image a run position shows, augmented: ``(its index, pixels (3, R, R) in [-1, 1], generator)``.

    The image is ``item_at(position)``; the flip and crop are drawn from a generator seeded by (seed, position),
    which is returned for further per-position draws (a prompt template, a caption dropout).

    Args:
        images: decoded images, short side at ``resolution``.
        position: the run position.
        seed: the run's data seed.
        resolution: side of the square crop.
        center_crop: crop the centre; otherwise a random crop.
        flip_probability: probability of a left-right mirror.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, position, 1))
    flip = bool(torch.rand((), generator=generator) < flip_probability)
    index = item_at(position, len(images), seed)
    return index, prepare_image(images[index], resolution, center_crop, flip, generator), generator
