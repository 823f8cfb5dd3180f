"""SubjectMetrics: the real-real ceilings with one photo or more, and scoring split across ranks without noise."""

from __future__ import annotations

import warnings

import pytest
import torch

from sdft.evaluation.features import tiny_clip_features, tiny_dino_features
from sdft.evaluation.scoring import SubjectMetrics
from sdft.evaluation.similarity import cosine_matrix, mean_distinct_pair_similarity

PROMPTS = ["a sks dog", "a dog", "a sks dog in the snow", "a dog"]
IS_CLASS = [False, True, False, True]


def random_images(count, seed, side=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def backbones():
    return tiny_clip_features(), tiny_dino_features()


def subject_metrics(backbones, photos) -> SubjectMetrics:
    metrics = SubjectMetrics("sks", *backbones, with_pres=True)
    metrics.set_reference(photos)
    return metrics


def test_one_photo_has_no_ceiling_and_two_have_the_distinct_pair_mean(backbones):
    clip, dino = backbones
    photos = random_images(2, seed=0)
    assert subject_metrics(backbones, photos[:1]).ceilings() == {"val/clip_i": None, "val/dino": None}
    ceilings = subject_metrics(backbones, photos).ceilings()
    assert ceilings["val/dino"] == pytest.approx(mean_distinct_pair_similarity(dino(photos)).item(), abs=1e-6)
    assert ceilings["val/clip_i"] == pytest.approx(mean_distinct_pair_similarity(clip(photos)).item(), abs=1e-6)


def test_scores_split_across_ranks_equal_one_process_without_compute_before_update_warnings(backbones):
    # rank 0's share holds no class prompt (PRES gets no image there), rank 1's holds both kinds
    clip, dino = backbones
    photos, images = random_images(2, seed=1), random_images(4, seed=2)
    ranks = [subject_metrics(backbones, photos) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called before the ``update`` method")
        ranks[0].update(images[[0, 2]], [PROMPTS[0], PROMPTS[2]], [False, False])
        ranks[1].update(images[[1, 3]], [PROMPTS[1], PROMPTS[3]], [True, True])
        for name, metric in ranks[0].metrics.items():
            metric.merge_state(ranks[1].metrics[name])
        values = ranks[0].compute()
    subject, bare = images[[0, 2]], images[[1, 3]]
    assert values["val/dino"] == pytest.approx(cosine_matrix(dino(subject), dino(photos)).mean().item(), abs=1e-6)
    assert values["val/pres"] == pytest.approx(cosine_matrix(dino(bare), dino(photos)).mean().item(), abs=1e-6)
    assert values["val/clip_i"] == pytest.approx(cosine_matrix(clip(subject), clip(photos)).mean().item(), abs=1e-6)
    texts = clip.encode_texts(["a dog", "a dog in the snow"])
    assert values["val/clip_t"] == pytest.approx((clip.encode_images(subject) * texts).sum(-1).mean().item(), abs=1e-6)


def test_a_metric_that_scored_no_image_anywhere_is_an_error(backbones):
    metrics = subject_metrics(backbones, random_images(2, seed=3))
    metrics.update(random_images(1, seed=4), ["a sks dog"], [False])
    with pytest.raises(RuntimeError, match="SubjectSimilarity scored no image"):
        metrics.compute()
