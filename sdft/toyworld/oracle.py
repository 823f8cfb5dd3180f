"""The oracle: exact read-outs of what a toy-world image shows, the judge of a benchmark, never a part of the system
it judges.

Nothing in training, evaluation callbacks or checkpoint selection may call this module: it knows the world's palette,
shapes and layout, which a real metric (CLIP-I, CLIP-T, DINO) does not, and it exists to say how good the measured
selection was. It reads drawn images (where :func:`sdft.toyworld.draw.render` gives the true masks, or without
them) and generated ones alike:

- the objects are the pixels unlike every colour on the image's outermost ring of pixels (the background's colours;
  objects are drawn clear of the border), split into 8-connected components; the main object is the one of largest
  radius, the second object the next;
- the background is the drawn background whose mean colour is nearest the mean of the other pixels;
- an object's colour is the named colour most of its pixels are near; its pattern comes from the share and layout
  of the pixels nearer the darkened colour; its shape is the outline that, placed at its centroid and radius and
  turned a little, covers it best (intersection over union); its size is its radius; its position its centroid;
- the relation is the direction from the second object's centroid to the main object's.

Images of another size are analysed at 64 pixels. Accuracy on drawn scenes is pinned by ``tests/test_toyworld.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdft.toyworld.backgrounds import typical_color
from sdft.toyworld.draw import Placement, bounding_box, rasterize, render
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, SHAPES, SUBJECT_SHAPES, Scene, shade
from sdft.toyworld.shapes import EYE_WHITE, HAT, outline

if TYPE_CHECKING:
    from sdft.toyworld.subjects import Subject

ANALYSIS_SIZE = 64
#: RGB distance beyond which a pixel is unlike a background colour, or unlike a named colour
FOREGROUND_DISTANCE, COLOR_DISTANCE = 40.0, 60.0
#: RGB distance within which a pixel has the colour of a subject's part (world shades come no closer than 60 to the
#: hat's near-black)
PART_DISTANCE = 45.0
#: components of fewer pixels are noise
MIN_PIXELS = 4
#: a radius above this fraction of the side is large (small objects reach 0.13, large ones start at 0.19)
LARGE_RADIUS = 0.16
#: shares of pattern-coloured pixels: below the first the object is plain, below the second (and not striped) dotted
PLAIN_SHARE, DOTTED_SHARE = 0.08, 0.38
#: the stripe test: the largest variance of the pattern share across bands, over the angles tried (drawn stripes
#: reach 0.15 or more, checks and dots 0.12 or less)
STRIPE_VARIANCE = 0.12
ANGLES = (-12.0, -6.0, 0.0, 6.0, 12.0)
ATTRIBUTE_KEYS = tuple(field.name for field in fields(Scene))


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


def read_background(pixels: np.ndarray, objects: np.ndarray) -> str:
    """The background whose typical colour is nearest the mean of the pixels off the objects (and their edges)."""
    off = ~dilated(objects)
    mean = pixels[off].mean(axis=0) if off.any() else pixels.reshape(-1, 3).mean(axis=0)
    return min(BACKGROUNDS, key=lambda name: float(np.linalg.norm(np.array(typical_color(name)) - mean)))


def read_color(pixels: np.ndarray, mask: np.ndarray) -> str:
    """The named colour most of the object's pixels lie near (within ``COLOR_DISTANCE``); failing that, the name
    whose colour or shade is nearest most pixels."""
    names = list(COLORS)
    palette = np.array([COLORS[name] for name in names], np.float32)
    inside = pixels[mask]
    distances = np.linalg.norm(inside[:, None, :] - palette[None], axis=2)
    near = distances.min(axis=1) < COLOR_DISTANCE
    if near.any():
        return names[int(np.bincount(distances[near].argmin(axis=1), minlength=len(names)).argmax())]
    shades = np.array([shade(name) for name in names], np.float32)
    both = np.minimum(distances, np.linalg.norm(inside[:, None, :] - shades[None], axis=2))
    return names[int(np.bincount(both.argmin(axis=1), minlength=len(names)).argmax())]


def read_pattern(pixels: np.ndarray, mask: np.ndarray, color: str) -> str:
    """Plain, dotted, striped or checkered, from the pixels (off the object's edge) nearer the shade than the colour."""
    inner = eroded(mask)
    inner = inner if inner.sum() >= 8 else mask
    base, ink = np.array(COLORS[color], np.float32), np.array(shade(color), np.float32)
    inked = np.linalg.norm(pixels - ink, axis=2) < np.linalg.norm(pixels - base, axis=2)
    share = float(inked[inner].mean())
    if share < PLAIN_SHARE:
        return "plain"
    if band_variance(inked, inner) > STRIPE_VARIANCE:
        return "striped"
    return "dotted" if share < DOTTED_SHARE else "checkered"


def band_variance(inked: np.ndarray, inner: np.ndarray) -> float:
    """The largest variance, over ``ANGLES``, of the inked share of 1-pixel bands across the object: high for
    stripes (bands alternate), low for checks (every band half inked)."""
    rows, columns = np.nonzero(inner)
    values = inked[rows, columns].astype(float)
    best = 0.0
    for angle in ANGLES:
        theta = math.radians(angle)
        bands = np.floor(-columns * math.sin(theta) + rows * math.cos(theta)).astype(int)
        bands -= bands.min()
        counts = np.bincount(bands)
        shares = np.bincount(bands, weights=values)[counts > 0] / counts[counts > 0]
        weights = counts[counts > 0] / counts.sum()
        best = max(best, float((weights * (shares - values.mean()) ** 2).sum()))
    return best


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask less its 4-connected edge pixels."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def dilated(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-connected neighbours."""
    padded = np.pad(mask, 1)
    return mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def read_shape(mask: np.ndarray, shapes: Sequence[str] = SHAPES) -> tuple[str, float]:
    """The shape whose outline, placed at the mask's centroid and radius and turned by one of ``ANGLES``, overlaps
    it best, and that overlap (intersection over union).

    Args:
        mask: (H, W) bool, one object.
        shapes: the candidate shapes (world shapes and ``creature``).
    """
    side = mask.shape[0]
    x, y = centroid_of(mask)
    radius = radius_of(mask)
    overlaps = {}
    for shape in shapes:
        unit = outline(shape)
        for angle in (0.0,) if shape in ("circle", "ring") else ANGLES:
            template = rasterize(unit, Placement(x / side, y / side, radius / side, angle), side)
            overlaps[shape] = max(overlaps.get(shape, 0.0), float((template & mask).sum() / (template | mask).sum()))
    best = max(overlaps, key=overlaps.get)
    return best, overlaps[best]


def read_position(mask: np.ndarray) -> str:
    """Left, centre or right by the centroid's third of the image."""
    x = centroid_of(mask)[0] / mask.shape[1]
    return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"


def read_relation(main: np.ndarray, second: np.ndarray) -> str:
    """How the main object stands to the second: ``next to`` when they are farther apart across than down."""
    (x, y), (second_x, second_y) = centroid_of(main), centroid_of(second)
    if abs(x - second_x) >= abs(y - second_y):
        return "next to"
    return "above" if y < second_y else "below"


def read_attributes(
    image: Image.Image, masks: Sequence[np.ndarray | None] | None = None, keys: Sequence[str] | None = None
) -> dict[str, str]:
    """The attributes the image shows, keyed as :meth:`sdft.toyworld.scenes.Scene.attributes` keys them: the
    background always, the main object's when one is found, the second object's and the relation when two are.

    Args:
        image: a drawn or generated image.
        masks: the true masks of the main and second object (a drawing's ``mask`` and ``second_mask``), when
            known; None segments the image.
        keys: the attributes to read (the others are not computed); None for all.
    """
    pixels = analysed(image)
    objects = components(foreground(pixels)) if masks is None else [mask for mask in masks if mask is not None]
    wanted = set(ATTRIBUTE_KEYS if keys is None else keys)
    found = {}
    if "background" in wanted:
        occupied = np.zeros(pixels.shape[:2], bool)
        for mask in objects:
            occupied |= mask
        found["background"] = read_background(pixels, occupied)
    if objects:
        found.update(read_object(pixels, objects[0], wanted))
    if len(objects) > 1:
        second = read_object(pixels, objects[1], {key.removeprefix("second_") for key in wanted}, SHAPES)
        found.update({f"second_{key}": value for key, value in second.items() if key in ("shape", "color")})
        if "relation" in wanted:
            found["relation"] = read_relation(objects[0], objects[1])
    return found


def read_object(
    pixels: np.ndarray, mask: np.ndarray, keys: set[str], shapes: Sequence[str] = SHAPES + SUBJECT_SHAPES
) -> dict[str, str]:
    """The shape, colour, pattern, size and position of one object, those of them in ``keys``.

    Args:
        pixels: (H, W, 3) the analysed image.
        mask: (H, W) bool, the object.
        keys: the attributes to read.
        shapes: the candidate shapes.
    """
    found = {}
    if keys & {"color", "pattern"}:
        found["color"] = read_color(pixels, mask)
    if "pattern" in keys:
        found["pattern"] = read_pattern(pixels, mask, found["color"])
    if "shape" in keys:
        found["shape"] = read_shape(mask, shapes)[0]
    if "size" in keys:
        found["size"] = "large" if radius_of(mask) / pixels.shape[0] > LARGE_RADIUS else "small"
    if "position" in keys:
        found["position"] = read_position(mask)
    return found


def score(
    image: Image.Image, expected: dict[str, str], masks: Sequence[np.ndarray | None] | None = None
) -> dict[str, bool]:
    """Whether the image shows each expected attribute (a :func:`sdft.toyworld.scenes.parse_caption` result);
    only the expected attributes are read.

    Args:
        image: a drawn or generated image.
        expected: attribute -> value, e.g. ``{"color": "red", "background": "brick"}``.
        masks: the true object masks when known (see :func:`read_attributes`).
    """
    found = read_attributes(image, masks, keys=list(expected))
    return {key: found.get(key) == value for key, value in expected.items()}


def subject_present(image: Image.Image, subject: Subject) -> float:
    """How surely the image shows the novel subject, in [0, 1]: the geometric mean of the silhouette's overlap with
    the creature's and, for each of its colours (hat, eyes, patterned body), the share of the main object's pixels in
    that colour relative to half the share an unjittered drawing of the subject has (capped at 1). World objects have
    neither the hat's near-black nor the eyes' white, so they score 0.

    Args:
        image: a drawn or generated image.
        subject: the subject to look for.
    """
    pixels = analysed(image)
    objects = components(foreground(pixels))
    if not objects:
        return 0.0
    reference = render(subject.scene("grey"), ANALYSIS_SIZE)
    expected = color_shares(analysed(reference.image), reference.mask, subject.color) / 2
    observed = color_shares(pixels, objects[0], subject.color)
    ratios = np.minimum(1.0, observed / expected)
    overlap = read_shape(objects[0], ("creature",))[1]
    return float(np.prod([*ratios, max(overlap, 0.0)]) ** (1 / (len(ratios) + 1)))


def color_shares(pixels: np.ndarray, mask: np.ndarray, color: str) -> np.ndarray:
    """(3,) the shares of a mask's pixels within ``PART_DISTANCE`` of the hat's colour, of the eyes' white, and of
    the body's colour or shade."""
    inside = pixels[mask]
    groups = ([HAT], [EYE_WHITE], [COLORS[color], shade(color)])
    return np.array(
        [
            float((nearest_distance(inside[None], np.array(group, np.float32)) < PART_DISTANCE).mean())
            for group in groups
        ]
    )


def subject_likeness(image: Image.Image, subject: Subject) -> dict[str, float]:
    """How much of the novel subject the image's main object shows, feature by feature, each in [0, 1]: its body
    colour and pattern (1 when read as the subject's), the creature's silhouette (intersection over union), and the
    hat's and the eyes' colours (their shares against half a drawing's, capped at 1); ``likeness`` is their mean.
    Unlike :func:`subject_present`, which wants every feature, a subject learnt in part (its striped orange body
    without a hat) scores in part, as a partly learnt subject looks to a person.

    Args:
        image: a drawn or generated image.
        subject: the subject to look for (its colour is the one asked for).
    """
    pixels = analysed(image)
    objects = components(foreground(pixels))
    if not objects:
        return dict.fromkeys(("color", "pattern", "silhouette", "hat", "eyes", "likeness"), 0.0)
    main = objects[0]
    reference = render(subject.scene("grey"), ANALYSIS_SIZE)
    expected = color_shares(analysed(reference.image), reference.mask, subject.color) / 2
    hat, eyes, _ = np.minimum(1.0, color_shares(pixels, main, subject.color) / expected)
    color = read_color(pixels, main)
    features = {
        "color": float(color == subject.color),
        "pattern": float(read_pattern(pixels, main, subject.color) == subject.pattern),
        "silhouette": max(read_shape(main, ("creature",))[1], 0.0),
        "hat": float(hat),
        "eyes": float(eyes),
    }
    return {**features, "likeness": float(np.mean(list(features.values())))}
