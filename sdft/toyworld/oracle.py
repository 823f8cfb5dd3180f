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

A novel subject (:class:`sdft.toyworld.subjects.Subject`) is read feature by feature on the main object
(:func:`read_subject`, strict; :func:`subject_likeness`, graded): its silhouette is the object less the pixels of
any accessory's colour, matched against the world's outlines and the subjects' figures; the best-fitting figure,
placed where it fits, says where the body, the accessory and the eyes should be; the body's pattern is the pattern
whose marks, at their known spacing in that frame, predict its inked pixels best; the accessory and the eyes are
read from how much of where they belong has their colour. No world object has an accessory's or the eyes' colour.

Images of another size are analysed at 64 pixels. Accuracy on drawn scenes is pinned by ``tests/test_toyworld.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image

from sdft.toyworld.backgrounds import typical_color
from sdft.toyworld.draw import Placement, rasterize, render, unit_coordinates
from sdft.toyworld.masks import (
    ANALYSIS_SIZE,
    ANGLES,
    analysed,
    centroid_of,
    components,
    dilated,
    eroded,
    filled,
    foreground,
    nearest_distance,
    radius_of,
    shape_fits,
)
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, PATTERNS, SHAPES, SUBJECT_SHAPES, Scene, shade
from sdft.toyworld.shapes import (
    ACCESSORY_COLORS,
    EYE_WHITE,
    HAT,
    PATTERN_PERIODS,
    Outline,
    body_parts,
    body_to_figure,
    pattern_ink,
)

if TYPE_CHECKING:
    from sdft.toyworld.subjects import Subject

#: RGB distance beyond which a pixel is unlike a named colour
COLOR_DISTANCE = 60.0
#: RGB distance within which a pixel has the colour of a subject's part (world colours, shades and backgrounds come
#: no closer than 50 to any of them; see ``sdft.toyworld.shapes.HAT``)
PART_DISTANCE = 45.0
#: the colours of subjects' parts
PART_COLORS = (HAT, EYE_WHITE, *ACCESSORY_COLORS.values())
#: the features of a subject the oracle reads
SUBJECT_FEATURES = ("color", "pattern", "silhouette", "accessory", "eyes")
#: the overlap with its figure's outline from which a silhouette is a subject's: the subjects' photos overlap theirs
#: by 0.78 or more on the photos' backgrounds and 0.66 or more on any (384 each, measured); below 0.6 an object is
#: no figure, whichever outline fits it best
SILHOUETTE_IOU = 0.6
#: the share of an unjittered drawing's pixels in a part's colour where the part belongs (:func:`part_share`) from
#: which the part is worn: the subjects' photos reach 0.5 or more for their accessory and eyes, world scenes and
#: subjects without the part 0.0 (measured; see ``tests/test_toyworld_subjects.py``)
PART_SHARE = 0.4
#: the offsets per period at which a subject's body pattern is tried
PATTERN_PHASES = 6
#: a radius above this fraction of the side is large (small objects reach 0.13, large ones start at 0.19)
LARGE_RADIUS = 0.16
#: shares of pattern-coloured pixels: below the first the object is plain, below the second (and not striped) dotted
PLAIN_SHARE, DOTTED_SHARE = 0.08, 0.38
#: the stripe test: the largest variance of the pattern share across bands, over the angles tried (drawn stripes
#: reach 0.15 or more, checks and dots 0.12 or less)
STRIPE_VARIANCE = 0.12
ATTRIBUTE_KEYS = tuple(field.name for field in fields(Scene))


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
    inked = inked_pixels(pixels, color)
    share = float(inked[inner].mean())
    if share < PLAIN_SHARE:
        return "plain"
    if band_variance(inked, inner) > STRIPE_VARIANCE:
        return "striped"
    return "dotted" if share < DOTTED_SHARE else "checkered"


def inked_pixels(pixels: np.ndarray, color: str) -> np.ndarray:
    """(H, W) bool: the pixels nearer the named colour's shade (its pattern's ink) than the colour itself."""
    base, ink = np.array(COLORS[color], np.float32), np.array(shade(color), np.float32)
    return np.linalg.norm(pixels - ink, axis=2) < np.linalg.norm(pixels - base, axis=2)


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


def read_shape(mask: np.ndarray, shapes: Sequence[str] = SHAPES) -> tuple[str, float]:
    """The shape whose outline, placed at the mask's centroid and radius and turned by one of ``ANGLES``, overlaps
    it best, and that overlap (intersection over union).

    Args:
        mask: (H, W) bool, one object.
        shapes: the candidate shapes (world shapes and subject figures).
    """
    fits = shape_fits(mask, shapes)
    best = max(fits, key=lambda shape: fits[shape][0])
    return best, fits[best][0]


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


