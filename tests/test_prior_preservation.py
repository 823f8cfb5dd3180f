"""Prior preservation: instance/class pairing in every batch, the weighted loss, and class images made during fit."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer
from training import PROMPT, cpu_trainer, lora_tuner, subject_data

from sdft.data import SubjectDataModule
from sdft.data.class_images import MANIFEST
from sdft.data.toy import write_toy_class

CLASS_PROMPT = "a photo of a toy"


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-class")
    write_toy_class(folder, num_images=6, size=64, seed=1)
    return folder


def prior_data(subject_dir, class_dir, **kwargs) -> SubjectDataModule:
    """Prior preservation on the toy class folder, which holds all the class images asked for."""
    options = {"class_prompt": CLASS_PROMPT, "class_dir": str(class_dir), "num_class_images": 6, **kwargs}
    return subject_data(subject_dir, **options)


def attached(data: SubjectDataModule, max_steps: int, model_dir) -> SubjectDataModule:
    """The data module as a fit sees it: on a trainer that holds a (not yet loaded) model."""
    data.trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    data.trainer.strategy.connect(lora_tuner(model_dir))
    data.setup("fit")
    return data


@pytest.mark.parametrize("batch_size", [2, 4])
def test_every_batch_pairs_its_instance_examples_with_as_many_class_examples(
    tiny_sd1, subject_dir, class_dir, batch_size
):
    data = attached(prior_data(subject_dir, class_dir, batch_size=batch_size), 3, tiny_sd1)
    plain = attached(subject_data(subject_dir, batch_size=batch_size), 3, tiny_sd1)
    classes = data.class_dataset()
    for step, (batch, alone) in enumerate(zip(data.train_dataloader(), plain.train_dataloader(), strict=True)):
        assert batch["pixel_values"].shape == (2 * batch_size, 3, 32, 32)
        assert batch["is_prior"].tolist() == [False] * batch_size + [True] * batch_size
        assert batch["prompts"] == [PROMPT] * batch_size + [CLASS_PROMPT] * batch_size
        # the instance half is exactly the batch of plain training; the class half is the class examples
        # of the same run positions
        torch.testing.assert_close(batch["pixel_values"][:batch_size], alone["pixel_values"], rtol=0, atol=0)
        positions = range(step * batch_size, (step + 1) * batch_size)
        expected = torch.stack([classes[p]["pixel_values"] for p in positions])
        torch.testing.assert_close(batch["pixel_values"][batch_size:], expected, rtol=0, atol=0)
        if len({p // len(data.class_images) for p in positions}) == 1:  # within one pass over the class images
            half = batch["pixel_values"][batch_size:]
            assert all(not torch.equal(half[i], half[j]) for i in range(batch_size) for j in range(i))


def test_class_images_cycle_evenly_over_the_run(tiny_sd1, subject_dir, class_dir):
    data = attached(prior_data(subject_dir, class_dir, batch_size=3, random_flip=0.0), 4, tiny_sd1)
    shown = torch.cat([batch["pixel_values"][3:] for batch in data.train_dataloader()])
    images = [data.class_dataset()[p]["pixel_values"] for p in range(6)]  # first pass: each image once
    counts = [sum(torch.equal(s, image) for s in shown) for image in images]
    assert counts == [2] * 6


def sgd(params):
    """Plain SGD: its steps are linear in the gradients, so equal losses give equal weights up to rounding (AdamW
    divides by the gradients' size and magnifies rounding where a gradient is near zero)."""
    return torch.optim.SGD(params, lr=0.5)


@pytest.fixture(scope="module")
def plain(tiny_sd1, subject_dir, tmp_path_factory):
    """A LoRA trained with SGD for three steps without class images."""
    model = lora_tuner(tiny_sd1, optimizer=sgd)
    cpu_trainer(tmp_path_factory.mktemp("plain"), 3).fit(model, datamodule=subject_data(subject_dir))
    return model


def test_zero_prior_weight_trains_exactly_like_plain_training(plain, tiny_sd1, subject_dir, class_dir, tmp_path):
    weighted = lora_tuner(tiny_sd1, optimizer=sgd, prior_loss_weight=0.0)
    cpu_trainer(tmp_path, 3).fit(weighted, datamodule=prior_data(subject_dir, class_dir))
    trained = weighted.trainable_state_dict()
    for key, value in plain.trainable_state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)
    untrained = lora_tuner(tiny_sd1)
    untrained.configure_model()
    assert any(not torch.equal(value, trained[key]) for key, value in untrained.trainable_state_dict().items())


