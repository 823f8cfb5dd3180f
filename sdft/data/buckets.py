"""Aspect-ratio buckets: training images keep their shape instead of being cropped square.

A bucket is a training size (width, height) of about ``resolution ** 2`` pixels. ``data.buckets`` is either a step
in pixels, from which :func:`generated_buckets` makes every size with sides multiples of the step, at most
``resolution ** 2`` pixels and an aspect ratio between 1:2 and 2:1 (the widest of each height), or the sizes
themselves. Each image goes to the bucket nearest its aspect ratio in its file (:func:`nearest_bucket`, distance
of log-ratios) and is resized to cover the bucket and cropped into it, centred or at random.

Every global batch is drawn from one bucket, so every device's micro-batch holds images of one size. Which bucket
is a seeded draw weighted by how many images each bucket holds, keyed by the optimizer step alone
(:meth:`BucketPlan.bucket_at`); inside it, position ``p`` shows the bucket's image ``permutation(epoch)[p mod n]``
(:func:`sdft.data.sampling.bucketed_item_at`), as :func:`sdft.data.sampling.item_at` does for a whole set. So an
example is still a function of its run position and the seed, and a resumed or multi-device run sees exactly the
batches of one uninterrupted process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from sdft.data.images import LATENT_FACTOR, original_size
from sdft.errors import UserError
from sdft.objectives import step_seed

#: a bucket's (width, height) in pixels
Size = tuple[int, int]
#: the widest aspect ratio a generated bucket has, either way (2: from 1:2 to 2:1)
MAX_ASPECT = 2.0
#: seed stream of the per-step bucket draw, apart from the examples' own draws
BUCKET_STREAM = 3


@runtime_checkable
class BucketedData(Protocol):
    """A data module that may train on aspect-ratio buckets: their (width, height), none for square crops."""

    bucket_sizes: list[Size]


def generated_buckets(resolution: int, step: int, max_aspect: float = MAX_ASPECT) -> list[Size]:
    """Every bucket of at most ``resolution ** 2`` pixels with sides multiples of ``step`` and an aspect ratio
    within ``max_aspect`` either way: for each height the widest width that fits, and each landscape bucket's
    portrait mirror. Sorted from tall to wide.

    Args:
        resolution: the side of the square training images (``data.resolution``); bounds the pixel count.
        step: the sides' granularity in pixels.
        max_aspect: the widest aspect ratio either way.
    """
    area, widest = resolution * resolution, {}
    for width in range(step, area // step + 1, step):
        height = area // width // step * step
        if step <= height <= width <= max_aspect * height:
            widest[height] = max(width, widest.get(height, 0))
    landscape = set(widest.items())
    return sorted(landscape | {(height, width) for width, height in landscape}, key=lambda size: size[0] / size[1])


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> int:
    """The index of the bucket whose aspect ratio is nearest an image's (distance of log-ratios; ties: the first).

    Args:
        size: the image's (width, height).
        buckets: the buckets' (width, height).
    """
    ratio = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda index: abs(math.log(buckets[index][0] / buckets[index][1]) - ratio))


def bucket_sizes(resolution: int, buckets: int | list[tuple[int, int]] | None) -> list[Size]:
    """The buckets that ``data.buckets`` configures, checked (none: square crops).

    Args:
        resolution: ``data.resolution``.
        buckets: ``data.buckets``: a step in pixels, a list of (width, height), or None.
    """
    if buckets is None:
        return []
    if isinstance(buckets, int):
        if buckets < LATENT_FACTOR or buckets % LATENT_FACTOR:
            raise UserError(
                f"data.buckets as a step must be a positive multiple of {LATENT_FACTOR} pixels (the VAE's factor), "
                f"got {buckets}; use e.g. 64, or list the buckets' [width, height]"
            )
        if buckets > resolution:
            raise UserError(f"data.buckets step {buckets} exceeds data.resolution {resolution}; use a smaller step")
        return generated_buckets(resolution, buckets)
    sizes = [tuple(size) for size in buckets]
    if not sizes or any(len(size) != 2 for size in sizes):
        raise UserError(f"data.buckets must list [width, height] pairs, e.g. [[64, 64], [80, 48]], got {buckets}")
    for width, height in sizes:
        if min(width, height) < LATENT_FACTOR or width % LATENT_FACTOR or height % LATENT_FACTOR:
            raise UserError(
                f"data.buckets: {width}x{height} needs sides that are positive multiples of {LATENT_FACTOR} pixels "
                f"(the VAE's factor); round them, e.g. {round_size(width)}x{round_size(height)}"
            )
    if len(set(sizes)) != len(sizes):
        raise UserError(f"data.buckets lists a size twice ({buckets}); list each [width, height] once")
    return sizes


def round_size(side: int) -> int:
    """The nearest positive multiple of the VAE's factor to a side."""
    return max(LATENT_FACTOR, LATENT_FACTOR * round(side / LATENT_FACTOR))


