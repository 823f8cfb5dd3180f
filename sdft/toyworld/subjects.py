"""Novel subjects: things the toy world never draws, photographed a few times to be learnt (DreamBooth's instance
data), with prompts that put them elsewhere.

A subject is a figure (a creature, a robot or a bird: shapes no :class:`~sdft.toyworld.scenes.Vocabulary` may hold)
in one of the world's colours and patterns, with white eyes and one accessory (a black top hat, an aqua crown or a
magenta bow tie). No world object has the accessories' or the eyes' colours, so
:func:`sdft.toyworld.oracle.subject_present` tells a subject apart from anything the base world shows, and from the
other subjects. The default subject is a striped orange creature in a top hat. ``DEVELOPMENT_SUBJECTS`` and
``HELD_OUT_SUBJECTS`` are two sets of four that together hold every pattern, figure and accessory and each colour
once: a selection rule may be tuned on the first and is only judged on the second.

A subject's photos use a narrow set of backgrounds; its evaluation prompts name the others, other positions and
other colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdft.files import write_atomic, write_folder_atomic, write_text_atomic
from sdft.toyworld.draw import draw
from sdft.toyworld.scenes import BACKGROUND_PHRASES, BACKGROUNDS, COLORS, POSITIONS, SUBJECT_SHAPES, Scene
from sdft.toyworld.shapes import ACCESSORIES, Part, subject_parts

#: the backgrounds of the subject's photos unless told otherwise
PHOTO_BACKGROUNDS = ("cream", "grey")
PROMPTS = "prompts.txt"


@dataclass(frozen=True)
class Subject:
    """A novel subject and the words that name it.

    Args:
        identifier: the rare token that stands for it in prompts.
        class_noun: its class, after the identifier (``sks creature``); any noun but another figure's name.
        color: the colour name of its body.
        pattern: the pattern of its body.
        shape: its figure, one of ``SUBJECT_SHAPES`` (never a world shape).
        accessory: what it wears, one of ``sdft.toyworld.shapes.ACCESSORIES``.
    """

    identifier: str = "sks"
    class_noun: str = "creature"
    color: str = "orange"
    pattern: str = "striped"
    shape: str = "creature"
    accessory: str = "top hat"

    def __post_init__(self) -> None:
        if self.shape not in SUBJECT_SHAPES:
            raise ValueError(f"Subject.shape {self.shape!r} is not one of {', '.join(SUBJECT_SHAPES)}")
        if self.class_noun in SUBJECT_SHAPES and self.class_noun != self.shape:
            raise ValueError(
                f"Subject.class_noun {self.class_noun!r} names another figure than shape {self.shape!r}; "
                f"use class_noun={self.shape!r}"
            )
        if self.accessory not in ACCESSORIES:
            raise ValueError(f"Subject.accessory {self.accessory!r} is not one of {', '.join(ACCESSORIES)}")
        Scene(self.shape, self.color, self.pattern, "large", "centre", "grey")  # checks colour and pattern

    @property
    def name(self) -> str:
        """The subject as prompts name it, e.g. ``sks creature``."""
        return f"{self.identifier} {self.class_noun}"

    def scene(self, background: str, position: str = "centre", size: str = "large") -> Scene:
        """A scene of the subject alone (draw it with :meth:`parts`)."""
        return Scene(self.shape, self.color, self.pattern, size, position, background)

    def parts(self) -> tuple[Part, ...]:
        """Its figure's coloured parts wearing its accessory, for :func:`sdft.toyworld.draw.render`."""
        return subject_parts(self.shape, self.accessory)


def _subject(identifier: str, shape: str, color: str, pattern: str, accessory: str) -> Subject:
    return Subject(identifier, shape, color, pattern, shape, accessory)


#: subjects a selection rule may be tuned on: every pattern, figure and accessory, four colours
DEVELOPMENT_SUBJECTS = (
    Subject(),
    _subject("zwx", "bird", "purple", "dotted", "crown"),
    _subject("qpv", "robot", "cyan", "checkered", "bow tie"),
    _subject("vkr", "robot", "green", "plain", "top hat"),
)
#: subjects only judged: every pattern, figure and accessory again, in the four other colours
HELD_OUT_SUBJECTS = (
    _subject("bxj", "bird", "pink", "checkered", "top hat"),
    _subject("tqm", "creature", "blue", "dotted", "bow tie"),
    _subject("jfy", "robot", "yellow", "striped", "crown"),
    _subject("wzp", "bird", "red", "plain", "crown"),
)


def subject_photos(
    folder: Path,
    subject: Subject | None = None,
    count: int = 5,
    backgrounds: tuple[str, ...] = PHOTO_BACKGROUNDS,
    seed: int = 0,
    size: int = 64,
) -> list[Path]:
    """Write ``count`` photos of the subject (``photo_00.png``, ...), taking turns over ``backgrounds`` at a random
    position each, and its evaluation prompts (``prompts.txt``, one per line): a folder for
    :class:`sdft.data.SubjectDataModule` (``instance_dir``) and ``SubjectEvaluator(prompts=<folder>/prompts.txt)``.
    The folder appears whole or not at all; equal seeds give equal bytes. Returns the photos' paths.

    Args:
        folder: the folder to write (replaced if it exists).
        subject: the subject; None for the default striped creature.
        count: how many photos (4 to 6 is usual for DreamBooth).
        backgrounds: the backgrounds of the photos, a narrow set; the prompts name the others.
        seed: the seed of positions, jitter and textures.
        size: the side of the photos in pixels.
    """
    subject = Subject() if subject is None else subject
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not backgrounds:
        raise ValueError("backgrounds is empty; give at least one of " + ", ".join(BACKGROUNDS))
    rng = np.random.default_rng(seed)
    scenes = [
        subject.scene(backgrounds[index % len(backgrounds)], POSITIONS[int(rng.integers(len(POSITIONS)))])
        for index in range(count)
    ]
    images = [draw(scene, size, rng, subject.parts()) for scene in scenes]
    names = [f"photo_{index:02d}.png" for index in range(count)]

    def build(staging: Path) -> None:
        for name, image in zip(names, images, strict=True):
            write_atomic(staging / name, lambda file, image=image: image.save(file, format="PNG"))
        write_text_atomic(staging / PROMPTS, "".join(f"{prompt}\n" for prompt in subject_prompts(subject, backgrounds)))

    write_folder_atomic(Path(folder), build)
    return [Path(folder) / name for name in names]


def subject_prompts(subject: Subject | None = None, backgrounds: tuple[str, ...] = PHOTO_BACKGROUNDS) -> list[str]:
    """Prompts that put the subject where its photos never show it: on every other background, at the sides, and
    in two other colours; :func:`sdft.toyworld.scenes.parse_caption` reads what each asks for.

    Args:
        subject: the subject; None for the default striped creature.
        backgrounds: the backgrounds of its photos (the prompts use the others).
    """
    subject = Subject() if subject is None else subject
    others = [name for name in BACKGROUNDS if name not in backgrounds] or list(BACKGROUNDS)
    places = [BACKGROUND_PHRASES[name][0] for name in others]
    own = np.array(COLORS[subject.color], float)
    farthest = sorted(COLORS, key=lambda name: -float(np.linalg.norm(np.array(COLORS[name]) - own)))[:2]
    prompts = [f"a photo of {subject.name} {place}" for place in places]
    prompts += [
        f"a photo of {subject.name} on the {side}, {places[index % len(places)]}"
        for index, side in enumerate(("left", "right"))
    ]
    prompts += [
        f"a photo of a {color} {subject.name} {places[index % len(places)]}" for index, color in enumerate(farthest)
    ]
    return prompts
