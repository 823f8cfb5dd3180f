"""Training the toy world's metric backbones (:mod:`sdft.toyworld.encoders`), deterministically from a seed.

- The CLIP learns from :func:`~sdft.toyworld.datasets.world_dataset`'s images and captions with CLIP's symmetric
  InfoNCE and a learned temperature (arXiv 2103.00020): each image against every caption of its batch.
- The DINO stand-in learns, as SimCLR does (arXiv 2002.05709), to pick the other view of each image among the batch,
  but its two views are two drawings of one object (same shape, colour and pattern) with everything else drawn
  afresh: size, position, background, a second object, the renderer's jitter, and a horizontal flip. Photometric
  augmentations of one drawing (crops, colour jitter) would keep the background, so the cheapest way to match views
  would be to recognise backgrounds, the very thing subject fidelity must ignore; colour jitter would also teach it
  to ignore colour, which is part of the object's identity here. The renderer knows the nuisances, so the views
  vary exactly those. A batch holds distinct objects, so no negative is secretly a positive.

Example ``i`` of a run depends only on the seed and ``i``, and the weights only on the seed, so a run is repeatable;
a run cut short by its time budget equals the first steps of a longer one (the learning-rate schedule follows
``steps``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdft.evaluation.features import ClipFeatures, preprocess_images
from sdft.toyworld.datasets import world_dataset
from sdft.toyworld.draw import draw
from sdft.toyworld.encoders import ToyDinoFeatures
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene

#: every object identity the DINO stand-in tells apart: (shape, colour, pattern)
IDENTITIES = tuple((shape, color, pattern) for shape in SHAPES for color in COLORS for pattern in PATTERNS)
#: the share of views that show a second object (as the world's scenes do)
SECOND_OBJECT_RATE = 0.25
#: CLIP caps its learned inverse temperature at 100
MAX_LOG_SCALE = math.log(100.0)


def info_nce(first: Tensor, second: Tensor, log_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: row ``i`` of ``first`` and of ``second`` are a positive pair, every other row of the other
    set a negative; the mean of the cross-entropies over rows and over columns of ``exp(log_scale) * cosine``
    (CLIP, arXiv 2103.00020, Fig. 3; SimCLR's NT-Xent across two views, arXiv 2002.05709).

    Args:
        first: (N, D) embeddings, not necessarily normalised.
        second: (N, D) embeddings paired row by row with ``first``.
        log_scale: scalar, the log of the inverse temperature.

    Returns:
        the scalar loss; ``log(N)`` when all embeddings are alike.
    """
    logits = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T * log_scale.exp()
    labels = torch.arange(len(first), device=first.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def as_tensor(images: Iterable) -> Tensor:
    """PIL images or (H, W, 3) uint8 arrays -> a (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).contiguous()


def caption_batch(seed: int, start: int, count: int, size: int = 64) -> tuple[Tensor, list[str]]:
    """Examples ``start`` to ``start + count`` of the world dataset of ``seed``: (N, 3, size, size) uint8 images and
    their captions."""
    dataset = world_dataset(seed, start + count, size=size)
    examples = [dataset[index] for index in range(start, start + count)]
    return as_tensor(example.image for example in examples), [example.caption for example in examples]


def object_view(identity: tuple[str, str, str], rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One drawing of the object ``(shape, colour, pattern)`` with size, position, background, an optional second
    object, jitter and a horizontal flip drawn from ``rng``: (size, size, 3) uint8."""

    def pick(values):
        return values[int(rng.integers(len(values)))]

    second = ()
    if rng.random() < SECOND_OBJECT_RATE:
        second = (pick(RELATIONS), pick(SHAPES), pick(tuple(COLORS)))
    image = np.asarray(draw(Scene(*identity, pick(SIZES), pick(POSITIONS), pick(BACKGROUNDS), *second), size, rng))
    return image[:, ::-1] if rng.random() < 0.5 else image


def view_pairs(rng: np.random.Generator, count: int, size: int = 64) -> tuple[Tensor, Tensor, np.ndarray]:
    """Two drawings each of ``count`` distinct objects: two (N, 3, size, size) uint8 batches and the objects'
    indices into ``IDENTITIES``."""
    if count > len(IDENTITIES):
        raise ValueError(f"batch_size {count} exceeds the {len(IDENTITIES)} distinct objects; lower it")
    chosen = rng.choice(len(IDENTITIES), count, replace=False)
    first = as_tensor(object_view(IDENTITIES[index], rng, size) for index in chosen)
    second = as_tensor(object_view(IDENTITIES[index], rng, size) for index in chosen)
    return first, second, chosen


# -- the loop ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainingLog:
    """What a run did: the steps it took, its wall time in seconds (of which ``probe_seconds`` went to probes),
    every step's loss, and the probes taken on the way (``{"step": ..., "seconds": ..., <measure>: ...}``)."""

    steps: int = 0
    seconds: float = 0.0
    probe_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    probes: list[dict[str, float]] = field(default_factory=list)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """The rate of step ``step`` (from 0): a linear warm-up over ``warmup`` steps, then a cosine decay to zero at
    ``steps`` (arXiv 1608.03983)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def doubling_steps(first: int, steps: int) -> list[int]:
    """``first``, twice that, and so on below ``steps``, then ``steps``: where to probe a run of ``steps`` steps."""
    marks = []
    while 0 < first < steps:
        marks.append(first)
        first *= 2
    return [*marks, steps]


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of two or more dimensions decay; biases, norms, embeddings' scales and the temperature do not."""
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    return [
        {"params": [parameter for parameter in parameters if parameter.ndim >= 2], "weight_decay": weight_decay},
        {"params": [parameter for parameter in parameters if parameter.ndim < 2], "weight_decay": 0.0},
    ]


def fit(
    step_loss: Callable[[int], Tensor],
    module: nn.Module,
    steps: int,
    seconds: float = math.inf,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup: int = 20,
    probe: Callable[[], dict[str, float]] | None = None,
    probe_at: Iterable[int] = (),
) -> TrainingLog:
    """Train ``module`` with AdamW on ``step_loss(step)`` for ``steps`` steps or until ``seconds`` have passed,
    probing (in eval mode) after each step in ``probe_at`` and after the last; leave it frozen in eval mode.

    Args:
        step_loss: the loss of one step, given the step's index.
        module: the trained module (its parameters are unfrozen here).
        steps: the number of steps; the learning-rate schedule ends there.
        seconds: the time budget; the run stops after the step that passes it.
        lr: the peak learning rate.
        weight_decay: AdamW's decoupled weight decay on matrices and kernels.
        warmup: the steps of the linear warm-up.
        probe: measures the module (:mod:`sdft.toyworld.encoder_probes`); None for none.
        probe_at: the steps after which to probe.
    """
    module.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(parameter_groups(module, weight_decay), lr=lr)
    log, marks, start = TrainingLog(), set(probe_at), time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.losses.append(round(loss.item(), 5))
        log.steps, log.seconds = step + 1, time.perf_counter() - start
        finished = log.seconds >= seconds or log.steps == steps
        if probe is not None and (log.steps in marks or finished):
            probed = time.perf_counter()
            log.probes.append({"step": log.steps, "seconds": round(log.seconds, 2), **_probed(module, probe)})
            log.probe_seconds += time.perf_counter() - probed
        if finished:
            break
    module.requires_grad_(False).eval()
    return log


def _probed(module: nn.Module, probe: Callable[[], dict[str, float]]) -> dict[str, float]:
    module.eval()
    try:
        return {key: round(value, 4) for key, value in probe().items()}
    finally:
        module.train()


def train_clip(
    features: ClipFeatures,
    seed: int,
    steps: int,
    batch_size: int = 128,
    **options,
) -> TrainingLog:
    """Train a toy CLIP (:func:`sdft.toyworld.encoders.build_clip`) on the world dataset of ``seed``, step ``s``
    on its examples ``s * batch_size`` onwards, with symmetric InfoNCE at a learned temperature.

    Args:
        features: the CLIP, on the device to train on.
        seed: the seed of the dataset.
        steps: the number of steps.
        batch_size: images (and captions) per step, each the others' negatives.
        options: passed to :func:`fit` (``seconds``, ``lr``, ``probe``, ...).
    """
    backbone = features.backbone

    def step_loss(step: int) -> Tensor:
        images, captions = caption_batch(seed, step * batch_size, batch_size)
        with torch.no_grad():
            backbone.log_scale.clamp_(max=MAX_LOG_SCALE)
        device = features.mean.device
        image_embeddings = backbone.embed_pixels(pixels_for(features, images))
        return info_nce(image_embeddings, backbone.embed_prompts(captions, device), backbone.log_scale)

    return fit(step_loss, backbone, steps, **options)


def train_dino(
    features: ToyDinoFeatures,
    seed: int,
    steps: int,
    batch_size: int = 64,
    temperature: float = 0.1,
    **options,
) -> TrainingLog:
    """Train a DINO stand-in (:func:`sdft.toyworld.encoders.build_dino`) to match two drawings of one object among
    ``batch_size`` distinct objects (see the module docstring), step ``s`` drawn from the generator ``[seed, s]``.

    Args:
        features: the encoder, on the device to train on.
        seed: the seed of the drawings.
        steps: the number of steps.
        batch_size: objects per step (two drawings each), at most ``len(IDENTITIES)``.
        temperature: the softmax temperature (SimCLR's 0.1).
        options: passed to :func:`fit` (``seconds``, ``lr``, ``probe``, ...).
    """
    log_scale = torch.tensor(-math.log(temperature), device=features.mean.device)

    def step_loss(step: int) -> Tensor:
        first, second, _ = view_pairs(np.random.default_rng([seed, step]), batch_size)
        embed = features.encoder
        return info_nce(embed(pixels_for(features, first)), embed(pixels_for(features, second)), log_scale)

    return fit(step_loss, features.encoder, steps, **options)


def pixels_for(features: ClipFeatures | ToyDinoFeatures, images: Tensor) -> Tensor:
    """(N, 3, H, W) uint8 images -> the normalised pixels ``features`` embeds, on its device (its own
    preprocessing, so training sees what evaluation sees)."""
    side = features.image_size
    return preprocess_images(images.to(features.mean.device), side, side, features.mean, features.std)
