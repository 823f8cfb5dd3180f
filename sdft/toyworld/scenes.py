"""The toy world's scenes: attributes with known values, their captions, and captions read back into attributes.

A :class:`Scene` is one object (shape, colour, pattern, size, horizontal position) on one background, optionally
with a smaller plain second object beside, above or below it. :func:`sample_scene` draws scenes uniformly from a
:class:`Vocabulary`, which may leave values out or hold out combinations (``hold_out(color="red", shape="star")``)
so that a benchmark can ask for what training never showed. :func:`caption` writes a scene in one of a few English
templates and :func:`parse_caption` reads any of them (or a prompt written by hand) back into attributes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: the shapes of the world's objects
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring")
#: shapes only novel subjects have (see :mod:`sdft.toyworld.subjects`); no vocabulary may hold them
SUBJECT_SHAPES = ("creature", "robot", "bird")
#: the named object colours, 8-bit RGB, chosen far from each other and from every background
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 190, 70),
    "cyan": (20, 190, 200),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "pink": (240, 110, 190),
}
#: patterns are drawn in the object's colour darkened by this factor
SHADE = 0.4
PATTERNS = ("plain", "striped", "dotted", "checkered")
SIZES = ("small", "large")
POSITIONS = ("left", "centre", "right")
BACKGROUNDS = ("grey", "cream", "sky", "grass", "brick", "water")
#: how the main object stands to the second one: "a red star above a blue circle"
RELATIONS = ("next to", "above", "below")
#: the attributes a held-out combination may name
ATTRIBUTES = ("shape", "color", "pattern", "size", "position", "background")

Combination = tuple[tuple[str, str], ...]


def shade(color: str) -> tuple[int, int, int]:
    """The RGB of the pattern drawn on an object of the named colour."""
    return tuple(round(channel * SHADE) for channel in COLORS[color])


@dataclass(frozen=True)
class Scene:
    """What one toy-world image shows.

    Args:
        shape: the main object's shape (``SHAPES``, or a subject's shape in ``SUBJECT_SHAPES``).
        color: its colour, a key of ``COLORS``.
        pattern: one of ``PATTERNS``, drawn in the darkened colour.
        size: ``small`` or ``large``.
        position: ``left``, ``centre`` or ``right``.
        background: one of ``BACKGROUNDS``.
        relation: how the main object stands to the second object (``RELATIONS``), or None for no second object.
        second_shape: the second object's shape (plain, 0.6 times the main object's size).
        second_color: the second object's colour.
    """

    shape: str
    color: str
    pattern: str
    size: str
    position: str
    background: str
    relation: str | None = None
    second_shape: str | None = None
    second_color: str | None = None

    def __post_init__(self) -> None:
        choices = {
            "shape": SHAPES + SUBJECT_SHAPES,
            "color": tuple(COLORS),
            "pattern": PATTERNS,
            "size": SIZES,
            "position": POSITIONS,
            "background": BACKGROUNDS,
        }
        for key, allowed in choices.items():
            _check_value(f"Scene.{key}", getattr(self, key), allowed)
        second = (self.relation, self.second_shape, self.second_color)
        if any(value is None for value in second) and any(value is not None for value in second):
            raise ValueError("Scene: relation, second_shape and second_color are set together or not at all")
        if self.relation is not None:
            _check_value("Scene.relation", self.relation, RELATIONS)
            _check_value("Scene.second_shape", self.second_shape, SHAPES)
            _check_value("Scene.second_color", self.second_color, tuple(COLORS))

    def attributes(self) -> dict[str, str]:
        """The set attributes by name (the second object's only when there is one), as :func:`parse_caption`
        returns them."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Vocabulary:
    """The values scenes are drawn from; leave a value out, or hold a combination out, to keep it for testing.

    Args:
        shapes: world shapes to draw (``SHAPES``).
        colors: colour names to draw (keys of ``COLORS``).
        patterns: patterns to draw.
        sizes: sizes to draw.
        positions: positions to draw.
        backgrounds: backgrounds to draw.
        relations: relations of a second object.
        second_object_rate: the probability that a scene has a second object.
        held_out: combinations never drawn, each as ``(attribute, value)`` pairs; a combination of shape, colour
            and background also excludes the second object. Add them with :meth:`hold_out`.
    """

    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    patterns: tuple[str, ...] = PATTERNS
    sizes: tuple[str, ...] = SIZES
    positions: tuple[str, ...] = POSITIONS
    backgrounds: tuple[str, ...] = BACKGROUNDS
    relations: tuple[str, ...] = RELATIONS
    second_object_rate: float = 0.25
    held_out: tuple[Combination, ...] = field(default=())

    def __post_init__(self) -> None:
        known = {
            "shapes": SHAPES,
            "colors": tuple(COLORS),
            "patterns": PATTERNS,
            "sizes": SIZES,
            "positions": POSITIONS,
            "backgrounds": BACKGROUNDS,
            "relations": RELATIONS,
        }
        for name, allowed in known.items():
            values = getattr(self, name)
            if not values and name != "relations":
                raise ValueError(f"Vocabulary.{name} is empty; keep at least one of {', '.join(allowed)}")
            for value in values:
                _check_value(f"Vocabulary.{name}", value, allowed)
        if not 0.0 <= self.second_object_rate <= 1.0:
            raise ValueError(f"Vocabulary.second_object_rate is a probability in [0, 1], got {self.second_object_rate}")
        if self.second_object_rate > 0 and not self.relations:
            raise ValueError("Vocabulary.relations is empty but second_object_rate > 0; set the rate to 0")
        for combination in self.held_out:
            for key, _ in combination:
                _check_value("Vocabulary.held_out attribute", key, ATTRIBUTES)

    def hold_out(self, **values: str) -> Vocabulary:
        """This vocabulary with one more combination held out, e.g. ``hold_out(color="red", shape="star")``."""
        if not values:
            raise ValueError("Vocabulary.hold_out needs at least one attribute=value")
        return replace(self, held_out=(*self.held_out, tuple(sorted(values.items()))))

    def allows(self, scene: Scene) -> bool:
        """Whether ``scene`` avoids every held-out combination (for the main and the second object)."""
        primary = scene.attributes()
        second = {"shape": scene.second_shape, "color": scene.second_color, "background": scene.background}
        for combination in self.held_out:
            if all(primary.get(key) == value for key, value in combination):
                return False
            if scene.relation is not None and all(second.get(key) == value for key, value in combination):
                return False
        return True


MAX_DRAWS = 10_000


def sample_scene(rng: np.random.Generator, vocabulary: Vocabulary | None = None) -> Scene:
    """A scene with every attribute drawn uniformly from ``vocabulary``, redrawn until no combination is held out.

    Args:
        rng: the source of the draw.
        vocabulary: the values to draw from; None for the whole world (``Vocabulary()``).
    """
    vocabulary = Vocabulary() if vocabulary is None else vocabulary
    for _ in range(MAX_DRAWS):
        scene = _draw_scene(rng, vocabulary)
        if vocabulary.allows(scene):
            return scene
    raise ValueError(f"Vocabulary.held_out leaves no scene in {MAX_DRAWS} draws; hold out fewer combinations")


def _draw_scene(rng: np.random.Generator, vocabulary: Vocabulary) -> Scene:
    """One uniform draw of every attribute, held-out combinations included."""

    def pick(values: tuple[str, ...]) -> str:
        return values[int(rng.integers(len(values)))]

    primary = {
        "shape": pick(vocabulary.shapes),
        "color": pick(vocabulary.colors),
        "pattern": pick(vocabulary.patterns),
        "size": pick(vocabulary.sizes),
        "position": pick(vocabulary.positions),
        "background": pick(vocabulary.backgrounds),
    }
    if rng.random() >= vocabulary.second_object_rate:
        return Scene(**primary)
    relation, shape, color = pick(vocabulary.relations), pick(vocabulary.shapes), pick(vocabulary.colors)
    return Scene(**primary, relation=relation, second_shape=shape, second_color=color)


# -- captions ---------------------------------------------------------------------------------------------------------

#: each background as a place ("on a brick wall") and as a thing ("a brick wall")
BACKGROUND_PHRASES = {
    "grey": ("on a grey background", "a grey background"),
    "cream": ("on a cream background", "a cream background"),
    "sky": ("in the sky", "the sky"),
    "grass": ("on grass", "grass"),
    "brick": ("on a brick wall", "a brick wall"),
    "water": ("on water", "water"),
}
POSITION_PHRASES = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
TEMPLATES = (
    "a {size} {color} {pattern} {shape} {position}{second}, {place}",
    "a photo of a {size} {pattern} {color} {shape} {place}, {position}{second}",
    "a drawing of a {size} {pattern} {color} {shape} {position}{second} {place}",
    "{thing} behind a {size} {color} {pattern} {shape} {position}{second}",
)


def caption(scene: Scene, template: int = 0) -> str:
    """The scene in English, e.g. ``a large red striped star on the left, on a brick wall``.

    Args:
        scene: the scene to describe.
        template: which of ``TEMPLATES`` to use (a dataset draws it per image so captions vary).
    """
    place, thing = BACKGROUND_PHRASES[scene.background]
    second = ""
    if scene.relation is not None:
        second = f" {scene.relation} {with_article(f'{scene.second_color} {scene.second_shape}')}"
    return TEMPLATES[template].format(
        size=scene.size,
        color=scene.color,
        pattern=scene.pattern,
        shape=scene.shape,
        position=POSITION_PHRASES[scene.position],
        second=second,
        place=place,
        thing=thing,
    )


def with_article(phrase: str) -> str:
    """``phrase`` after ``a`` or ``an``."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption or prompt mentions, keyed as :meth:`Scene.attributes` keys them.

    The second object is read from ``<relation> a <colour> <shape>``; the main object's words are read from the
    rest. Words outside the world (``sks``, ``photo``) are ignored, so prompts written by hand parse too.

    Args:
        text: a caption of any template, or a prompt such as ``a photo of sks creature on grass``.
    """
    text = " ".join(text.lower().replace(",", " ").split())
    found: dict[str, str] = {}
    second = re.search(
        rf"\b({_alternatives(RELATIONS)}) an? ({_alternatives(COLORS)}) ({_alternatives(SHAPES)})\b", text
    )
    if second:
        found.update(relation=second[1], second_color=second[2], second_shape=second[3])
        text = text[: second.start()] + " " + text[second.end() :]
    for key, phrases in (("background", _background_phrases()), ("position", _position_phrases())):
        for phrase, value in phrases.items():
            pattern = rf"\b{re.escape(phrase)}\b"
            if re.search(pattern, text):
                found.setdefault(key, value)
                text = re.sub(pattern, " ", text)
    words = set(text.split())
    for key, values in (("shape", SHAPES + SUBJECT_SHAPES), ("color", COLORS), ("pattern", PATTERNS), ("size", SIZES)):
        mentioned = [value for value in values if value in words]
        if mentioned:
            found[key] = mentioned[0]
    return found


def _alternatives(values) -> str:
    return "|".join(re.escape(value) for value in values)


def _background_phrases() -> dict[str, str]:
    """Every phrase that names a background, longest first so ``a grey background`` wins over ``grey``."""
    phrases = {phrase: name for name, pair in BACKGROUND_PHRASES.items() for phrase in pair}
    phrases.update({"gray background": "grey", "bricks": "brick", "the grass": "grass", "sea": "water"})
    return dict(sorted(phrases.items(), key=lambda item: -len(item[0])))


def _position_phrases() -> dict[str, str]:
    phrases = {phrase: name for name, phrase in POSITION_PHRASES.items()}
    phrases.update({"in the center": "centre", "in the middle": "centre", "at the left": "left"})
    phrases.update({"at the right": "right"})
    return phrases


def _check_value(key: str, value: Any, allowed: tuple[str, ...] | dict) -> None:
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(allowed)}")
