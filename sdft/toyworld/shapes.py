"""The outlines of the toy world's shapes, in unit coordinates: every shape's area centroid is at the origin and
its farthest point at distance 1, so a drawn object's mask centroid is its position and its largest distance from
the centroid is its radius, whatever the shape and rotation.

A shape is a list of filled polygons and holes (the ring's inside). A novel subject's figure (a creature, a robot, a
bird) is a list of parts in their own colours, wearing one accessory (a top hat, a crown, a bow tie; see
:func:`subject_parts`). ``y`` points down, as in images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Polygon = np.ndarray  # (N, 2) float points
CIRCLE_POINTS = 64
#: the patterns' geometry in unit coordinates: stripe period, dot spacing and radius, checker cell
STRIPE_PERIOD, DOT_SPACING, DOT_RADIUS, CHECKER_CELL = 0.5, 0.5, 0.14, 0.4


@dataclass(frozen=True)
class Outline:
    """A shape: filled polygons, then holes cut out of them.

    Args:
        fills: polygons drawn filled.
        holes: polygons cleared afterwards.
    """

    fills: tuple[Polygon, ...]
    holes: tuple[Polygon, ...] = ()


def ellipse(center_x: float, center_y: float, radius_x: float, radius_y: float, points: int = CIRCLE_POINTS) -> Polygon:
    """An ellipse as a polygon of ``points`` points."""
    angles = np.linspace(0.0, 2 * math.pi, points, endpoint=False)
    return np.stack([center_x + radius_x * np.cos(angles), center_y + radius_y * np.sin(angles)], axis=1)


def star(points: int = 5, inner: float = 0.45) -> Polygon:
    """A star pointing up with ``points`` points and the inner radius ``inner``."""
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    lengths = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([lengths * np.cos(angles), lengths * np.sin(angles)], axis=1)


def heart() -> Polygon:
    """The classic heart curve (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t), point down."""
    t = np.linspace(0.0, 2 * math.pi, CIRCLE_POINTS, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1)


def cross(arm: float = 0.34) -> Polygon:
    """A plus sign whose arms are ``2 * arm`` wide."""
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )


def polygon_centroid(polygon: Polygon) -> np.ndarray:
    """The area centroid of a simple polygon (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross_terms = x * y_next - x_next * y
    area = cross_terms.sum() / 2
    return np.array([((x + x_next) * cross_terms).sum(), ((y + y_next) * cross_terms).sum()]) / (6 * area)


def normalized(polygon: Polygon) -> Polygon:
    """``polygon`` moved so its centroid is the origin and scaled so its farthest point is at distance 1."""
    centered = polygon - polygon_centroid(polygon)
    return centered / np.linalg.norm(centered, axis=1).max()


def outline(shape: str) -> Outline:
    """The unit outline of a world shape (see the module docstring).

    Args:
        shape: one of ``sdft.toyworld.scenes.SHAPES``, or of ``SUBJECT_SHAPES`` for a subject's silhouette: its
            body, limbs and eyes without what it wears.
    """
    if shape in FIGURES:
        return Outline(tuple(part.polygon for part in body_parts(shape) if part.role != "accessory"))
    if shape == "circle":
        return Outline((ellipse(0, 0, 1, 1),))
    if shape == "ring":
        return Outline((ellipse(0, 0, 1, 1),), (ellipse(0, 0, 0.55, 0.55),))
    polygons = {
        "square": lambda: np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float),
        "triangle": lambda: np.array([(0, -1), (math.sqrt(3) / 2, 0.5), (-math.sqrt(3) / 2, 0.5)]),
        "star": star,
        "heart": heart,
        "cross": cross,
    }
    if shape not in polygons:
        names = ", ".join(["circle", "ring", *polygons, *FIGURES])
        raise ValueError(f"no outline for shape {shape!r}; shapes are {names}")
    return Outline((normalized(polygons[shape]()),))


