"""Masks of drawn or generated toy-world images, for the oracle: the pixels unlike the image's border (its
background), their connected components, their centroids and radii, a little morphology, and outlines fitted to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from sdft.toyworld.draw import Placement, bounding_box, rasterize
from sdft.toyworld.shapes import outline

ANALYSIS_SIZE = 64
#: RGB distance beyond which a pixel is unlike a background colour
FOREGROUND_DISTANCE = 40.0
#: components of fewer pixels are noise
MIN_PIXELS = 4
#: the turns (degrees) at which outlines are fitted: drawn objects are turned by up to 12 degrees
ANGLES = (-12.0, -6.0, 0.0, 6.0, 12.0)


def analysed(image: Image.Image) -> np.ndarray:
    """The image as (64, 64, 3) float RGB, resized (box filter) when it has another size."""
    image = image.convert("RGB")
    if image.size != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        image = image.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def nearest_distance(pixels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) distance from each pixel of (H, W, 3) ``pixels`` to its nearest colour of (K, 3) ``colors``."""
    flat = pixels.reshape(-1, 3)
    squared = (flat**2).sum(1)[:, None] - 2 * flat @ colors.T + (colors**2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).reshape(pixels.shape[:2])


def foreground(pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels farther than ``FOREGROUND_DISTANCE`` from every colour of the outermost ring."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    ring = np.unique(np.round(ring / 2) * 2, axis=0).astype(np.float32)
    return nearest_distance(pixels, ring) > FOREGROUND_DISTANCE


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a (H, W) bool mask with at least ``MIN_PIXELS`` pixels, largest radius first.

    Every pixel starts with its own label and takes the largest label around it until nothing changes.
    """
    left, top, right, bottom = bounding_box(mask)
    crop = mask[top:bottom, left:right]
    height, width = crop.shape
    labels = np.where(crop, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:
        padded = np.pad(labels, 1)
        spread = labels.copy()
        for dy, dx in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
            np.maximum(spread, padded[dy : dy + height, dx : dx + width], out=spread)
        spread *= crop
        if np.array_equal(spread, labels):
            break
        labels = spread
    found = []
    for label in np.unique(labels[labels > 0]):
        part = np.zeros_like(mask)
        part[top:bottom, left:right] = labels == label
        found.append(part)
    return sorted((part for part in found if part.sum() >= MIN_PIXELS), key=lambda part: -radius_of(part))


def centroid_of(mask: np.ndarray) -> tuple[float, float]:
    """The (x, y) centroid of a mask in pixels, pixel centres at half-integers."""
    rows, columns = np.nonzero(mask)
    return float(columns.mean()) + 0.5, float(rows.mean()) + 0.5


def radius_of(mask: np.ndarray) -> float:
    """The distance from a mask's centroid to its farthest pixel's far side, in pixels."""
    rows, columns = np.nonzero(mask)
    x, y = centroid_of(mask)
    return float(np.hypot(columns + 0.5 - x, rows + 0.5 - y).max()) + 0.5


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask less its 4-connected edge pixels."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def dilated(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-connected neighbours."""
    padded = np.pad(mask, 1)
    return mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def shape_fits(mask: np.ndarray, shapes: Sequence[str]) -> dict[str, tuple[float, Placement]]:
    """Each shape's best overlap with the mask (intersection over union), over the turns of ``ANGLES``, with the
    outline placed at the mask's centroid and radius; and the placement that gives it.

    Args:
        mask: (H, W) bool, one object.
        shapes: the candidate shapes.
    """
    side = mask.shape[0]
    x, y = centroid_of(mask)
    radius = radius_of(mask)
    fits: dict[str, tuple[float, Placement]] = {}
    for shape in shapes:
        unit = outline(shape)
        for angle in (0.0,) if shape in ("circle", "ring") else ANGLES:
            placement = Placement(x / side, y / side, radius / side, angle)
            template = rasterize(unit, placement, side)
            overlap = float((template & mask).sum() / (template | mask).sum())
            if shape not in fits or overlap > fits[shape][0]:
                fits[shape] = (overlap, placement)
    return fits


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: every pixel that no 4-connected path of unmasked pixels joins to the border."""
    outside = np.zeros_like(mask)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        outside[edge] = ~mask[edge]
    while True:
        grown = dilated(outside) & ~mask
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown
