"""The toy world's backgrounds, drawn straight at the output size: two plain colours, a sky gradient and three
textures (grass, brick, water).

Their colours stay far (RGB distance 45 or more) from every object colour and pattern shade of
:data:`sdft.toyworld.scenes.COLORS` and from the subject's hat and eyes, and every colour a texture uses somewhere
appears along the image border too, so the oracle can cut objects out as the pixels unlike the border (see
:mod:`sdft.toyworld.oracle`).
"""

from __future__ import annotations

import numpy as np

GREY = (150, 150, 150)
CREAM = (236, 226, 198)
SKY_TOP, SKY_BOTTOM = (110, 170, 235), (205, 228, 250)
GRASS, GRASS_DARK, GRASS_LIGHT = (100, 145, 55), (78, 125, 45), (122, 165, 68)
BRICK, MORTAR = (150, 84, 64), (205, 200, 190)
WATER, WAVE = (45, 105, 150), (95, 150, 185)
#: the per-pixel noise of the textures, in 8-bit steps
GRAIN = 3.0


def draw_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background as an (size, size, 3) uint8 array.

    Args:
        name: one of ``sdft.toyworld.scenes.BACKGROUNDS``.
        size: the side in pixels.
        rng: the source of the texture (brick offsets, grass blades, waves, grain).
    """
    painters = {
        "grey": _plain(GREY),
        "cream": _plain(CREAM),
        "sky": _sky,
        "grass": _grass,
        "brick": _brick,
        "water": _water,
    }
    if name not in painters:
        raise ValueError(f"unknown background {name!r}; use one of {', '.join(painters)}")
    pixels = painters[name](size, rng)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def typical_color(name: str) -> tuple[float, float, float]:
    """A background's mean colour at 64 pixels, near enough to tell the backgrounds apart by their means: the sky's
    midpoint, the brick's mix with its joints (about 18% of the wall), the water's with its crests (about 12%).

    Args:
        name: one of ``sdft.toyworld.scenes.BACKGROUNDS``.
    """
    mixes = {
        "grey": ((GREY, 1.0),),
        "cream": ((CREAM, 1.0),),
        "sky": ((SKY_TOP, 0.5), (SKY_BOTTOM, 0.5)),
        "grass": ((GRASS, 1.0),),
        "brick": ((BRICK, 0.82), (MORTAR, 0.18)),
        "water": ((WATER, 0.88), (WAVE, 0.12)),
    }
    return tuple(float(sum(color[channel] * weight for color, weight in mixes[name])) for channel in range(3))


def _plain(color: tuple[int, int, int]):
    def paint(size: int, rng: np.random.Generator) -> np.ndarray:
        return np.broadcast_to(np.array(color, float), (size, size, 3)).copy()

    return paint


def _sky(size: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical gradient from a deeper blue at the top to a pale blue at the horizon."""
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    top, bottom = np.array(SKY_TOP, float), np.array(SKY_BOTTOM, float)
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (size, size, 3)).copy()


def _grass(size: int, rng: np.random.Generator) -> np.ndarray:
    """Green with short vertical blades, darker and lighter, and a little grain."""
    pixels = np.broadcast_to(np.array(GRASS, float), (size, size, 3)).copy()
    blade = max(2, size // 16)
    count = size * size // (blade * 6)
    for color in (GRASS_DARK, GRASS_LIGHT):
        x, y = rng.integers(size, size=count), rng.integers(size, size=count)
        for step in range(blade):
            inside = y + step < size
            pixels[y[inside] + step, x[inside]] = color
    return pixels + rng.normal(0.0, GRAIN, (size, size, 1))


def _brick(size: int, rng: np.random.Generator) -> np.ndarray:
    """Courses of bricks (each its own tint of brick red) with mortar joints, every other course offset."""
    height, width, joint = max(4, size // 8), max(8, size // 4), max(1, size // 64)
    rows, columns = np.mgrid[0:size, 0:size]
    rows = rows + int(rng.integers(height))
    course = rows // height
    columns = columns + int(rng.integers(width)) + (course % 2) * (width // 2)
    brick_index = course * (size // width + 2) + columns // width
    tints = rng.uniform(-10.0, 10.0, brick_index.max() + 1)
    pixels = np.array(BRICK, float) + tints[brick_index][..., None]
    mortar = (rows % height < joint) | (columns % width < joint)
    pixels[mortar] = MORTAR
    return pixels + rng.normal(0.0, GRAIN, (size, size, 1))


def _water(size: int, rng: np.random.Generator) -> np.ndarray:
    """Deep blue with light wave crests along gently sloping sine curves."""
    pixels = np.broadcast_to(np.array(WATER, float), (size, size, 3)).copy()
    rows, columns = np.mgrid[0:size, 0:size].astype(float)
    spacing = max(4.0, size / 8)
    phase, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(-0.1, 0.1)
    wave = rows + tilt * columns + 0.06 * size * np.sin(columns * 2 * np.pi / (size / 2) + phase)
    crest = (wave % spacing) < max(1.0, size / 64)
    pixels[crest] = WAVE
    return pixels + rng.normal(0.0, GRAIN, (size, size, 1))
