"""The offline tiny model: a real CLIP tokenizer, deterministic weights, an ordinary diffusers folder."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from sdft import assets
from sdft.errors import UserError
from sdft.tiny_models import build_tiny_sd1
from sdft.tokenizers import write_clip_tokenizer

PROMPTS = ["a photo of sks dog", "A Purple wizard outfit, on the beach!!", "cube-shaped 123 émoji"]


def test_clip_tokenizer_matches_open_clip(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path))
    reference = SimpleTokenizer()
    assert len(tokenizer) == 49408
    for prompt in PROMPTS:
        expected = [reference.sot_token_id, *reference.encode(prompt), reference.eot_token_id]
        assert tokenizer(prompt).input_ids == expected


def unet_weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_weights_are_a_function_of_the_seed(tmp_path, tiny_sd1):
    again, other = build_tiny_sd1(tmp_path / "again", seed=0), build_tiny_sd1(tmp_path / "other", seed=1)
    reference = unet_weights(tiny_sd1)
    assert all(torch.equal(reference[k], v) for k, v in unet_weights(again).items())
    assert not all(torch.equal(reference[k], v) for k, v in unet_weights(other).items())


def test_tiny_model_loads_as_a_stock_pipeline(tiny_sd1):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a photo of sks toy", height=32, width=32, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert pipeline.tokenizer("sks").input_ids == [49406, 48136, 49407]


def test_builtin_assets_are_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_CACHE", str(tmp_path))
    builds = []
    build = assets.BUILDERS["toy-class"]
    monkeypatch.setitem(assets.BUILDERS, "toy-class", lambda folder: builds.append(folder) or build(folder))
    folder = assets.resolve("builtin:toy-class")
    assert folder == str(tmp_path / "toy-class") and len(list((tmp_path / "toy-class").glob("*.png"))) == 8
    assert assets.resolve("builtin:toy-class") == folder
    assert len(builds) == 1
    assert assets.resolve("some/hub-model") == "some/hub-model"
    with pytest.raises(
        UserError, match=r"unknown built-in asset 'builtin:nope'; use one of builtin:\S*, .*builtin:tiny-sd1, "
    ):
        assets.resolve("builtin:nope")