@dataclass(frozen=True)
class BucketPlan:
    """Which bucket each optimizer step draws from, and which images each bucket holds.

    Attributes:
        sizes: each bucket's (width, height).
        members: each bucket's images (indices into the data set), in order.
        weights: how often each bucket is drawn, relative (the instance images it holds).
        examples_per_step: the global batch: run positions per optimizer step.
        seed: seeds the per-step bucket draw.
    """

    sizes: tuple[Size, ...]
    members: tuple[tuple[int, ...], ...]
    weights: tuple[int, ...]
    examples_per_step: int
    seed: int

    @classmethod
    def of_images(cls, image_sizes: Sequence[Size], sizes: Sequence[Size], examples_per_step: int, seed: int):
        """The plan of images by their (width, height) in their files: each in the bucket nearest its aspect
        ratio; buckets left empty are never drawn.

        Args:
            image_sizes: each image's (width, height).
            sizes: the buckets' (width, height).
            examples_per_step: the global batch.
            seed: seeds the per-step bucket draw.
        """
        chosen = [nearest_bucket(size, sizes) for size in image_sizes]
        members = [tuple(i for i, bucket in enumerate(chosen) if bucket == index) for index in range(len(sizes))]
        used = [index for index, held in enumerate(members) if held]
        return cls(
            tuple(sizes[index] for index in used),
            tuple(members[index] for index in used),
            tuple(len(members[index]) for index in used),
            examples_per_step,
            seed,
        )

    def sharing(self, count: int) -> BucketPlan:
        """This plan's draw of buckets over ``count`` other images that every bucket holds (class images, cropped
        into whichever bucket the step draws)."""
        every = tuple(range(count))
        return BucketPlan(self.sizes, (every,) * len(self.sizes), self.weights, self.examples_per_step, self.seed)

    def bucket_at(self, position: int) -> int:
        """The bucket of a run position: a draw weighted by ``weights``, keyed by the position's optimizer step."""
        generator = torch.Generator().manual_seed(
            step_seed(self.seed, position // self.examples_per_step, BUCKET_STREAM)
        )
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return int(torch.multinomial(weights, 1, generator=generator))


def plan_buckets(
    images: Sequence[Image.Image], sizes: Sequence[Size], examples_per_step: int, seed: int
) -> BucketPlan | None:
    """The bucket plan of decoded images by the aspect ratio they have in their files; None without buckets.

    Args:
        images: the data set's images, as read for training (:func:`sdft.data.images.read_resized`).
        sizes: the buckets' (width, height); empty: square crops.
        examples_per_step: the global batch.
        seed: seeds the per-step bucket draw.
    """
    if not sizes:
        return None
    image_sizes = [original_size(image)[::-1] for image in images]
    return BucketPlan.of_images(image_sizes, sizes, examples_per_step, seed)