# -- novel subjects ---------------------------------------------------------------------------------------------------


class SubjectView(NamedTuple):
    """What the image's main object shows of a subject's figure.

    Args:
        main: (H, W) bool, the main object.
        silhouette: (H, W) bool, the main object less what any subject wears (the pixels of, or next to, an
            accessory's colour), with the holes that parts' colours leave filled.
        fits: each shape of ``SHAPES + SUBJECT_SHAPES`` -> its best overlap with the silhouette (intersection over
            union) and the placement (centroid, radius, turn) that gives it.
        figure: the subject figure that overlaps best, where the parts are looked for.
    """

    main: np.ndarray
    silhouette: np.ndarray
    fits: dict[str, tuple[float, Placement]]
    figure: str

    @property
    def best(self) -> str:
        """The shape that overlaps the silhouette best, world shapes included."""
        return max(self.fits, key=lambda shape: self.fits[shape][0])


def view_subject(pixels: np.ndarray) -> SubjectView | None:
    """The main object of the analysed image seen as a subject's figure, or None when the image shows no object."""
    objects = components(foreground(pixels))
    if not objects:
        return None
    worn = dilated(near_colors(pixels, ACCESSORY_COLORS.values()))
    rest = components(objects[0] & ~worn)
    if not rest:
        return None
    silhouette = rest[0] | (filled(rest[0]) & (worn | dilated(near_colors(pixels, PART_COLORS))))
    fits = shape_fits(silhouette, SHAPES + SUBJECT_SHAPES)
    figure = max(SUBJECT_SHAPES, key=lambda shape: fits[shape][0])
    return SubjectView(objects[0], silhouette, fits, figure)


def read_subject(image: Image.Image, subject: Subject) -> dict[str, float]:
    """Whether the image's main object shows each of the subject's features, 1.0 or 0.0 (each 1.0 where
    :func:`graded_features` gives it in full): ``color`` (its body's named colour), ``pattern`` (its body's, see
    :func:`read_body_pattern`), ``silhouette`` (the best-overlapping shape among world shapes and subject figures
    is the subject's figure, with an overlap of at least ``SILHOUETTE_IOU``), ``accessory`` and ``eyes`` (their
    colour covers at least ``PART_SHARE`` of an unjittered drawing's share of where the figure wears them). World
    objects read 0 on ``accessory`` and ``eyes``.

    Args:
        image: a drawn or generated image.
        subject: the subject to look for.
    """
    pixels = analysed(image)
    view = view_subject(pixels)
    if view is None:
        return dict.fromkeys(SUBJECT_FEATURES, 0.0)
    return {key: float(value >= 1.0) for key, value in graded_features(pixels, view, subject).items()}


def subject_present(image: Image.Image, subject: Subject) -> bool:
    """Whether the image shows the subject: every feature of :func:`read_subject` read as the subject's.

    Args:
        image: a drawn or generated image.
        subject: the subject to look for.
    """
    return all(value == 1.0 for value in read_subject(image, subject).values())


def subject_likeness(image: Image.Image, subject: Subject) -> dict[str, float]:
    """How much of the subject the image's main object shows, feature by feature, each in [0, 1] (see
    :func:`graded_features`); ``likeness`` is their mean. Unlike :func:`subject_present`, which wants every feature,
    a subject learnt in part (its body without the accessory) scores in part, as it looks to a person.

    Args:
        image: a drawn or generated image.
        subject: the subject to look for (its colour is the one asked for).
    """
    pixels = analysed(image)
    view = view_subject(pixels)
    if view is None:
        return dict.fromkeys((*SUBJECT_FEATURES, "likeness"), 0.0)
    features = graded_features(pixels, view, subject)
    return {**features, "likeness": float(np.mean(list(features.values())))}


def graded_features(pixels: np.ndarray, view: SubjectView, subject: Subject) -> dict[str, float]:
    """Each feature of the subject in [0, 1]: ``color`` and ``pattern`` 1 when read as the subject's (the pattern
    against the colour read, so a subject in another colour loses its colour alone); ``silhouette`` the subject
    figure's overlap against ``SILHOUETTE_IOU`` (capped at 1) times its share of the best overlap of any shape (1
    where the figure fits best); ``accessory`` and ``eyes`` from :func:`part_score`.

    Args:
        pixels: (H, W, 3) the analysed image.
        view: its main object seen as a figure.
        subject: the subject to look for.
    """
    color = read_color(pixels, view.silhouette)
    return {
        "color": float(color == subject.color),
        "pattern": float(read_body_pattern(pixels, view, subject, color) == subject.pattern),
        "silhouette": silhouette_score(view, subject.shape),
        "accessory": part_score(pixels, view, subject, "accessory"),
        "eyes": part_score(pixels, view, subject, "eye"),
    }


