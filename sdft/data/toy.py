"""A generated sample subject, so the quickstart and the tests never download photos.

The subject is one distinctive plush toy (a red round body with two ears, a yellow five-pointed star on its
belly and two dark eyes) photographed a handful of times on varied backgrounds, with small changes of
position, scale and rotation. :func:`write_toy_class` draws *other* toys of the same kind (other colours,
bodies and badges) for class / prior-preservation data, and :func:`write_toy_captions` a captioned set of such
toys (``metadata.jsonl`` captions naming each toy's colours and shapes) for text-to-image fine-tuning. Everything is
drawn with Pillow from a seeded ``numpy`` generator.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdft.files import write_atomic, write_jsonl

SUPERSAMPLE = 2
BODY_SHAPES = ("round", "square", "pear")
BADGE_SHAPES = ("star", "diamond", "circle")
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ToyDesign:
    """How one toy looks, whatever the photo.

    Args:
        body_color: RGB of the body and ears.
        body_shape: one of ``BODY_SHAPES``.
        badge_color: RGB of the belly badge.
        badge_shape: one of ``BADGE_SHAPES``.
        badge_points: the number of points when the badge is a star.
        eye_color: RGB of the eyes.
    """

    body_color: RGB
    body_shape: str
    badge_color: RGB
    badge_shape: str
    badge_points: int
    eye_color: RGB


SUBJECT = ToyDesign((214, 32, 38), "round", (255, 208, 28), "star", 5, (28, 22, 30))
BODY_WORDS = {"round": "round", "square": "square", "pear": "pear-shaped"}
#: upper hue bounds (hue in [0, 1), 0 = red) of the colour names used in captions
HUE_NAMES = (
    (0.04, "red"),
    (0.11, "orange"),
    (0.18, "yellow"),
    (0.45, "green"),
    (0.54, "teal"),
    (0.7, "blue"),
    (0.8, "purple"),
    (0.93, "pink"),
    (1.0, "red"),
)


def write_toy_subject(folder: Path, num_images: int = 5, size: int = 128, seed: int = 0) -> list[Path]:
    """Write ``num_images`` PNG photos of the sample subject to ``folder`` and return their paths.

    Args:
        folder: where to write ``toy_00.png``, ...; created if missing.
        num_images: how many photos.
        size: the side of each square photo, in pixels.
        seed: the seed of the backgrounds and poses; equal seeds give identical files.
    """
    _check_arguments(num_images, size)
    rng = np.random.default_rng(seed)
    images = [_render_photo(SUBJECT, rng, size) for _ in range(num_images)]
    return _write_all(images, Path(folder), "toy")


def write_toy_class(folder: Path, num_images: int = 20, size: int = 128, seed: int = 0) -> list[Path]:
    """Write ``num_images`` PNG photos of other toys of the subject's kind, one new toy per photo.

    Args:
        folder: where to write ``class_toy_00.png``, ...; created if missing.
        num_images: how many photos.
        size: the side of each square photo, in pixels.
        seed: the seed of the toys, backgrounds and poses; equal seeds give identical files.
    """
    _check_arguments(num_images, size)
    rng = np.random.default_rng(seed)
    images = [_render_photo(_random_design(rng), rng, size) for _ in range(num_images)]
    return _write_all(images, Path(folder), "class_toy")


def write_toy_captions(folder: Path, num_images: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """Write ``num_images`` photos of different toys and a ``metadata.jsonl`` captioning each by its design.

    Captions read like ``a photo of a green pear-shaped plush toy with a pink 6-pointed star on its belly``.

    Args:
        folder: where to write ``toy_00.png``, ... and ``metadata.jsonl``; created if missing.
        num_images: how many photos (one toy each).
        size: the side of each square photo, in pixels.
        seed: the seed of the toys, backgrounds and poses; equal seeds give identical files.
    """
    _check_arguments(num_images, size)
    rng = np.random.default_rng(seed)
    designs = [_random_design(rng) for _ in range(num_images)]
    paths = _write_all([_render_photo(design, rng, size) for design in designs], Path(folder), "toy")
    rows = [{"file_name": path.name, "text": describe(design)} for path, design in zip(paths, designs, strict=True)]
    write_jsonl(Path(folder) / "metadata.jsonl", rows)
    return paths


def describe(design: ToyDesign) -> str:
    """A caption naming the toy's colours and shapes.

    Args:
        design: the toy.
    """
    badge = f"{design.badge_points}-pointed star" if design.badge_shape == "star" else design.badge_shape
    return (
        f"a photo of a {color_name(design.body_color)} {BODY_WORDS[design.body_shape]} plush toy "
        f"with a {color_name(design.badge_color)} {badge} on its belly"
    )


def color_name(color: RGB) -> str:
    """The everyday name of an RGB colour: grey shades by brightness, other colours by hue.

    Args:
        color: 8-bit RGB.
    """
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in color))
    if value < 0.2:
        return "black"
    if saturation < 0.2:
        return "white" if value > 0.85 else "grey"
    return next(name for bound, name in HUE_NAMES if hue < bound)


def _check_arguments(num_images: int, size: int) -> None:
    """Reject counts and sizes that cannot make a photo.

    Args:
        num_images: the requested number of photos.
        size: the requested side in pixels.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")


