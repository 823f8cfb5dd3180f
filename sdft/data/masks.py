"""Loss masks: how much each pixel of a training image counts in its loss, so a subject's background is not learnt.

A mask is a greyscale picture the size of its image: white where the subject is, black where the background is,
grey between (soft edges). An image's mask is, first found: the file its ``metadata.jsonl`` row names under ``mask``
(captioned sets), ``<stem>_mask.png`` beside it (:func:`sdft.data.images.mask_file`), or its own alpha channel
(a cut-out photo). An image without one counts every pixel, as without masks. The mask is resized, cropped and
mirrored exactly as its image, and each pixel's loss weight is ``mask_weight + (1 - mask_weight) * mask``: 1 on the
subject, ``data.mask_weight`` on the background. Class images (prior preservation) are never masked. The loss
averages each example's errors under these weights (:func:`sdft.objectives.masked_mse`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdft.data.images import (
    ALPHA_MODES,
    MASK_SUFFIX,
    ImageDataError,
    mask_file,
    original_size,
    resize_to_cover,
)
from sdft.errors import UserError

NAMES_SHOWN = 5


def check_mask_weight(mask_weight: float | None) -> None:
    """Raise, naming ``data.mask_weight``, unless it is unset or a weight in [0, 1]."""
    if mask_weight is not None and not 0.0 <= mask_weight <= 1.0:
        raise UserError(
            f"data.mask_weight is the loss weight of background pixels, in [0, 1] (0: the background is not learnt), "
            f"got {mask_weight}; leave it unset to train without masks"
        )


def read_masks(
    paths: list[Path], images: list[Image.Image], named: dict[Path, Path], folder: Path
) -> list[Image.Image | None]:
    """Each image's mask (:func:`read_mask`), None for an image without one (warned about by name); an error when
    no image has one.

    Args:
        paths: the image files, distinct.
        images: each file's image as read for training.
        named: image file -> the mask file its metadata row names.
        folder: the data folder, for messages.
    """
    masks = [read_mask(path, image, named.get(path)) for path, image in zip(paths, images, strict=True)]
    unmasked = [path.name for path, mask in zip(paths, masks, strict=True) if mask is None]
    if len(unmasked) == len(paths):
        raise UserError(
            f"data.mask_weight is set but no image in {folder} has a mask; write <stem>{MASK_SUFFIX} "
            f"beside each image (white: subject, black: background) or give the images an alpha channel (sdft "
            f"prepare --masks true writes masks from it), or leave data.mask_weight unset"
        )
    if unmasked:
        shown = ", ".join(unmasked[:NAMES_SHOWN]) + ("" if len(unmasked) <= NAMES_SHOWN else ", ...")
        warnings.warn(
            f"{len(unmasked)} of {len(paths)} images in {folder} have no mask and train on every pixel: {shown}",
            UserWarning,
            stacklevel=2,
        )
    return masks


def read_mask(path: Path, image: Image.Image, named: Path | None = None) -> Image.Image | None:
    """The mask of an image, 8-bit greyscale, resized as the image was; None when it has none.

    Args:
        path: the image file.
        image: the image as read for training (:func:`sdft.data.images.read_resized`).
        named: the mask file its metadata row names, which comes before the others.
    """
    source = mask_file(path) if named is None else named
    found = named is not None or source.is_file()
    mask = load_mask(source, path, original_size(image)) if found else load_alpha(path)
    if mask is None or mask.size == image.size:
        return mask
    return mask.resize(image.size, Image.Resampling.BICUBIC)  # the filter that resized the image


def load_mask(mask: Path, image: Path, size: tuple[int, int]) -> Image.Image:
    """A mask file, upright and greyscale; errors name it and the fix.

    Args:
        mask: the mask file.
        image: its image, for messages.
        size: the image's (height, width) in its file, which the mask must have.
    """
    try:
        with Image.open(mask) as opened:
            opened.load()
            grey = ImageOps.exif_transpose(opened).convert("L")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDataError(
            f"mask {mask} could not be read ({error}); write it as a greyscale PNG the size of {image} (white: "
            f"subject, black: background), or remove it"
        ) from error
    height, width = size
    if grey.size != (width, height):
        raise ImageDataError(
            f"mask {mask} is {grey.width}x{grey.height} but its image {image} is {width}x{height}; a mask must have "
            f"its image's size: write it again at {width}x{height}"
        )
    return grey


def load_alpha(path: Path) -> Image.Image | None:
    """An image file's alpha channel (8-bit, upright), None when it has no transparency."""
    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        return None
    return image.convert("RGBA").getchannel("A")


@dataclass(frozen=True)
class LossMasks:
    """The masks of a list of images and the weight of their background: each example's pixel loss weights.

    Attributes:
        masks: each image's mask (8-bit greyscale, the size of the image as read), None for an image without one.
        background_weight: the loss weight of a background pixel (``data.mask_weight``).
    """

    masks: list[Image.Image | None]
    background_weight: float

    @classmethod
    def unmasked(cls, count: int) -> LossMasks:
        """Masks of ``count`` images that count every pixel (class images)."""
        return cls([None] * count, 1.0)

    def weights(self, index: int, size: tuple[int, int], crop_top_left: tuple[int, int], flipped: bool) -> torch.Tensor:
        """The pixel loss weights (1, H, W) of image ``index`` as an example shows it, in [``background_weight``, 1].

        Args:
            index: which image.
            size: the (width W, height H) of the example's crop (a square, or its aspect-ratio bucket).
            crop_top_left: the crop's (top, left) corner in the resized image as shown (mirrored when flipped).
            flipped: whether the example is mirrored.
        """
        mask = self.masks[index]
        width, height = size
        if mask is None:
            return torch.ones(1, height, width)
        mask = resize_to_cover(mask, size)  # as the image is (already at its size for square crops)
        if flipped:
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        top, left = crop_top_left
        crop = np.array(mask.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
        return self.background_weight + (1.0 - self.background_weight) * torch.from_numpy(crop)[None]