def test_a_positive_prior_weight_changes_training(plain, tiny_sd1, subject_dir, class_dir, tmp_path):
    weighted = lora_tuner(tiny_sd1, optimizer=sgd, prior_loss_weight=1.0)
    cpu_trainer(tmp_path, 3).fit(weighted, datamodule=prior_data(subject_dir, class_dir))
    trained = weighted.trainable_state_dict()
    assert any(not torch.allclose(trained[k], v, atol=1e-4) for k, v in plain.trainable_state_dict().items())


def test_instance_and_prior_losses_are_logged_and_weighted(tiny_sd1, subject_dir, class_dir, tmp_path):
    model = lora_tuner(tiny_sd1, prior_loss_weight=0.5)
    trainer = cpu_trainer(tmp_path, 1)
    trainer.fit(model, datamodule=prior_data(subject_dir, class_dir))
    logged = trainer.callback_metrics
    instance, prior = float(logged["train/instance_loss"]), float(logged["train/prior_loss"])
    assert float(logged["train/loss"]) == pytest.approx(instance + 0.5 * prior, rel=1e-5)
    assert instance > 0 and prior > 0 and instance != prior


def test_fit_generates_missing_class_images_once_and_reuses_them(tiny_sd1, subject_dir, tmp_path, monkeypatch):
    data = prior_data(subject_dir, tmp_path / "class", num_class_images=3, class_generation_steps=2)
    cpu_trainer(tmp_path / "first", 1).fit(lora_tuner(tiny_sd1), datamodule=data)
    made = sorted((tmp_path / "class").glob("*.png"))
    assert len(made) == 3 and len(data.class_images) == 3
    assert json.loads((tmp_path / "class" / MANIFEST).read_text())["prompt"] == CLASS_PROMPT
    stamps = [path.stat().st_mtime_ns for path in made]

    def no_generation(*args, **kwargs):
        raise AssertionError("the class images should have been reused")

    monkeypatch.setattr("sdft.families.StableDiffusion.base_pipeline", no_generation)
    again = prior_data(subject_dir, tmp_path / "class", num_class_images=3, class_generation_steps=2)
    cpu_trainer(tmp_path / "second", 1).fit(lora_tuner(tiny_sd1), datamodule=again)
    assert [path.stat().st_mtime_ns for path in made] == stamps


def test_without_a_class_dir_the_images_go_to_the_cache(tiny_sd1, subject_dir, tmp_path, asset_cache):
    data = subject_data(subject_dir, class_prompt=CLASS_PROMPT, num_class_images=2, class_generation_steps=2)
    cpu_trainer(tmp_path, 1).fit(lora_tuner(tiny_sd1), datamodule=data)
    manifests = list((asset_cache / "class-images").glob(f"*/{MANIFEST}"))
    assert len(manifests) == 1 and len(list(manifests[0].parent.glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"class_dir": "somewhere"}, "data.class_dir is set but data.class_prompt is not"),
        ({"class_prompt": " "}, "data.class_prompt is empty"),
        ({"class_prompt": CLASS_PROMPT, "num_class_images": 0}, "data.num_class_images"),
    ],
)
def test_bad_prior_preservation_options_name_their_key(subject_dir, options, message):
    with pytest.raises(ValueError, match=message):
        SubjectDataModule(str(subject_dir), PROMPT, **options)


def test_a_negative_prior_weight_names_its_key(tiny_sd1):
    with pytest.raises(ValueError, match="model.init_args.prior_loss_weight"):
        lora_tuner(tiny_sd1, prior_loss_weight=-1.0)


def test_a_prior_weight_without_class_images_names_both_keys(tiny_sd1, subject_dir, tmp_path):
    with pytest.raises(ValueError, match="prior_loss_weight is set but .* set data.class_prompt"):
        cpu_trainer(tmp_path, 1).fit(lora_tuner(tiny_sd1, prior_loss_weight=0.5), datamodule=subject_data(subject_dir))
