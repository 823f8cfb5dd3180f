"""Step-indexed sampling: example ``p`` of a run is a pure function of ``p`` and the seed.

A run that sees ``max_steps`` optimizer steps consumes positions ``0 .. max_steps * global_batch``. Position ``p``
is image ``permutation(epoch)[p mod n]`` with its own seeded augmentation, and rank ``r`` of ``w`` takes positions
``p = r (mod w)``. Resuming at step ``k`` starts at position ``k * global_batch``, so an interrupted run sees exactly
the batches the uninterrupted run would have seen, whatever the number of data-loader workers. With aspect-ratio
buckets (:mod:`sdft.data.buckets`) each step's global batch comes from one bucket, drawn from the seed and the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from sdft.caching import content_key
from sdft.data.buckets import BucketPlan, Size
from sdft.data.images import original_size, prepare_sized_crop
from sdft.data.masks import LossMasks
from sdft.errors import UserError
from sdft.objectives import step_seed

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

#: one training example: pixels (3, R, R) in [-1, 1] under ``pixel_values`` ((3, H, W) in an aspect-ratio bucket),
#: its prompt under ``prompts``, the image's size in its file and the crop's top-left corner, (2,) each, under
#: ``original_size`` and ``crop_top_left``, its run position under ``position`` (the key of its training noise), under
#: ``image_key`` the key of its exact pixels for a latent cache (``""``: not worth caching; the key holds the pixels'
#: shape, so another bucket is another key), and, when its data module reads masks, each pixel's loss weight
#: (1, H, W) under ``loss_mask`` (see :mod:`sdft.data.masks`)
Example = dict[str, torch.Tensor | str]


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


def bucketed_item_at(buckets: BucketPlan, position: int, seed: int) -> tuple[int, Size]:
    """The index of the image shown at a run position and the (width, height) it is cropped to: the position's
    bucket (:meth:`BucketPlan.bucket_at`), and in it ``item_at`` over the bucket's images, in an order of its own.

    Args:
        buckets: the images' buckets and the per-step draw.
        position: the run position.
        seed: the data set's seed.
    """
    bucket = buckets.bucket_at(position)
    members = buckets.members[bucket]
    return members[item_at(position, len(members), step_seed(seed, bucket))], buckets.sizes[bucket]


class RunSampler(DistributedSampler):
    """Yields this rank's run positions ``start + rank, start + rank + world, ... < stop``.

    Its length is that of the whole run on this rank (positions ``rank, rank + world, ... < stop``), not of what
    is left: Lightning counts a resumed epoch from the batches already done, so the epoch (the run) ends at the
    last step, and a resumed run never starts the positions over. It is a ``DistributedSampler`` so that Lightning
    keeps it under DDP instead of wrapping it in another one: the rank split is already done here.
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
        self.run_length = len(range(rank, stop, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return self.run_length


def run_sampler(trainer: Trainer, batch_size: int) -> RunSampler:
    """This rank's run positions: from the steps already done to ``trainer.max_steps``, in global batches.

    Args:
        trainer: the trainer the data module is attached to.
        batch_size: examples per batch on each device.
    """
    check_max_steps(trainer.max_steps)
    per_step = examples_per_step(trainer, batch_size)
    return RunSampler(
        trainer.global_step * per_step, trainer.max_steps * per_step, trainer.world_size, trainer.global_rank
    )


def check_max_steps(max_steps: int) -> None:
    """Raise a :class:`UserError` naming ``trainer.max_steps`` unless it is a positive number of steps."""
    if max_steps < 1:
        unset = " (not set)" if max_steps == -1 else ""  # Lightning's default
        raise UserError(
            f"trainer.max_steps must be a positive number of optimizer steps, got {max_steps}{unset}; "
            "sdft trains for a number of steps, e.g. --trainer.max_steps 1000"
        )


def examples_per_step(trainer: Trainer, batch_size: int) -> int:
    """The global batch: examples per optimizer step over every device and accumulated micro-batch."""
    return batch_size * trainer.accumulate_grad_batches * trainer.world_size


class RunLoader(DataLoader):
    """The training loader: its position is a function of the global step, so it resumes by construction.

    It is stateful in Lightning's sense (``state_dict`` / ``load_state_dict``) so that Lightning knows a resume
    mid-run is exact; the state is the global batch size, and resuming with another one is refused, since the
    steps already done would then stand for other examples.
    """

    def __init__(self, dataset: Dataset, sampler: RunSampler, examples_per_step: int, **kwargs) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.examples_per_step = examples_per_step

    def state_dict(self) -> dict[str, int]:
        return {"examples_per_step": self.examples_per_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = state.get("examples_per_step", self.examples_per_step)
        if saved != self.examples_per_step:
            raise UserError(
                f"the checkpoint was written with {saved} examples per optimizer step and this run has "
                f"{self.examples_per_step} (data.batch_size x trainer.accumulate_grad_batches x devices); resume "
                "with the batch size, accumulation and device count of the run that wrote it"
            )


def train_loader(
    dataset: Dataset, trainer: Trainer, batch_size: int, num_workers: int, collate_fn: Callable = default_collate
) -> DataLoader:
    """The training loader of a data module: this rank's run positions of ``dataset`` from :func:`run_sampler`.

    Args:
        dataset: maps run positions to examples.
        trainer: the trainer the data module is attached to.
        batch_size: examples per batch on each device.
        num_workers: data-loader worker processes.
        collate_fn: batches a list of examples.
    """
    return RunLoader(
        dataset,
        run_sampler(trainer, batch_size),
        examples_per_step(trainer, batch_size),
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


@dataclass(frozen=True)
class Augmented:
    """An image as a run position shows it.

    Attributes:
        index: which image.
        pixels: the crop (3, H, W) in [-1, 1], flipped or not (H = W = R without buckets).
        crop_top_left: the crop's (top, left) corner in the resized image as shown (mirrored when flipped).
        flipped: whether the crop is mirrored.
        generator: the position's generator, for further draws (a prompt template, a caption dropout).
    """

    index: int
    pixels: torch.Tensor
    crop_top_left: tuple[int, int]
    flipped: bool
    generator: torch.Generator


def augmented_image_at(
    images: list[Image.Image],
    position: int,
    seed: int,
    resolution: int,
    center_crop: bool,
    flip_probability: float,
    buckets: BucketPlan | None = None,
) -> Augmented:
    """The image a run position shows, augmented.

    The image is ``item_at(position)`` (with buckets, :func:`bucketed_item_at`); the flip and crop are drawn from a
    generator seeded by (seed, position), which is returned for further per-position draws.

    Args:
        images: decoded images, short side at ``resolution``.
        position: the run position.
        seed: the run's data seed.
        resolution: side of the square crop.
        center_crop: crop the centre; otherwise a random crop.
        flip_probability: probability of a left-right mirror.
        buckets: crop each image into its aspect-ratio bucket, drawn per step; None: square crops.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, position, 1))
    flip = bool(torch.rand((), generator=generator) < flip_probability)
    if buckets is None:
        index, size = item_at(position, len(images), seed), (resolution, resolution)
    else:
        index, size = bucketed_item_at(buckets, position, seed)
    pixels, crop_top_left = prepare_sized_crop(images[index], size, center_crop, flip, generator)
    return Augmented(index, pixels, crop_top_left, flip, generator)


class AugmentedImages(Dataset):
    """Run position -> one augmented example (see :data:`Example`).

    Images are decoded once and kept with their short side at the resolution; the image, its crop and flip, and
    then (with ``templates``) the prompt template and (with ``caption_dropout``) whether the prompt is dropped are
    drawn from a generator seeded by the position, so an example depends on the position alone.
    """

    def __init__(
        self,
        images: list[Image.Image],
        prompts: list[str],
        resolution: int,
        center_crop: bool,
        flip_probability: float,
        seed: int,
        templates: tuple[str, ...] = (),
        caption_dropout: float = 0.0,
        loss_masks: LossMasks | None = None,
        buckets: BucketPlan | None = None,
    ) -> None:
        """
        Args:
            images: decoded images, short side at ``resolution``.
            prompts: each image's prompt (its caption, or with ``templates`` the phrase that fills their ``{}``).
            resolution: side of the square crops.
            center_crop: crop the centre; otherwise a random crop per position.
            flip_probability: probability of a left-right mirror per position.
            seed: seeds the order and augmentation.
            templates: prompt templates, one drawn per position; empty uses the prompts as they are.
            caption_dropout: probability per position that the prompt is replaced by ``""``.
            loss_masks: the images' masks, cropped and mirrored with each example into its ``loss_mask``; None:
                examples carry no ``loss_mask``.
            buckets: crop each example into its aspect-ratio bucket (:mod:`sdft.data.buckets`); None: square crops.
        """
        self.images, self.prompts, self.resolution = images, prompts, resolution
        self.center_crop, self.flip_probability, self.seed = center_crop, flip_probability, seed
        self.templates, self.caption_dropout, self.loss_masks = templates, caption_dropout, loss_masks
        self.buckets = buckets

    def __len__(self) -> int:
        return len(self.images)

    def possible_prompts(self) -> set[str]:
        """Every prompt an example can carry: each prompt in each template, and ``""`` where captions drop."""
        prompts = {template.format(prompt) for template in self.templates for prompt in self.prompts}
        return (prompts or set(self.prompts)) | ({""} if self.caption_dropout else set())

    def __getitem__(self, position: int) -> Example:
        shown = augmented_image_at(
            self.images, position, self.seed, self.resolution, self.center_crop, self.flip_probability, self.buckets
        )
        prompt, generator = self.prompts[shown.index], shown.generator
        if self.templates:
            prompt = self.templates[int(torch.randint(len(self.templates), (), generator=generator))].format(prompt)
        if self.caption_dropout and torch.rand((), generator=generator) < self.caption_dropout:
            prompt = ""
        example = {
            "pixel_values": shown.pixels,
            "prompts": prompt,
            "original_size": torch.tensor(original_size(self.images[shown.index])),
            "crop_top_left": torch.tensor(shown.crop_top_left),
            "position": torch.tensor(position),
            # random crops rarely repeat: not worth a cache entry
            "image_key": content_key(shown.pixels) if self.center_crop else "",
        }
        if self.loss_masks is not None:
            size = (shown.pixels.shape[2], shown.pixels.shape[1])
            example["loss_mask"] = self.loss_masks.weights(shown.index, size, shown.crop_top_left, shown.flipped)
        return example
