import pytest
import torch
from torch.testing import assert_close
from torchmetrics.multimodal import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from sdft.evaluation.diversity import PromptDiversity
from sdft.evaluation.features import (
    ClipFeatures,
    save_tiny_transformers_clip,
    tiny_clip_features,
    tiny_dino_features,
)
from sdft.evaluation.metrics import PromptSimilarity, SubjectSimilarity
from sdft.evaluation.similarity import cosine_matrix

PROMPTS = ["a dog in the snow", "a red dog", "a cat on the beach", "a dog wearing a santa hat"]


def random_images(count, seed, height=40, width=56):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def extractors():
    return {"clip": tiny_clip_features(), "dino": tiny_dino_features()}


@pytest.mark.parametrize("name", ["clip", "dino"])
def test_identical_images_have_similarity_one(extractors, name):
    photos = random_images(1, seed=0).expand(3, -1, -1, -1)
    metric = SubjectSimilarity(extractors[name])
    metric.set_reference(photos)
    metric.update(photos[:2])
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-5)
    assert metric.reference_ceiling().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["clip", "dino"])
def test_subject_similarity_is_the_mean_over_all_pairs_and_accumulates(extractors, name):
    features = extractors[name]
    real, generated = random_images(3, seed=1), random_images(5, seed=2)
    one_shot = SubjectSimilarity(features)
    one_shot.set_reference(real)
    one_shot.update(generated)
    batched = SubjectSimilarity(features)
    batched.set_reference(real)
    for chunk in generated.split([2, 1, 2]):
        batched.update(chunk)
    expected = cosine_matrix(features(generated), features(real)).mean()
    assert_close(one_shot.compute(), expected)
    assert_close(batched.compute(), expected)
    assert batched.pair_count.item() == 15


def test_states_merged_across_ranks_equal_one_process(extractors):
    # DDP sums the states; with unequal splits a mean of per-rank means would be wrong.
    real, generated = random_images(2, seed=8), random_images(5, seed=9)
    ranks = [SubjectSimilarity(extractors["dino"]) for _ in range(2)]
    for metric, chunk in zip(ranks, generated.split([1, 4]), strict=True):
        metric.set_reference(real)
        metric.update(chunk)
    ranks[0].merge_state(ranks[1])
    expected = cosine_matrix(extractors["dino"](generated), extractors["dino"](real)).mean()
    assert_close(ranks[0].compute(), expected)


def test_reference_ceiling_is_the_mean_over_distinct_real_pairs(extractors):
    real = random_images(3, seed=3)
    metric = SubjectSimilarity(extractors["dino"])
    metric.set_reference(real)
    embeddings = extractors["dino"](real)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(torch.dot(embeddings[i], embeddings[j]) for i, j in pairs) / 3
    assert_close(metric.reference_ceiling(), expected)


def test_reference_survives_reset_and_is_required(extractors):
    metric = SubjectSimilarity(extractors["dino"])
    with pytest.raises(RuntimeError, match="set_reference"):
        metric.update(random_images(1, seed=4))
    metric.set_reference(random_images(2, seed=4))
    metric.update(random_images(2, seed=5))
    metric.reset()
    assert metric.pair_count.item() == 0
    metric.update(random_images(1, seed=6))
    assert metric.pair_count.item() == 2


def test_prompt_similarity_accumulates_the_mean_image_prompt_cosine(extractors):
    clip = extractors["clip"]
    images = random_images(4, seed=7)
    expected = (clip.encode_images(images) * clip.encode_texts(PROMPTS)).sum(-1).mean()
    metric = PromptSimilarity(clip)
    metric.update(images[:1], PROMPTS[:1])
    metric.update(images[1:], PROMPTS[1:])
    assert_close(metric.compute(), expected)
    with pytest.raises(ValueError, match="one prompt per image"):
        metric.update(images, PROMPTS[:2])


class TensorFeatureCLIP(CLIPModel):
    """transformers 5 returns a ModelOutput from get_*_features; torchmetrics 1.9 CLIPScore expects a tensor."""

    def get_image_features(self, pixel_values):
        return super().get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask):
        return super().get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def test_clip_t_matches_torchmetrics_clip_score(tmp_path):
    # Seed 5 gives positive image-prompt cosines for these inputs, so CLIPScore's clamp at 0 does not apply.
    path = save_tiny_transformers_clip(tmp_path / "tiny-clip", seed=5)
    images = random_images(4, seed=0)
    metric = PromptSimilarity(ClipFeatures.from_transformers(path))
    metric.update(images, PROMPTS)
    reference = CLIPScore(
        model_name_or_path=lambda: (TensorFeatureCLIP.from_pretrained(path), CLIPProcessor.from_pretrained(path))
    )
    per_sample = torch.stack([reference(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    assert (per_sample > 1).all()
    assert_close(reference.compute(), per_sample.mean())
    # CLIPScore resizes uint8 images and rounds; we resize in float: ~1e-3 cosine apart on noise images.
    assert metric.compute().item() * 100 == pytest.approx(per_sample.mean().item(), abs=0.1)


def mean_absolute_difference(first, second):
    return (first.float() - second.float()).abs().mean(dim=(1, 2, 3))


def test_prompt_diversity_averages_pairs_within_each_prompt():
    images = torch.stack([torch.full((3, 4, 4), value) for value in (0.0, 0.2, 0.6, 0.1, 0.5)])
    prompts = ["a", "a", "a", "b", "b"]
    metric = PromptDiversity(mean_absolute_difference)
    metric.update(images[:3], prompts[:3])
    metric.update(images[3:], prompts[3:])
    # prompt a: |0-0.2|, |0-0.6|, |0.2-0.6|; prompt b: |0.1-0.5|
    assert metric.compute().item() == pytest.approx((0.2 + 0.6 + 0.4 + 0.4) / 4)
    single = PromptDiversity(mean_absolute_difference)
    single.update(images, prompts)
    assert single.compute().item() == pytest.approx(metric.compute().item())
