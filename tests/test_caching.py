"""Encodings computed once: the cache's bookkeeping, losses equal to uncached training, and disk entries that later
runs reuse and that a changed model never sees."""

from __future__ import annotations

import pytest
import torch
from training import LossRecorder, cpu_trainer, lora_tuner, subject_data

from sdft.caching import EncodingCache, content_key
from sdft.errors import UserError
from sdft.families import StableDiffusion, StableDiffusionXL
from sdft.tiny_models import build_tiny_sd1

STEPS = 4
#: the toy subject's photos, each encoded once more by the validation at the end of a fit
PHOTOS = 4


class Calls:
    """Counts the examples an encoder is asked to encode."""

    def __init__(self) -> None:
        self.examples = 0

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        self.examples += len(rows)
        return {"value": torch.tensor([[float(row)] for row in rows])}


def test_new_keys_are_encoded_once_each_and_unkeyed_rows_every_time():
    cache, calls = EncodingCache(), Calls()
    first = cache.encode(["a", "b", "a", None], calls, torch.device("cpu"))
    assert calls.examples == 3  # "a" once, "b" once, the unkeyed row
    assert first["value"].flatten().tolist() == [0.0, 1.0, 0.0, 3.0]
    again = cache.encode(["b", None, "a"], calls, torch.device("cpu"))
    assert calls.examples == 4 and again["value"].flatten().tolist() == [1.0, 1.0, 0.0]


def test_a_disk_cache_is_read_by_the_next_cache_on_the_folder(tmp_path):
    calls = Calls()
    EncodingCache(tmp_path).encode(["a", "b"], calls, torch.device("cpu"))
    later = EncodingCache(tmp_path).encode(["b", "a"], calls, torch.device("cpu"))
    assert calls.examples == 2 and later["value"].flatten().tolist() == [1.0, 0.0]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_an_unreadable_disk_entry_is_encoded_again_and_rewritten(tmp_path):
    cache, calls = EncodingCache(tmp_path), Calls()
    cache.encode(["a"], calls, torch.device("cpu"))
    cache.path("a").write_bytes(b"not a safetensors file")
    assert EncodingCache(tmp_path).encode(["a"], calls, torch.device("cpu"))["value"].item() == 0.0
    assert calls.examples == 2
    assert EncodingCache(tmp_path).encode(["a"], calls, torch.device("cpu"))["value"].item() == 0.0
    assert calls.examples == 2


def test_content_keys_follow_the_pixels_exactly():
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert content_key(pixels) == content_key(pixels.clone())
    assert content_key(pixels) != content_key(pixels.flip(-1))
    changed = pixels.clone()
    changed[0, 0, 0] += 1e-6
    assert content_key(pixels) != content_key(changed)


def test_an_unknown_cache_mode_names_the_key(tiny_sd1):
    with pytest.raises(UserError, match=r"model.init_args.cache must be one of off, memory, disk"):
        lora_tuner(tiny_sd1, cache="ram")


class EncoderCalls:
    """Counts the images and prompts a family encodes during a fit."""

    def __init__(self, family, monkeypatch) -> None:
        self.images = self.prompts = 0
        encode_posterior, encode_prompts = family.encode_posterior, family.encode_prompts

        def counted_posterior(pixels):
            self.images += len(pixels)
            return encode_posterior(pixels)

        def counted_prompts(prompts):
            self.prompts += len(prompts)
            return encode_prompts(prompts)

        monkeypatch.setattr(family, "encode_posterior", counted_posterior)
        monkeypatch.setattr(family, "encode_prompts", counted_prompts)


def recorded_fit(model, data, root, monkeypatch) -> tuple[dict[int, float], EncoderCalls]:
    model.configure_model()
    calls, recorder = EncoderCalls(model.family, monkeypatch), LossRecorder()
    cpu_trainer(root, STEPS, [recorder]).fit(model, datamodule=data)
    return recorder.losses, calls


@pytest.mark.parametrize("family_class", [StableDiffusion, StableDiffusionXL], ids=["sd1", "sdxl"])
def test_the_cached_losses_equal_the_uncached_ones(
    family_class, tiny_sd1, tiny_sdxl, subject_dir, tmp_path, monkeypatch
):
    """4 photos, flips: at most 8 distinct training views and one prompt in 4 steps of 2 examples, then validation."""
    folder = tiny_sd1 if family_class is StableDiffusion else tiny_sdxl
    runs = {}
    for cache in ("off", "memory"):
        model = lora_tuner(family_class(str(folder)), cache=cache)
        runs[cache] = recorded_fit(model, subject_data(subject_dir), tmp_path / cache, monkeypatch)
    (uncached, plain), (cached, calls) = runs["off"], runs["memory"]
    assert cached == pytest.approx(uncached, rel=1e-5)
    assert plain.images == plain.prompts == 2 * STEPS + PHOTOS
    assert calls.prompts == 1 and calls.images < plain.images


def test_random_crops_and_a_training_text_encoder_are_not_cached(tiny_sd1, subject_dir, tmp_path, monkeypatch):
    model = lora_tuner(tiny_sd1, train_text_encoder=True)
    data = subject_data(subject_dir, center_crop=False)
    _, calls = recorded_fit(model, data, tmp_path, monkeypatch)
    assert calls.images == calls.prompts == 2 * STEPS + PHOTOS
    assert len(model.caches["latents"].entries) == PHOTOS  # only validation's centre crops
    assert "prompts" not in model.caches


def test_a_disk_cache_serves_the_next_run_and_not_a_changed_model(tiny_sd1, subject_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_CACHE", str(tmp_path / "cache"))
    first_losses, first = recorded_fit(
        lora_tuner(tiny_sd1, cache="disk"), subject_data(subject_dir), tmp_path / "a", monkeypatch
    )
    assert first.images > 0 and first.prompts == 1
    losses, again = recorded_fit(
        lora_tuner(tiny_sd1, cache="disk"), subject_data(subject_dir), tmp_path / "b", monkeypatch
    )
    assert again.images == again.prompts == 0
    assert losses == pytest.approx(first_losses, rel=1e-6)
    other = build_tiny_sd1(tmp_path / "other-model", seed=1)  # same architecture, other weights
    _, changed = recorded_fit(lora_tuner(other, cache="disk"), subject_data(subject_dir), tmp_path / "c", monkeypatch)
    assert changed.images == first.images and changed.prompts == 1
    assert len(list((tmp_path / "cache" / "encodings" / "latents").iterdir())) == 2