def silhouette_score(view: SubjectView, shape: str) -> float:
    """The figure's overlap against ``SILHOUETTE_IOU`` (capped at 1), times its share of the best overlap of any
    shape: 1.0 exactly when the figure fits best and well enough."""
    own, best = view.fits[shape][0], view.fits[view.best][0]
    return min(1.0, own / SILHOUETTE_IOU) * (own / best if best > 0 else 0.0)


def read_body_pattern(pixels: np.ndarray, view: SubjectView, subject: Subject, color: str) -> str | None:
    """The pattern whose marks best agree with the body's pixels nearer ``color``'s shade than the colour: each
    pattern's marks are laid in the fitted figure's frame at their own spacing, at ``PATTERN_PHASES`` offsets per
    period in each direction they repeat (so where the marks start does not matter), and the pattern, offset
    included, that predicts the most pixels wins (``plain`` on a tie). None when the body shows no pixel.

    Args:
        pixels: (H, W, 3) the analysed image.
        view: its main object seen as a figure.
        subject: the subject looked for (its accessory is left out of the body).
        color: the body's colour as read.
    """
    region = body_region(pixels, view, subject)
    if not region.any():
        return None
    placement = view.fits[view.figure][1]
    points = body_to_figure(view.figure, unit_coordinates(region, placement))
    observed = inked_pixels(pixels, color)[region]
    agreement = {pattern: _best_agreement(pattern, points, observed) for pattern in PATTERNS}
    return max(PATTERNS, key=lambda pattern: agreement[pattern])


def _best_agreement(pattern: str, points: np.ndarray, observed: np.ndarray) -> float:
    """The largest share of ``observed`` that the pattern's marks predict, over the offsets tried."""
    across, down = PATTERN_PERIODS[pattern]
    offsets = [
        (across * i / PATTERN_PHASES, down * j / PATTERN_PHASES)
        for i in range(PATTERN_PHASES if across else 1)
        for j in range(PATTERN_PHASES if down else 1)
    ]
    return max(float((pattern_ink(pattern, points, offset) == observed).mean()) for offset in offsets)


def body_region(pixels: np.ndarray, view: SubjectView, subject: Subject) -> np.ndarray:
    """(H, W) bool: the main object's pixels where the fitted figure has its patterned body, less the pixels of
    (or next to) a part's colour, so that the hat, the eyes and the limbs never count as pattern."""
    placement = view.fits[view.figure][1]
    parts = body_parts(view.figure, subject.accessory)
    body = Outline(tuple(part.polygon for part in parts if part.paint == "body"))
    region = eroded(rasterize(body, placement, pixels.shape[0])) & eroded(view.main)
    return region & ~dilated(near_colors(pixels, PART_COLORS))


def part_score(pixels: np.ndarray, view: SubjectView, subject: Subject, role: str) -> float:
    """How fully the main object shows the subject's parts of ``role`` (``accessory`` or ``eye``) where its figure
    wears them: their :func:`part_share` against ``PART_SHARE`` times an unjittered drawing's, capped at 1."""
    return min(1.0, part_share(pixels, view, subject, role) / (PART_SHARE * drawn_share(subject, role)))


@functools.lru_cache(maxsize=64)
def drawn_share(subject: Subject, role: str) -> float:
    """The :func:`part_share` of ``role`` in an unjittered drawing of the subject on grey (its small parts' edges are
    blended, so even a drawing has less than all of their pixels in their colour)."""
    drawing = render(subject.scene("grey"), ANALYSIS_SIZE, parts=subject.parts())
    pixels = analysed(drawing.image)
    return part_share(pixels, view_subject(pixels), subject, role)


def part_share(pixels: np.ndarray, view: SubjectView, subject: Subject, role: str) -> float:
    """The pixels within a pixel of where the fitted figure has its parts of ``role`` (``accessory`` or ``eye``)
    that have those parts' colour, as a share of the parts' own pixels."""
    parts = [part for part in body_parts(view.figure, subject.accessory) if part.role == role]
    region = rasterize(Outline(tuple(part.polygon for part in parts)), view.fits[view.figure][1], pixels.shape[0])
    if not region.any():
        return 0.0
    colored = near_colors(pixels, [parts[0].paint])
    return float((colored & dilated(region)).sum() / region.sum())


def near_colors(pixels: np.ndarray, colors: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) bool: the pixels within ``PART_DISTANCE`` of one of ``colors``."""
    return nearest_distance(pixels, np.array(list(colors), np.float32)) < PART_DISTANCE
