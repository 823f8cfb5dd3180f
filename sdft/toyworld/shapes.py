"""The outlines of the toy world's shapes, in unit coordinates: every shape's area centroid is at the origin and
its farthest point at distance 1, so a drawn object's mask centroid is its position and its largest distance from
the centroid is its radius, whatever the shape and rotation.

A shape is a list of filled polygons and holes (the ring's inside); the novel subject's creature is a list of parts
in their own colours (see :func:`creature_parts`). ``y`` points down, as in images.
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
        shape: one of ``sdft.toyworld.scenes.SHAPES``, or ``creature`` for the subject's silhouette.
    """
    if shape == "creature":
        return Outline(tuple(part.polygon for part in creature_parts()))
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
        raise ValueError(f"no outline for shape {shape!r}; shapes are circle, ring, creature, {', '.join(polygons)}")
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


def _rectangle(left: float, top: float, width: float, height: float) -> Polygon:
    return np.array([(left, top), (left + width, top), (left + width, top + height), (left, top + height)])


@dataclass(frozen=True)
class Part:
    """One coloured piece of a many-coloured shape.

    Args:
        polygon: its outline in the shape's unit coordinates.
        paint: ``body`` (the subject's colour and pattern), ``shade`` (the darkened colour), or an RGB triple.
    """

    polygon: Polygon
    paint: str | tuple[int, int, int]


#: the subject creature's hat and eyes: colours no world object has
HAT = (24, 22, 28)
EYE_WHITE = (250, 250, 246)


#: the creature's area centroid and farthest distance from it, in the coordinates its parts are written in
#: (measured by rasterising the silhouette; a test checks them)
CREATURE_CENTER, CREATURE_RADIUS = (0.0, 0.1073), 1.0550


def creature_parts() -> tuple[Part, ...]:
    """The novel creature, front view: a wide body, two feet, a top hat and two eyes, back to front, normalised as
    world shapes are (centroid at the origin, farthest point at distance 1)."""
    body = ellipse(0.0, 0.22, 0.78, 0.56)
    feet = (ellipse(-0.4, 0.78, 0.2, 0.1), ellipse(0.4, 0.78, 0.2, 0.1))
    crown = np.array([(-0.24, -0.92), (0.24, -0.92), (0.24, -0.4), (-0.24, -0.4)])
    brim = np.array([(-0.42, -0.42), (0.42, -0.42), (0.42, -0.3), (-0.42, -0.3)])
    eyes = (ellipse(-0.28, 0.08, 0.19, 0.19), ellipse(0.28, 0.08, 0.19, 0.19))
    pupils = (ellipse(-0.23, 0.1, 0.085, 0.085), ellipse(0.33, 0.1, 0.085, 0.085))
    parts = (
        *(Part(foot, "shade") for foot in feet),
        Part(body, "body"),
        Part(crown, HAT),
        Part(brim, HAT),
        *(Part(eye, EYE_WHITE) for eye in eyes),
        *(Part(pupil, HAT) for pupil in pupils),
    )
    return tuple(Part((part.polygon - CREATURE_CENTER) / CREATURE_RADIUS, part.paint) for part in parts)
