"""How well the toy world's metric backbones do their jobs, measured on drawings of their own seed (give one no
training run used).

- :func:`caption_ranking`: how often a drawn image is nearer its own caption than the same caption with one
  attribute changed (what CLIP-T must tell apart), and image-to-caption retrieval among ``count``;
- :func:`object_ranking`: how often two drawings of one object (same shape, colour and pattern; all else drawn
  afresh) are nearer than a drawing and another object, any other or one differing in a single attribute (what DINO
  and CLIP-I must tell apart), and retrieval of the other drawing among ``count``;
- :func:`subject_ranking`: the same for the novel subject, which no training run draws: its photos against itself
  elsewhere, against itself in other colours and against world objects of its colour and pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from sdft.evaluation.features import ClipFeatures
from sdft.toyworld.datasets import world_dataset
from sdft.toyworld.draw import draw
from sdft.toyworld.encoder_training import IDENTITIES, as_tensor, object_view, view_pairs
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, SHAPES, SIZES, TEMPLATES, Scene, caption
from sdft.toyworld.subjects import PHOTO_BACKGROUNDS, Subject

#: the attributes a wrong caption changes, and their values
CHOICES = {
    "color": tuple(COLORS),
    "background": BACKGROUNDS,
    "shape": SHAPES,
    "pattern": PATTERNS,
    "position": POSITIONS,
    "size": SIZES,
}
Embed = Callable[[Tensor], Tensor]


def changed(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    """``scene`` with ``attribute`` set to another of its values, drawn from ``rng``."""
    others = [value for value in CHOICES[attribute] if value != getattr(scene, attribute)]
    return replace(scene, **{attribute: others[int(rng.integers(len(others)))]})


def pairwise_wins(anchors: Tensor, positives: Tensor, negatives: Tensor) -> float:
    """The share of rows where cos(anchor, positive) > cos(anchor, negative); (N, D) L2-normalised embeddings."""
    return ((anchors * positives).sum(-1) > (anchors * negatives).sum(-1)).float().mean().item()


def top1(queries: Tensor, keys: Tensor) -> float:
    """The share of queries whose nearest key is their own (row ``i`` of ``keys``); (N, D) normalised."""
    return ((queries @ keys.T).argmax(dim=1) == torch.arange(len(queries), device=queries.device)).float().mean().item()


@torch.no_grad()
def caption_ranking(clip: ClipFeatures, seed: int, count: int = 200) -> dict[str, float]:
    """``caption_vs_<attribute>``: the share of ``count`` drawn scenes nearer their caption than the caption with
    ``<attribute>`` changed (same template); ``caption_top1``: image-to-caption retrieval among the ``count``.

    Args:
        clip: the CLIP to measure.
        seed: the seed of the world dataset drawn.
        count: the number of scenes.
    """
    dataset = world_dataset(seed, count)
    scenes = [dataset.describe(index)[0] for index in range(count)]
    images = clip.encode_images(as_tensor(dataset.render(index).image for index in range(count)))
    captions = clip.encode_texts([caption(scene, index % len(TEMPLATES)) for index, scene in enumerate(scenes)])
    rng = np.random.default_rng([seed, 1])
    rates = {"caption_top1": top1(images, captions)}
    for attribute in CHOICES:
        wrong = [caption(changed(scene, attribute, rng), index % len(TEMPLATES)) for index, scene in enumerate(scenes)]
        rates[f"caption_vs_{attribute}"] = pairwise_wins(images, captions, clip.encode_texts(wrong))
    return rates


@torch.no_grad()
def object_ranking(embed: Embed, seed: int, count: int = 200, prefix: str = "object") -> dict[str, float]:
    """``<prefix>_vs_other``: the share of ``count`` objects whose two drawings are nearer than the first drawing
    and another object's; ``<prefix>_vs_<attribute>``: the same against a drawing of the object with only its
    shape, colour or pattern changed; ``<prefix>_top1``: retrieval of the second drawing among the ``count``.

    Args:
        embed: (N, 3, H, W) uint8 images -> (N, D) normalised embeddings (a DINO, or a CLIP's image view).
        seed: the seed of the drawings.
        count: the number of objects, at most ``len(IDENTITIES)``.
        prefix: names the measures.
    """
    rng = np.random.default_rng([seed, 0])
    first, second, chosen = view_pairs(rng, count)
    anchors, positives = embed(first), embed(second)
    shifted = torch.roll(positives, 1, dims=0)  # distinct objects: every row's neighbour is another object
    rates = {f"{prefix}_vs_other": pairwise_wins(anchors, positives, shifted)}
    rates[f"{prefix}_top1"] = top1(anchors, positives)
    for position, attribute in enumerate(("shape", "color", "pattern")):
        others = [_changed_identity(IDENTITIES[index], position, attribute, rng) for index in chosen]
        negatives = embed(as_tensor(object_view(identity, rng) for identity in others))
        rates[f"{prefix}_vs_{attribute}"] = pairwise_wins(anchors, positives, negatives)
    return rates


def _changed_identity(identity: tuple[str, ...], position: int, attribute: str, rng: np.random.Generator):
    others = [value for value in CHOICES[attribute] if value != identity[position]]
    return (*identity[:position], others[int(rng.integers(len(others)))], *identity[position + 1 :])


@torch.no_grad()
def subject_ranking(embed: Embed, seed: int, count: int = 48, subject: Subject | None = None) -> dict[str, float]:
    """For the novel subject (by default the striped orange creature): the share of ``count`` (photo, elsewhere,
    impostor) triples where the subject on its photo backgrounds is nearer itself on another background and
    position than ``subject_vs_color``: itself in another colour, or ``subject_vs_world``: a world object of its
    colour and pattern there.

    Args:
        embed: (N, 3, H, W) uint8 images -> (N, D) normalised embeddings.
        seed: the seed of the drawings.
        count: the number of triples.
        subject: the subject; None for the default.
    """
    subject = Subject() if subject is None else subject
    rng = np.random.default_rng([seed, 2])

    def pick(values):
        return values[int(rng.integers(len(values)))]

    elsewhere = [b for b in BACKGROUNDS if b not in PHOTO_BACKGROUNDS]
    photos, placed, recoloured, world = [], [], [], []
    for _ in range(count):
        photos.append(draw(subject.scene(pick(PHOTO_BACKGROUNDS), pick(POSITIONS)), 64, rng))
        scene = subject.scene(pick(elsewhere), pick(POSITIONS))
        placed.append(draw(scene, 64, rng))
        recoloured.append(draw(replace(scene, color=pick([c for c in COLORS if c != subject.color])), 64, rng))
        world.append(draw(replace(scene, shape=pick(SHAPES)), 64, rng))
    anchors, positives = embed(as_tensor(photos)), embed(as_tensor(placed))
    return {
        "subject_vs_color": pairwise_wins(anchors, positives, embed(as_tensor(recoloured))),
        "subject_vs_world": pairwise_wins(anchors, positives, embed(as_tensor(world))),
    }
