import json

import open_clip
import pytest
import torch
from torch.testing import assert_close
from transformers import CLIPTokenizer

from sdft.evaluation.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipFeatures,
    DinoFeatures,
    preprocess_images,
    save_tiny_transformers_clip,
    tiny_clip_features,
    tiny_dino_features,
    to_unit_range,
)

PROMPTS = ["a dog in the snow", "A Cube-Shaped backpack!", "a photo of sks dog, on top of a purple rug"]


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=generator)


def test_uint8_and_unit_float_images_give_the_same_embeddings(images):
    clip, dino = tiny_clip_features(), tiny_dino_features()
    assert_close(clip.encode_images(images), clip.encode_images(images / 255), atol=1e-5, rtol=0)
    assert_close(dino(images), dino(images / 255), atol=1e-5, rtol=0)


def test_embeddings_are_unit_norm_with_expected_widths(images):
    clip, dino = tiny_clip_features(), tiny_dino_features()
    assert clip.encode_images(images).shape == (3, 16)
    assert clip.encode_texts(PROMPTS).shape == (3, 16)
    assert dino(images).shape == (3, 32)
    for embeddings in (clip(images), clip.encode_texts(PROMPTS), dino(images)):
        assert_close(embeddings.norm(dim=-1), torch.ones(3))


def test_tiny_extractors_are_seeded_without_touching_global_rng(images):
    state = torch.random.get_rng_state()
    first, again, other = tiny_dino_features(0), tiny_dino_features(0), tiny_dino_features(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first(images), again(images))
    assert not torch.allclose(first(images), other(images))
    assert torch.equal(tiny_clip_features(3).encode_texts(PROMPTS), tiny_clip_features(3).encode_texts(PROMPTS))


def test_extractors_stay_frozen_when_the_parent_trains():
    parent = torch.nn.ModuleDict({"clip": tiny_clip_features(), "dino": tiny_dino_features()})
    parent.train()
    assert not any(module.training for module in parent.modules() if module is not parent)
    assert not any(parameter.requires_grad for parameter in parent.parameters())


def test_preprocess_resizes_short_side_then_center_crops():
    # a 2-column image: left half black, right half white; a 32x64 -> 16x32 resize then 16x16 crop keeps the
    # centre, where the two halves meet, so each half of the crop keeps its colour.
    image = torch.zeros(1, 3, 32, 64, dtype=torch.uint8)
    image[..., 32:] = 255
    pixels = preprocess_images(image, resize=16, crop=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert pixels.shape == (1, 3, 16, 16)
    assert_close(pixels[..., :7], torch.zeros(1, 3, 16, 7))
    assert_close(pixels[..., 9:], torch.ones(1, 3, 16, 7))


def test_preprocess_normalises_with_the_given_mean_and_std():
    grey = torch.full((2, 3, 8, 8), 0.5)
    pixels = preprocess_images(grey, resize=8, crop=8, mean=CLIP_MEAN, std=CLIP_STD)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert_close(pixels[0, :, 3, 3], expected)


def test_to_unit_range_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        to_unit_range(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="uint8 or float"):
        to_unit_range(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


def test_saved_clip_tokenizer_matches_open_clip(tmp_path):
    path = save_tiny_transformers_clip(tmp_path / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(path)
    reference = open_clip.tokenizer.SimpleTokenizer()
    assert len(json.loads((path / "vocab.json").read_text())) == 49408
    for prompt in PROMPTS:
        expected = reference([prompt])[0]
        expected = expected[: int((expected != 0).sum())].tolist()
        assert tokenizer(prompt)["input_ids"] == expected


def test_transformers_clip_loads_from_a_saved_folder(tmp_path, images):
    path = save_tiny_transformers_clip(tmp_path / "clip", seed=1)
    features = ClipFeatures.from_transformers(path)
    assert features.image_size == 32
    assert_close(features.encode_images(images).norm(dim=-1), torch.ones(3))
    assert_close(ClipFeatures.from_transformers(path).encode_texts(PROMPTS), features.encode_texts(PROMPTS))


def test_dino_features_use_the_cls_token_of_the_last_hidden_state(tmp_path, images):
    tiny = tiny_dino_features(seed=2)
    tiny.model.save_pretrained(tmp_path / "dino")
    features = DinoFeatures.from_pretrained(tmp_path / "dino", resize=36, crop=32)
    pixels = preprocess_images(images, resize=36, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cls_token = features.model(pixel_values=pixels).last_hidden_state[:, 0]
    assert_close(features(images), torch.nn.functional.normalize(cls_token, dim=-1))
    assert_close(features(images), tiny(images))


def test_dino_crop_must_match_the_vit_input():
    with pytest.raises(ValueError, match="crop=224"):
        DinoFeatures(tiny_dino_features().model, resize=256, crop=224)


def test_open_clip_vit_b_32_with_random_weights_downloads_nothing(images):
    features = ClipFeatures.from_open_clip("ViT-B-32", pretrained=None)
    assert features.image_size == 224
    assert_close(features.mean, torch.tensor(CLIP_MEAN))
    assert features.encode_images(images).shape == (3, 512)
    assert_close(features.encode_texts(PROMPTS).norm(dim=-1), torch.ones(3))
