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
        values = ranks[0].compute().values
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


def test_every_probe_score_is_kept_in_probe_order_whatever_the_split_across_ranks(backbones):
    # probes 0..3 dealt round-robin to two ranks, as the evaluator deals them; rank 1 holds both class images
    clip, dino = backbones
    photos, images = random_images(3, seed=5), random_images(4, seed=6)
    ranks = [subject_metrics(backbones, photos) for _ in range(2)]
    ranks[0].update(images[[0, 2]], [PROMPTS[0], PROMPTS[2]], [False, False], indices=[0, 2])
    ranks[1].update(images[[1, 3]], [PROMPTS[1], PROMPTS[3]], [True, True], indices=[1, 3])
    merged = ranks[0]
    for name in ("probe_scores", "class_scores", "dino_embeddings"):
        getattr(merged, name).merge_state(getattr(ranks[1], name))
    for name, metric in merged.metrics.items():
        metric.merge_state(ranks[1].metrics[name])
    scored = merged.compute()
    subject, bare = images[[0, 2]], images[[1, 3]]
    dino_per_image = cosine_matrix(dino(subject), dino(photos)).mean(1)
    assert scored.subject_indices == [0, 2]
    assert scored.scores["val/dino"] == pytest.approx(dino_per_image.tolist(), abs=1e-6)
    assert scored.scores["val/clip_i"] == pytest.approx(cosine_matrix(clip(subject), clip(photos)).mean(1).tolist())
    texts = clip.encode_texts(["a dog", "a dog in the snow"])
    assert scored.scores["val/clip_t"] == pytest.approx((clip.encode_images(subject) * texts).sum(-1).tolist())
    assert scored.scores["val/pres"] == pytest.approx(cosine_matrix(dino(bare), dino(photos)).mean(1).tolist())
    # each mean is the mean of its probes' scores
    for key in ("val/dino", "val/clip_i", "val/clip_t", "val/pres"):
        assert scored.values[key] == pytest.approx(sum(scored.scores[key]) / 2, abs=1e-6)
    assert torch.allclose(scored.dino_embeddings, dino(subject), atol=1e-6)