def _random_design(rng: np.random.Generator) -> ToyDesign:
    """A toy of the subject's kind with another colour, body and badge; hues avoid the subject's red.

    Args:
        rng: the source of the design.
    """
    hue = rng.uniform(0.1, 0.9)
    badge_hue = 0.1 + (hue - 0.1 + rng.uniform(0.25, 0.55)) % 0.8
    return ToyDesign(
        body_color=_hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.9)),
        body_shape=BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))],
        badge_color=_hsv(badge_hue, rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0)),
        badge_shape=BADGE_SHAPES[int(rng.integers(len(BADGE_SHAPES)))],
        badge_points=int(rng.integers(4, 8)),
        eye_color=_hsv(rng.uniform(0.0, 1.0), 0.3, 0.12),
    )


def _hsv(hue: float, saturation: float, value: float) -> RGB:
    """An 8-bit RGB colour from HSV in [0, 1].

    Args:
        hue: the hue, 0 and 1 being red.
        saturation: the saturation.
        value: the brightness.
    """
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _muted_color(rng: np.random.Generator) -> RGB:
    """A soft background colour (low saturation, mid to high brightness).

    Args:
        rng: the source of the colour.
    """
    return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.05, 0.45), rng.uniform(0.5, 0.95))


def _render_photo(design: ToyDesign, rng: np.random.Generator, size: int) -> Image.Image:
    """One square RGB photo of the toy: background, clutter, shadow, then the toy in a random pose.

    Args:
        design: the toy to draw.
        rng: the source of the scene and pose.
        size: the side of the photo in pixels.
    """
    side = size * SUPERSAMPLE
    photo = _draw_background(rng, side)
    toy = _draw_toy(design, max(8, round(side * rng.uniform(0.45, 0.6))))
    toy = toy.rotate(rng.uniform(-15.0, 15.0), resample=Image.Resampling.BICUBIC, expand=True)
    center_x, center_y = side * (0.5 + rng.uniform(-0.12, 0.12)), side * (0.5 + rng.uniform(-0.1, 0.12))
    _draw_shadow(photo, center_x, center_y + toy.height * 0.42, toy.width * 0.38)
    photo.paste(toy, (round(center_x - toy.width / 2), round(center_y - toy.height / 2)), toy)
    return photo.resize((size, size), Image.Resampling.LANCZOS)


def _draw_background(rng: np.random.Generator, side: int) -> Image.Image:
    """A solid or two-colour gradient backdrop with a few clutter shapes.

    Args:
        rng: the source of colours and shapes.
        side: the side of the square in pixels.
    """
    start, end = np.array(_muted_color(rng), float), np.array(_muted_color(rng), float)
    if rng.random() < 0.3:
        end = start
    ramp = np.linspace(0.0, 1.0, side)[:, None, None]
    pixels = np.broadcast_to(start * (1.0 - ramp) + end * ramp, (side, side, 3))
    if rng.random() < 0.5:
        pixels = pixels.transpose(1, 0, 2)
    image = Image.fromarray(np.ascontiguousarray(np.round(pixels).astype(np.uint8)))
    _draw_clutter(ImageDraw.Draw(image), rng, side)
    return image


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    """Draw one to four rectangles, ellipses or thick lines in soft colours.

    Args:
        draw: the drawing context of the background.
        rng: the source of the shapes.
        side: the side of the square in pixels.
    """
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(3))
        x, y = rng.uniform(0, side, 2)
        width, height = rng.uniform(0.08, 0.3, 2) * side
        box = (x - width / 2, y - height / 2, x + width / 2, y + height / 2)
        color = _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.1, 0.55), rng.uniform(0.35, 0.9))
        if kind == 0:
            draw.rectangle(box, fill=color)
        elif kind == 1:
            draw.ellipse(box, fill=color)
        else:
            draw.line(box, fill=color, width=max(1, round(side * 0.02)))