def pattern_marks(pattern: str) -> list[Polygon]:
    """The marks of a pattern over the unit disc that holds any shape: four stripes across the diameter, dots on a
    staggered grid, or a checkerboard; none for ``plain``.

    Args:
        pattern: one of ``sdft.toyworld.scenes.PATTERNS``.
    """
    steps = range(-3, 3)
    if pattern == "striped":
        return [_rectangle(-1.5, top * STRIPE_PERIOD, 3.0, STRIPE_PERIOD / 2) for top in steps]
    if pattern == "dotted":
        centers = [((column + 0.5 * (row % 2)) * DOT_SPACING, row * DOT_SPACING) for row in steps for column in steps]
        return [ellipse(x, y, DOT_RADIUS, DOT_RADIUS, points=16) for x, y in centers if math.hypot(x, y) < 1.2]
    if pattern == "checkered":
        cells = [(column, row) for row in steps for column in steps if (column + row) % 2 == 0]
        return [
            _rectangle(column * CHECKER_CELL, row * CHECKER_CELL, CHECKER_CELL, CHECKER_CELL) for column, row in cells
        ]
    return []


def pattern_ink(pattern: str, points: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(N,) bool: whether each of (N, 2) ``points`` in unit coordinates lies on a mark of ``pattern`` (the marks of
    :func:`pattern_marks`, continued over the plane), the marks moved by ``offset``.

    Args:
        pattern: one of ``sdft.toyworld.scenes.PATTERNS``.
        points: (N, 2) unit coordinates.
        offset: (dx, dy) by which the marks are moved.
    """
    x, y = points[:, 0] - offset[0], points[:, 1] - offset[1]
    if pattern == "striped":
        return (y / STRIPE_PERIOD) % 1.0 < 0.5
    if pattern == "checkered":
        return (np.floor(x / CHECKER_CELL) + np.floor(y / CHECKER_CELL)) % 2 == 0
    if pattern == "dotted":
        nearest = np.full(len(x), np.inf)
        for row in (np.floor(y / DOT_SPACING), np.floor(y / DOT_SPACING) + 1):
            shifted = x - 0.5 * DOT_SPACING * (row % 2)
            column = np.round(shifted / DOT_SPACING)
            nearest = np.minimum(nearest, np.hypot(shifted - column * DOT_SPACING, y - row * DOT_SPACING))
        return nearest < DOT_RADIUS
    return np.zeros(len(x), bool)


#: how far each pattern's marks repeat across and down (moved that far, they look the same), 0 where moving them
#: changes nothing
PATTERN_PERIODS = {
    "plain": (0.0, 0.0),
    "striped": (0.0, STRIPE_PERIOD),
    "dotted": (DOT_SPACING, 2 * DOT_SPACING),
    "checkered": (2 * CHECKER_CELL, 2 * CHECKER_CELL),
}


def _rectangle(left: float, top: float, width: float, height: float) -> Polygon:
    return np.array([(left, top), (left + width, top), (left + width, top + height), (left, top + height)])


@dataclass(frozen=True)
class Part:
    """One coloured piece of a many-coloured shape.

    Args:
        polygon: its outline in the shape's unit coordinates.
        paint: ``body`` (the subject's colour and pattern), ``shade`` (the darkened colour), or an RGB triple.
        role: what it is: ``body`` (the silhouette: body and limbs), ``eye``, ``pupil`` or ``accessory``.
    """

    polygon: Polygon
    paint: str | tuple[int, int, int]
    role: str = "body"


# -- the subjects' figures --------------------------------------------------------------------------------------------

#: the colours of subjects' parts, which no world object, pattern shade or background comes near: the top hat's and
#: the pupils' near-black (55 in RGB distance from the nearest, green's shade), the eyes' white (50, from the sky's
#: palest blue), the crown's aqua (87) and the bow tie's magenta (129); ``tests/test_toyworld_subjects.py`` checks it
HAT, EYE_WHITE, AQUA, MAGENTA = (24, 22, 28), (250, 250, 246), (0, 255, 255), (255, 0, 255)
#: each accessory and its one colour
ACCESSORY_COLORS = {"top hat": HAT, "crown": AQUA, "bow tie": MAGENTA}
ACCESSORIES = tuple(ACCESSORY_COLORS)
#: where each accessory is worn
ACCESSORY_PLACES = {"top hat": "head", "crown": "head", "bow tie": "chest"}


@dataclass(frozen=True)
class Figure:
    """A subject's silhouette, in raw coordinates, before it is normalised.

    Args:
        back: the body and limbs, back to front (``role`` body).
        face: the eyes and pupils, drawn over the accessory.
        places: ``head`` and ``chest`` -> the (dx, dy) that moves an accessory from where the creature wears it
            onto this figure.
        center: the origin of the frame it is drawn in: for the creature, the area centroid of the figure wearing
            its top hat, so that it fills a placement as a world shape does; for the others, ``body_center``, so
            that their bodies are drawn as large as a world shape and what they wear on the head reaches above
            (the drawing still stays clear of the image border: a test checks).
        radius: the frame's unit: the distance from ``center`` to the farthest point of the same outline.
        body_center: the area centroid of the body, limbs and eyes alone (the silhouette, whatever it wears),
            measured by rasterising it (a test checks).
        body_radius: the distance from that centroid to the silhouette's farthest point.
    """

    back: tuple[Part, ...]
    face: tuple[Part, ...]
    places: dict[str, tuple[float, float]]
    center: tuple[float, float]
    radius: float
    body_center: tuple[float, float]
    body_radius: float


def accessory_polygons(accessory: str) -> tuple[Polygon, ...]:
    """An accessory's polygons where the creature wears it (raw coordinates): the top hat and the crown on its head
    (its top at y = -0.34), the bow tie on its chest. The bow tie is drawn large (0.88 wide): at 0.68 it was 6-10
    pixels of a 64 px photo, which a factor-2 autoencoder gave back desaturated beyond ``oracle.PART_DISTANCE``.

    Args:
        accessory: one of ``ACCESSORIES``.
    """
    if accessory == "top hat":
        crown = np.array([(-0.24, -0.92), (0.24, -0.92), (0.24, -0.4), (-0.24, -0.4)])
        brim = np.array([(-0.42, -0.42), (0.42, -0.42), (0.42, -0.3), (-0.42, -0.3)])
        return (crown, brim)
    if accessory == "crown":
        points = [(-0.4, -0.31), (0.4, -0.31), (0.44, -0.9), (0.2, -0.64), (0.0, -0.96), (-0.2, -0.64), (-0.44, -0.9)]
        return (np.array(points),)
    if accessory == "bow tie":
        left = np.array([(-0.44, 0.3), (-0.02, 0.48), (-0.44, 0.66)])
        return (left, left * (-1.0, 1.0), ellipse(0.0, 0.48, 0.11, 0.11, points=16))
    raise ValueError(f"unknown accessory {accessory!r}; use one of {', '.join(ACCESSORIES)}")


def creature() -> Figure:
    """The creature, front view: a wide body on two feet, two round eyes."""
    feet = (ellipse(-0.4, 0.78, 0.2, 0.1), ellipse(0.4, 0.78, 0.2, 0.1))
    eyes = (ellipse(-0.28, 0.08, 0.19, 0.19), ellipse(0.28, 0.08, 0.19, 0.19))
    pupils = (ellipse(-0.23, 0.1, 0.085, 0.085), ellipse(0.33, 0.1, 0.085, 0.085))
    return Figure(
        back=(*(Part(foot, "shade") for foot in feet), Part(ellipse(0.0, 0.22, 0.78, 0.56), "body")),
        face=(*(Part(eye, EYE_WHITE, "eye") for eye in eyes), *(Part(pupil, HAT, "pupil") for pupil in pupils)),
        places={"head": (0.0, 0.0), "chest": (0.0, 0.0)},
        center=(0.0, 0.1073),
        radius=1.0550,
        body_center=(0.0, 0.2628),
        body_radius=0.8065,
    )


def robot() -> Figure:
    """The robot, front view: a box of a head on a neck, a wider box of a torso, arms hanging from its shoulders
    apart from it, two legs apart, square eyes without pupils."""
    legs = (_box(-0.42, 0.52, -0.14, 0.9), _box(0.14, 0.52, 0.42, 0.9))
    arms = (_box(-0.94, -0.04, -0.7, 0.52), _box(0.7, -0.04, 0.94, 0.52))
    shoulders = (_box(-0.74, -0.08, -0.5, 0.08), _box(0.5, -0.08, 0.74, 0.08))
    body = (_box(-0.56, -0.1, 0.56, 0.56), _box(-0.14, -0.24, 0.14, -0.06), _box(-0.38, -0.68, 0.38, -0.2))
    eyes = (_box(-0.32, -0.58, -0.05, -0.3), _box(0.05, -0.58, 0.32, -0.3))
    return Figure(
        back=(*(Part(limb, "shade") for limb in (*legs, *arms, *shoulders)), *(Part(box, "body") for box in body)),
        face=tuple(Part(eye, EYE_WHITE, "eye") for eye in eyes),
        places={"head": (0.0, -0.34), "chest": (0.0, -0.25)},
        center=(0.0, 0.1282),
        radius=1.0187,
        body_center=(0.0, 0.1282),
        body_radius=1.0187,
    )


def bird() -> Figure:
    """The bird, side view facing right: an oval body, a round head with one eye and a beak, a tail swept up behind,
    two short legs."""
    beak = np.array([(0.66, -0.46), (1.02, -0.32), (0.66, -0.2)])
    legs = (_box(-0.2, 0.6, -0.06, 0.9), _box(0.1, 0.6, 0.24, 0.9))
    tail = np.array([(-0.5, 0.0), (-1.0, -0.36), (-0.92, 0.08), (-0.56, 0.34)])
    body = (ellipse(0.0, 0.18, 0.68, 0.5), ellipse(0.38, -0.32, 0.34, 0.34), tail)
    return Figure(
        back=(*(Part(piece, "shade") for piece in (beak, *legs)), *(Part(piece, "body") for piece in body)),
        face=(
            Part(ellipse(0.46, -0.34, 0.19, 0.19), EYE_WHITE, "eye"),
            Part(ellipse(0.57, -0.34, 0.06, 0.06), HAT, "pupil"),
        ),
        places={"head": (0.38, -0.32), "chest": (0.1, -0.28)},
        center=(0.0252, 0.0831),
        radius=1.1159,
        body_center=(0.0252, 0.0831),
        body_radius=1.1159,
    )


def _box(left: float, top: float, right: float, bottom: float) -> Polygon:
    return np.array([(left, top), (right, top), (right, bottom), (left, bottom)])


#: the subjects' figures by shape (``sdft.toyworld.scenes.SUBJECT_SHAPES``)
FIGURES = {"creature": creature, "robot": robot, "bird": bird}


def subject_parts(shape: str, accessory: str | None = "top hat", eyes: bool = True) -> tuple[Part, ...]:
    """A subject's parts, back to front (body and limbs, accessory, eyes), in the figure's drawing frame
    (``Figure.center`` at the origin, ``Figure.radius`` at distance 1; see :class:`Figure`).

    Args:
        shape: one of ``SUBJECT_SHAPES``.
        accessory: one of ``ACCESSORIES``, or None for none.
        eyes: False leaves the eyes out.
    """
    figure = _figure(shape)
    return _normalised(_worn(figure, accessory, eyes), figure.center, figure.radius)


def body_parts(shape: str, accessory: str = "top hat") -> tuple[Part, ...]:
    """A subject's parts normalised on its silhouette (the body, limbs and eyes: centroid at the origin, farthest
    point at distance 1), the frame of :func:`outline`; the oracle places them where a silhouette is found.

    Args:
        shape: one of ``SUBJECT_SHAPES``.
        accessory: one of ``ACCESSORIES``.
    """
    figure = _figure(shape)
    return _normalised(_worn(figure, accessory, True), figure.body_center, figure.body_radius)


def body_to_figure(shape: str, points: np.ndarray) -> np.ndarray:
    """(N, 2) points in the frame of :func:`body_parts` (and of the figure's :func:`outline`) -> the same points in
    the frame of :func:`subject_parts`, where the body's pattern marks lie.

    Args:
        shape: one of ``SUBJECT_SHAPES``.
        points: (N, 2) points.
    """
    figure = _figure(shape)
    return (points * figure.body_radius + np.array(figure.body_center) - np.array(figure.center)) / figure.radius


def creature_parts() -> tuple[Part, ...]:
    """The default subject's parts: the creature in its top hat (see :func:`subject_parts`)."""
    return subject_parts("creature")


def _figure(shape: str) -> Figure:
    if shape not in FIGURES:
        raise ValueError(f"no figure for shape {shape!r}; subject shapes are {', '.join(FIGURES)}")
    return FIGURES[shape]()


def _worn(figure: Figure, accessory: str | None, eyes: bool) -> tuple[Part, ...]:
    """The figure's raw parts wearing ``accessory`` (None: nothing), back to front."""
    face = figure.face if eyes else ()
    if accessory is None:
        return (*figure.back, *face)
    offset = figure.places[ACCESSORY_PLACES[accessory]]
    paint = ACCESSORY_COLORS[accessory]
    worn = tuple(Part(polygon + offset, paint, "accessory") for polygon in accessory_polygons(accessory))
    return (*figure.back, *worn, *face)


def _normalised(parts: tuple[Part, ...], center: tuple[float, float], radius: float) -> tuple[Part, ...]:
    return tuple(Part((part.polygon - center) / radius, part.paint, part.role) for part in parts)
