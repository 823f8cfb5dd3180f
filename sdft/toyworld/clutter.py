"""Clutter: drawings of what the toy world never draws, for an autoencoder that must show anything a fine-tuned model
may learn to draw, not only the world's scenes.

A world scene has one or two single-coloured objects of eight colours; a novel subject has parts a pixel or two
across (eyes, a pupil, a hat's brim) in colours no world object has (near-black, near-white). An autoencoder trained
on world scenes alone never meets such parts and smudges them. Clutter is the world's backgrounds under a few
large overlapping shapes (world outlines and random polygons) in random colours with random patterns in a second
colour, and on top of them many small high-contrast parts: specks, small polygons, short strokes and eye-like discs
(a light disc around a dark pupil), a quarter of their colours near-black, a quarter near-white and a quarter
saturated. Drawing follows :mod:`sdft.toyworld.draw`: each part at 4x supersampling reduced onto the canvas, with
its exact pixel mask.

Everything depends only on the generator: equal seeds give equal bytes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from sdft.toyworld.backgrounds import draw_background
from sdft.toyworld.draw import Drawing, Placement, Window
from sdft.toyworld.scenes import BACKGROUNDS, PATTERNS, SHAPES
from sdft.toyworld.shapes import Outline, ellipse, outline, pattern_marks

RGB = tuple[int, int, int]
#: how many large shapes and small parts an image has (inclusive ranges)
LARGE_SHAPES, SMALL_PARTS = (1, 3), (4, 14)
#: the radius of a large shape and of a small part, in pixels at 64 px (scaled with the side)
LARGE_RADIUS, SMALL_RADIUS = (5.0, 18.0), (0.8, 4.0)
#: a near-black channel is at most this, a near-white one at least 255 less it
EXTREME = 45
SMALL_KINDS = ("speck", "polygon", "stroke", "eye")


def random_color(rng: np.random.Generator) -> RGB:
    """A colour: near-black, near-white, near a corner of the RGB cube (a saturated primary or secondary, such as
    a subject's magenta or aqua part, which uniform draws almost never reach), or any colour, a quarter of the time
    each."""
    kind = int(rng.integers(4))
    if kind == 0:
        return tuple(int(value) for value in rng.integers(0, EXTREME + 1, 3))
    if kind == 1:
        return tuple(int(value) for value in rng.integers(255 - EXTREME, 256, 3))
    if kind == 2:
        corner = rng.integers(0, 2, 3) * (255 - EXTREME)
        return tuple(int(value) for value in corner + rng.integers(0, EXTREME + 1, 3))
    return tuple(int(value) for value in rng.integers(0, 256, 3))


def random_polygon(rng: np.random.Generator, corners: int) -> np.ndarray:
    """A star-shaped polygon of ``corners`` corners within the unit disc, its farthest corner at distance 1."""
    angles = np.sort(rng.uniform(0.0, 2 * math.pi, corners))
    lengths = rng.uniform(0.4, 1.0, corners)
    lengths /= lengths.max()
    return np.stack([lengths * np.cos(angles), lengths * np.sin(angles)], axis=1)


def paint(canvas: Image.Image, shape: Outline, placement: Placement, fill: RGB | Image.Image) -> np.ndarray:
    """Draw one outline onto ``canvas`` in place, in one colour or a supersampled fill; return its (H, W) mask.

    Args:
        canvas: the RGB image to draw on.
        shape: the unit outline.
        placement: where it lies.
        fill: an RGB colour, or an image the size of the placement's supersampled window.
    """
    window = Window.around(placement, canvas.width)
    painted = window.supersampled("RGB", fill) if isinstance(fill, tuple) else fill
    return window.composite(canvas, painted, window.silhouette(shape))


def patterned_fill(window: Window, color: RGB, pattern: str, ink: RGB) -> Image.Image:
    """``color`` over the window with the marks of ``pattern`` on it in ``ink`` (the world draws them in its shade)."""
    fill = window.supersampled("RGB", color)
    pen = ImageDraw.Draw(fill)
    for mark in pattern_marks(pattern):
        pen.polygon(window.points(mark), fill=ink)
    return fill


def paint_large_shape(canvas: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A world outline or a random polygon, randomly placed, turned and patterned; return its mask."""
    side = canvas.width
    kind = int(rng.integers(len(SHAPES) + 1))
    shape = outline(SHAPES[kind]) if kind < len(SHAPES) else Outline((random_polygon(rng, int(rng.integers(3, 9))),))
    radius = rng.uniform(*LARGE_RADIUS) * side / 64
    x, y = rng.uniform(radius / side, 1 - radius / side, 2)
    placement = Placement(float(x), float(y), float(radius / side), float(rng.uniform(0.0, 360.0)))
    pattern, color, ink = PATTERNS[int(rng.integers(len(PATTERNS)))], random_color(rng), random_color(rng)
    return paint(canvas, shape, placement, patterned_fill(Window.around(placement, side), color, pattern, ink))


def paint_small_part(canvas: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A speck, small polygon, short stroke or eye-like disc (light around a dark pupil); return its mask."""
    side = canvas.width
    kind = SMALL_KINDS[int(rng.integers(len(SMALL_KINDS)))]
    radius = rng.uniform(*SMALL_RADIUS) * side / 64
    if kind == "stroke":
        radius *= 2.5  # a stroke's radius is half its length
    x, y = rng.uniform(radius / side, 1 - radius / side, 2)
    placement = Placement(float(x), float(y), float(radius / side), float(rng.uniform(0.0, 360.0)))
    if kind == "eye":
        return paint_eye(canvas, placement, rng)
    if kind == "stroke":
        half_width = rng.uniform(0.5, 1.2) / radius  # a pixel or two wide, at most 0.6 of the radius
        reach = math.sqrt(1.0 - half_width**2)  # the corners at distance 1
        corners = [(-reach, -half_width), (reach, -half_width), (reach, half_width), (-reach, half_width)]
        shape = Outline((np.array(corners),))
    elif kind == "polygon":
        shape = Outline((random_polygon(rng, int(rng.integers(3, 7))),))
    else:
        shape = Outline((ellipse(0.0, 0.0, 1.0, 1.0, points=16),))
    return paint(canvas, shape, placement, random_color(rng))


def paint_eye(canvas: Image.Image, placement: Placement, rng: np.random.Generator) -> np.ndarray:
    """A near-white disc with a near-black pupil (or the other way round) set off its centre; return the disc's mask."""
    light = tuple(int(value) for value in rng.integers(255 - EXTREME, 256, 3))
    dark = tuple(int(value) for value in rng.integers(0, EXTREME + 1, 3))
    white, pupil = (light, dark) if rng.uniform() < 0.8 else (dark, light)
    mask = paint(canvas, Outline((ellipse(0.0, 0.0, 1.0, 1.0),)), placement, white)
    scale, angle = rng.uniform(0.35, 0.55), rng.uniform(0.0, 2 * math.pi)
    offset = (1 - scale) * rng.uniform(0.0, 0.8) * placement.radius
    centre = (placement.x + offset * math.cos(angle), placement.y + offset * math.sin(angle))
    inner = Placement(*centre, placement.radius * scale, 0.0)
    paint(canvas, Outline((ellipse(0.0, 0.0, 1.0, 1.0),)), inner, pupil)
    return mask


def draw_clutter(size: int, rng: np.random.Generator) -> Drawing:
    """A clutter image (see the module docstring) with the mask of everything drawn on the background.

    Args:
        size: the side of the square image in pixels.
        rng: the source of everything drawn.
    """
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = Image.fromarray(draw_background(background, size, rng))
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(LARGE_SHAPES[0], LARGE_SHAPES[1] + 1))):
        mask |= paint_large_shape(canvas, rng)
    for _ in range(int(rng.integers(SMALL_PARTS[0], SMALL_PARTS[1] + 1))):
        mask |= paint_small_part(canvas, rng)
    return Drawing(canvas, mask, None, ())