def _draw_shadow(photo: Image.Image, center_x: float, center_y: float, radius: float) -> None:
    """Darken a flat ellipse under the toy, as if it stood on a surface.

    Args:
        photo: the background to draw on, in place.
        center_x: the shadow's centre, in pixels.
        center_y: the shadow's centre, in pixels.
        radius: its horizontal half-axis, in pixels.
    """
    mask = Image.new("L", photo.size, 0)
    box = (center_x - radius, center_y - radius * 0.22, center_x + radius, center_y + radius * 0.22)
    ImageDraw.Draw(mask).ellipse(box, fill=70)
    photo.paste((20, 20, 20), mask=mask)


def _draw_toy(design: ToyDesign, side: int) -> Image.Image:
    """The toy facing the camera on a transparent RGBA square: ears, body, badge, eyes.

    Args:
        design: the toy to draw.
        side: the side of the square in pixels.
    """
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    red, green, blue = design.body_color
    outline = (round(red * 0.6), round(green * 0.6), round(blue * 0.6))
    line = max(1, round(side * 0.02))
    for ear_x in (0.27, 0.73):
        draw.ellipse(_box(side, ear_x, 0.2, 0.11), fill=design.body_color, outline=outline, width=line)
    _draw_body(draw, design, side, outline, line)
    _draw_badge(draw, design, side)
    for eye_x in (0.38, 0.62):
        draw.ellipse(_box(side, eye_x, 0.4, 0.055), fill=design.eye_color)
        draw.ellipse(_box(side, eye_x + 0.018, 0.382, 0.018), fill=(255, 255, 255))
    return layer


def _draw_body(draw: ImageDraw.ImageDraw, design: ToyDesign, side: int, outline: RGB, line: int) -> None:
    """Draw the body: round, a rounded square, or a pear (small head over a wide belly).

    Args:
        draw: the drawing context of the toy layer.
        design: the toy to draw.
        side: the side of the layer in pixels.
        outline: the RGB of the outline.
        line: the outline width in pixels.
    """
    fill = design.body_color
    if design.body_shape == "round":
        draw.ellipse(_box(side, 0.5, 0.55, 0.38), fill=fill, outline=outline, width=line)
    elif design.body_shape == "square":
        box = _box(side, 0.5, 0.56, 0.36)
        draw.rounded_rectangle(box, radius=side * 0.1, fill=fill, outline=outline, width=line)
    else:
        draw.ellipse(_box(side, 0.5, 0.66, 0.3), fill=fill, outline=outline, width=line)
        draw.ellipse(_box(side, 0.5, 0.4, 0.24), fill=fill, outline=outline, width=line)


def _draw_badge(draw: ImageDraw.ImageDraw, design: ToyDesign, side: int) -> None:
    """Draw the belly badge: a star with ``badge_points`` points, a diamond, or a disc.

    Args:
        draw: the drawing context of the toy layer.
        design: the toy to draw.
        side: the side of the layer in pixels.
    """
    center_x, center_y, radius = side * 0.5, side * 0.68, side * 0.15
    if design.badge_shape == "circle":
        draw.ellipse(_box(side, 0.5, 0.68, 0.12), fill=design.badge_color)
        return
    points = design.badge_points if design.badge_shape == "star" else 2
    inner = radius * (0.45 if design.badge_shape == "star" else 0.65)
    corners = []
    for index in range(2 * points):
        angle = -math.pi / 2 + index * math.pi / points
        length = radius if index % 2 == 0 else inner
        corners.append((center_x + length * math.cos(angle), center_y + length * math.sin(angle)))
    draw.polygon(corners, fill=design.badge_color)


def _box(side: int, center_x: float, center_y: float, radius: float) -> tuple[float, float, float, float]:
    """The bounding box of a circle given in fractions of the layer side.

    Args:
        side: the side of the layer in pixels.
        center_x: the centre, as a fraction of the side.
        center_y: the centre, as a fraction of the side.
        radius: the radius, as a fraction of the side.
    """
    return (
        side * (center_x - radius),
        side * (center_y - radius),
        side * (center_x + radius),
        side * (center_y + radius),
    )


def _write_all(images: list[Image.Image], folder: Path, stem: str) -> list[Path]:
    """Write the images as ``{stem}_00.png``, ... into ``folder`` and return their paths.

    Args:
        images: the photos to write.
        folder: the destination; created if missing.
        stem: the file-name prefix.
    """
    paths = [folder / f"{stem}_{index:02d}.png" for index in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        write_atomic(path, lambda file, image=image: image.save(file, format="PNG"))
    return paths
