"""The selection benchmark's judge: how good a checkpoint's samples are, read by the oracle, on prompts and seeds
the evaluator never uses. Fixed before any benchmark run (the report names the commit of this file).

A step is judged on ``len(judge_prompts(...)) x len(JUDGE_SEEDS)`` images (64 by default): the subject put in
contexts its photos never show (the other backgrounds, each position, its own colour and two others), none of them
a prompt of the evaluator's (:func:`sdft.toyworld.subjects.subject_prompts`), at seeds the evaluator never draws.
Each image scores ``likeness x context``: how much of the subject (in the colour the prompt names) its main object
shows (:func:`sdft.toyworld.oracle.subject_likeness`, the mean of colour, pattern, silhouette, accessory and eyes),
times the share of the prompt's background and position the image shows. The subject at the cost of the prompt, or
the prompt without the subject, scores low. ``present`` (every feature read: the strict
:func:`~sdft.toyworld.oracle.subject_present`) is recorded beside it.

The oracle's own pick is cross-fitted: the best step by the images of one half of the seeds is scored by the images
of the other half, and the two ways round averaged, so the ceiling is not flattered by choosing and scoring on the
same noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from sdft.toyworld import oracle
from sdft.toyworld.scenes import BACKGROUND_PHRASES, BACKGROUNDS, COLORS, parse_caption
from sdft.toyworld.subjects import PHOTO_BACKGROUNDS, Subject, subject_prompts

#: the judge's seeds; the evaluator's are small numbers from 0
JUDGE_SEEDS = (1000, 1001, 1002, 1003)
#: prompts per subject: with 4 seeds, 64 images a step
JUDGE_PROMPTS = 16
JUDGED = ("score", "likeness", "context", "present")


@dataclass(frozen=True)
class Judgement:
    """The judge's reading of one image.

    Args:
        likeness: how much of the subject it shows, in [0, 1].
        context: the share of the prompt's background and position it shows, in [0, 1].
        present: whether every feature of the subject is read (strict presence).
    """

    likeness: float
    context: float
    present: bool

    @property
    def score(self) -> float:
        """``likeness x context``."""
        return self.likeness * self.context


def judge_prompts(subject: Subject, backgrounds: tuple[str, ...] = PHOTO_BACKGROUNDS) -> list[str]:
    """``JUDGE_PROMPTS`` prompts (4 a background) that put the subject where its photos never show it, none of them
    one of the evaluator's prompts: on each other background, in its own colour in the centre and at one side, and
    in the two colours farthest from its own, at the other side and in the centre.

    Args:
        subject: the subject.
        backgrounds: the backgrounds of its photos (the prompts use the others).
    """
    places = [BACKGROUND_PHRASES[name][0] for name in BACKGROUNDS if name not in backgrounds]
    own = np.array(COLORS[subject.color], float)
    far, farther = sorted(COLORS, key=lambda name: -float(np.linalg.norm(np.array(COLORS[name]) - own)))[:2]
    name = subject.name
    prompts = []
    for index, place in enumerate(places):
        side, other = ("right", "left") if index % 2 == 0 else ("left", "right")
        prompts += [
            f"a photo of {name} in the centre, {place}",
            f"a photo of {name} on the {side}, {place}",
            f"a photo of a {far} {name} on the {other}, {place}",
            f"a photo of a {farther} {name} in the centre, {place}",
        ]
    evaluator = set(subject_prompts(subject, backgrounds))
    return [prompt for prompt in prompts if prompt not in evaluator][:JUDGE_PROMPTS]


def judge_image(image: Image.Image, prompt: str, subject: Subject) -> Judgement:
    """Read one generated image against its prompt.

    Args:
        image: the sample.
        prompt: the prompt it was generated from (its colour, background and position are read from it).
        subject: the subject it should show.
    """
    expected = parse_caption(prompt)
    asked = replace(subject, color=expected.get("color", subject.color))
    context = {key: value for key, value in expected.items() if key in ("background", "position")}
    agrees = oracle.score(image, context)
    return Judgement(
        likeness=oracle.subject_likeness(image, asked)["likeness"],
        context=float(np.mean(list(agrees.values()))) if agrees else 1.0,
        present=bool(oracle.subject_present(image, asked)),
    )


def summarize(judgements: Iterable[Judgement]) -> dict[str, float]:
    """The means of ``score``, ``likeness``, ``context`` and ``present`` over some images."""
    items = list(judgements)
    if not items:
        raise ValueError("no image to summarize")
    return {key: float(np.mean([getattr(item, key) for item in items])) for key in JUDGED}


def judge_steps(records: Iterable[tuple[int, int, Judgement]]) -> dict[int, dict]:
    """Per step: the means over all its images, and over each half of the seeds (``halves``: two dicts).

    Args:
        records: (step, seed, judgement) of every judged image.
    """
    by_step: dict[int, list[tuple[int, Judgement]]] = {}
    for step, seed, judgement in records:
        by_step.setdefault(step, []).append((seed, judgement))
    halves = seed_halves()
    return {
        step: {
            **summarize(judgement for _, judgement in items),
            "images": len(items),
            "halves": [summarize(j for seed, j in items if seed in half) for half in halves],
        }
        for step, items in sorted(by_step.items())
    }


def seed_halves(seeds: Sequence[int] = JUDGE_SEEDS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The judge's seeds in two interleaved halves (even and odd positions)."""
    return tuple(seeds[0::2]), tuple(seeds[1::2])


def cross_fitted_oracle(judged: Mapping[int, Mapping], steps: Sequence[int]) -> tuple[float, tuple[int, int]]:
    """The oracle's score without the optimism of choosing on the images it is scored on: the step best by one half
    of the seeds, scored on the other half, both ways round, averaged. Returns (score, the two chosen steps).

    Args:
        judged: :func:`judge_steps`' result.
        steps: the steps the oracle may choose (those after the base model).
    """
    picks = []
    scores = []
    for choose, score in ((0, 1), (1, 0)):
        best = max(steps, key=lambda step: judged[step]["halves"][choose]["score"])
        picks.append(best)
        scores.append(judged[best]["halves"][score]["score"])
    return float(np.mean(scores)), (picks[0], picks[1])
