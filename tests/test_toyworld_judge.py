"""The selection benchmark's judge: its prompts are none of the evaluator's, it reads drawn images as their prompts
say, and the oracle's pick is cross-fitted over two halves of the seeds."""

from __future__ import annotations

import numpy as np
import pytest

from sdft.toyworld import Scene, draw
from sdft.toyworld.judge import (
    JUDGE_PROMPTS,
    JUDGE_SEEDS,
    Judgement,
    cross_fitted_oracle,
    judge_image,
    judge_prompts,
    judge_steps,
    seed_halves,
)
from sdft.toyworld.scenes import parse_caption
from sdft.toyworld.subjects import DEVELOPMENT_SUBJECTS, HELD_OUT_SUBJECTS, PHOTO_BACKGROUNDS, Subject, subject_prompts

SUBJECTS = DEVELOPMENT_SUBJECTS + HELD_OUT_SUBJECTS


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.identifier)
def test_the_judge_prompts_put_every_subject_elsewhere_and_none_is_the_evaluators(subject):
    prompts = judge_prompts(subject)
    assert len(prompts) == len(set(prompts)) == JUDGE_PROMPTS and len(JUDGE_SEEDS) * JUDGE_PROMPTS >= 64
    assert not set(prompts) & set(subject_prompts(subject))
    asked = [parse_caption(prompt) for prompt in prompts]
    assert all(subject.name in prompt for prompt in prompts)
    backgrounds = [ask["background"] for ask in asked]
    assert not set(backgrounds) & set(PHOTO_BACKGROUNDS) and all(backgrounds.count(b) == 4 for b in set(backgrounds))
    assert {ask["position"] for ask in asked} == {"left", "centre", "right"}
    assert sum("color" not in ask for ask in asked) == JUDGE_PROMPTS // 2  # half in the subject's own colour


def test_the_judge_scores_the_subject_where_the_prompt_puts_it():
    subject, rng = Subject(), np.random.default_rng(0)
    prompt = f"a photo of {subject.name} on the left, on grass"
    right = judge_image(draw(subject.scene("grass", "left"), 64, rng, subject.parts()), prompt, subject)
    assert right.likeness == pytest.approx(1.0) and right.context == 1.0 and right.present and right.score == 1.0
    elsewhere = judge_image(draw(subject.scene("brick", "right"), 64, rng, subject.parts()), prompt, subject)
    assert elsewhere.likeness == pytest.approx(1.0) and elsewhere.context == 0.0 and elsewhere.score == 0.0
    circle = judge_image(draw(Scene("circle", "red", "plain", "large", "left", "grass")), prompt, subject)
    assert circle.likeness < 0.5 and not circle.present and circle.context == 1.0
    blue = f"a photo of a blue {subject.name} in the centre, on grass"
    orange = judge_image(draw(subject.scene("grass"), 64, rng, subject.parts()), blue, subject)
    recoloured = Subject(color="blue")
    asked = judge_image(draw(recoloured.scene("grass"), 64, rng, recoloured.parts()), blue, subject)
    assert asked.present and not orange.present and orange.likeness < asked.likeness  # the colour asked for counts


def judgements(step_scores: dict[int, list[float]]):
    """(step, seed, judgement) records whose score is the given value per judge seed."""
    for step, scores in step_scores.items():
        for seed, score in zip(JUDGE_SEEDS, scores, strict=True):
            yield step, seed, Judgement(likeness=score, context=1.0, present=score > 0.5)


def test_steps_are_summarized_over_all_images_and_each_half_of_the_seeds():
    judged = judge_steps(judgements({0: [0.0, 0.2, 0.4, 0.6], 50: [1.0, 0.0, 1.0, 0.0]}))
    assert seed_halves() == ((1000, 1002), (1001, 1003))
    assert judged[0]["score"] == pytest.approx(0.3) and judged[0]["images"] == 4
    assert judged[0]["halves"][0]["score"] == pytest.approx(0.2) and judged[0]["halves"][1]["score"] == 0.4
    assert judged[50]["present"] == 0.5 and judged[50]["halves"][0]["present"] == 1.0


def test_the_oracle_is_scored_on_the_seeds_it_did_not_choose_on():
    # step 100 looks best on the first half by luck (0.9) but not on the second (0.1); step 50 is steady at 0.6
    judged = judge_steps(judgements({0: [0.0] * 4, 50: [0.6] * 4, 100: [0.9, 0.1, 0.9, 0.1]}))
    score, picks = cross_fitted_oracle(judged, [50, 100])
    assert picks == (100, 50)  # chosen on half 0, then on half 1
    assert score == pytest.approx((0.1 + 0.6) / 2)
    in_sample = max(judged[step]["score"] for step in (50, 100))
    assert in_sample == pytest.approx(0.6) and score < in_sample  # choosing and scoring on one set flatters it
