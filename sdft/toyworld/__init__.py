"""The toy world: procedurally drawn scenes whose every attribute is known, for judging fine-tuning and checkpoint
selection against the truth.

- :mod:`~sdft.toyworld.scenes`: :class:`Scene`, :class:`Vocabulary`, :func:`sample_scene`, :func:`caption`,
  :func:`parse_caption`;
- :mod:`~sdft.toyworld.draw`: :func:`draw` and :func:`render` (with the objects' true masks);
- :mod:`~sdft.toyworld.datasets`: :func:`world_dataset` (generated on demand) and :func:`write_folder` (a captioned
  folder for :class:`sdft.data.CaptionDataModule`);
- :mod:`~sdft.toyworld.subjects`: a novel :class:`Subject` the world never draws, :func:`subject_photos` (an
  instance folder for :class:`sdft.data.SubjectDataModule`) and :func:`subject_prompts`;
- :mod:`~sdft.toyworld.oracle`: the judge (:func:`~sdft.toyworld.oracle.score`,
  :func:`~sdft.toyworld.oracle.subject_present`), which training and selection never use.

Only numpy and Pillow are needed.
"""

from __future__ import annotations

from sdft.toyworld.datasets import WorldDataset, WorldExample, world_dataset, write_folder
from sdft.toyworld.draw import Drawing, draw, render
from sdft.toyworld.scenes import Scene, Vocabulary, caption, parse_caption, sample_scene
from sdft.toyworld.subjects import Subject, subject_photos, subject_prompts

__all__ = [
    "Drawing",
    "Scene",
    "Subject",
    "Vocabulary",
    "WorldDataset",
    "WorldExample",
    "caption",
    "draw",
    "parse_caption",
    "render",
    "sample_scene",
    "subject_photos",
    "subject_prompts",
    "world_dataset",
    "write_folder",
]
