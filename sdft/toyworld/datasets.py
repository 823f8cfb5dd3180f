"""Toy-world datasets: captioned scenes generated on demand from a seed, and written as a captioned folder only when
asked.

Example ``i`` of a dataset depends only on the seed, ``i`` and the vocabulary: its scene and caption template come
from the generator seeded ``[seed, i, 0]``, its jitter and background texture from ``[seed, i, 1]``, so any example
can be redrawn alone, in any order, in any process. :class:`ClutterDataset` draws uncaptioned clutter
(:mod:`sdft.toyworld.clutter`) the same way, example ``i`` from the generator seeded ``[seed, i, 2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from sdft.files import write_atomic, write_folder_atomic, write_jsonl
from sdft.toyworld.clutter import draw_clutter
from sdft.toyworld.draw import Drawing, render
from sdft.toyworld.scenes import TEMPLATES, Scene, Vocabulary, caption, sample_scene

METADATA = "metadata.jsonl"


class WorldExample(NamedTuple):
    """One example: the drawn image, its caption, and the scene it shows."""

    image: Image.Image
    caption: str
    scene: Scene


class WorldDataset(Sequence[WorldExample]):
    """``count`` captioned toy-world scenes, drawn when indexed (nothing is stored).

    Args:
        seed: the dataset's seed.
        count: the number of examples.
        vocabulary: the values scenes are drawn from; None for the whole world.
        size: the side of the images in pixels.
    """

    def __init__(self, seed: int, count: int, vocabulary: Vocabulary | None = None, size: int = 64) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.seed, self.count, self.size = seed, count, size
        self.vocabulary = Vocabulary() if vocabulary is None else vocabulary

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> WorldExample:
        scene, text = self.describe(index)
        return WorldExample(self.render(index).image, text, scene)

    def describe(self, index: int) -> tuple[Scene, str]:
        """Example ``index``'s scene and caption, without drawing it."""
        rng = np.random.default_rng([self.seed, self._checked(index), 0])
        scene = sample_scene(rng, self.vocabulary)
        return scene, caption(scene, int(rng.integers(len(TEMPLATES))))

    def render(self, index: int) -> Drawing:
        """Example ``index`` drawn, with the true masks of its objects (the oracle's ground truth)."""
        index = self._checked(index)
        return render(self.describe(index)[0], self.size, np.random.default_rng([self.seed, index, 1]))

    def _checked(self, index: int) -> int:
        """``index`` as a position in [0, count); negative indices count from the end."""
        if not -self.count <= index < self.count:
            raise IndexError(f"example {index} is out of range for a dataset of {self.count}")
        return index % self.count


class ClutterDataset(Sequence[Drawing]):
    """``count`` clutter drawings (see :mod:`sdft.toyworld.clutter`) with the masks of what is drawn, drawn when
    indexed: content the world never draws, for training an autoencoder.

    Args:
        seed: the dataset's seed; equal seeds give equal drawings.
        count: the number of drawings.
        size: the side of the images in pixels.
    """

    def __init__(self, seed: int, count: int, size: int = 64) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.seed, self.count, self.size = seed, count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Drawing:
        if not -self.count <= index < self.count:
            raise IndexError(f"drawing {index} is out of range for a dataset of {self.count}")
        return draw_clutter(self.size, np.random.default_rng([self.seed, index % self.count, 2]))


def world_dataset(seed: int, count: int, vocabulary: Vocabulary | None = None, size: int = 64) -> WorldDataset:
    """``count`` (image, caption, scene) examples of the toy world, generated on demand (see :class:`WorldDataset`).

    Args:
        seed: the dataset's seed; equal seeds give equal examples.
        count: the number of examples.
        vocabulary: the values scenes are drawn from; None for the whole world.
        size: the side of the images in pixels.
    """
    return WorldDataset(seed, count, vocabulary, size)


def write_folder(folder: Path, dataset: WorldDataset) -> Path:
    """Write every example as ``00000.png``, ... with a ``metadata.jsonl`` of ``file_name``, ``text`` (the caption)
    and ``scene`` (its attributes): the folder :class:`sdft.data.CaptionDataModule` reads. The folder appears whole
    or not at all, replacing any earlier one.

    Args:
        folder: the folder to write.
        dataset: the examples.
    """

    def build(staging: Path) -> None:
        digits = max(5, len(str(len(dataset) - 1)))
        rows = []
        for index in range(len(dataset)):
            image, text, scene = dataset[index]
            name = f"{index:0{digits}d}.png"
            write_atomic(staging / name, lambda file, image=image: image.save(file, format="PNG"))
            rows.append({"file_name": name, "text": text, "scene": scene.attributes()})
        write_jsonl(staging / METADATA, rows)

    write_folder_atomic(Path(folder), build)
    return Path(folder)
