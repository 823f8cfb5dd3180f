"""The subject data module: batches, step-indexed order, and errors that name the config key."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from training import PROMPT, subject_data

from sdft.data import SubjectDataModule
from sdft.data.images import ImageDataError


def attached(data: SubjectDataModule, max_steps: int) -> SubjectDataModule:
    data.trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    data.setup("fit")
    return data


def test_batches_hold_pixels_in_range_and_the_instance_prompt(subject_dir):
    loader = attached(subject_data(subject_dir, batch_size=2), max_steps=4).train_dataloader()
    batches = list(loader)
    assert len(batches) == 4
    assert batches[0]["pixel_values"].shape == (2, 3, 32, 32)
    assert all(batch["prompts"] == [PROMPT, PROMPT] for batch in batches)
    pixels = torch.cat([batch["pixel_values"] for batch in batches])
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.1


def test_each_pass_shows_every_photo_once(subject_dir):
    data = attached(subject_data(subject_dir, batch_size=1, random_flip=0.0), max_steps=8)
    shown = [batch["pixel_values"][0] for batch in data.train_dataloader()]
    photos = [batch["pixel_values"][0] for batch in data.val_dataloader()]
    for epoch in (shown[:4], shown[4:]):
        assert sorted(next(i for i, p in enumerate(photos) if torch.equal(p, s)) for s in epoch) == [0, 1, 2, 3]


def test_flip_probability_one_mirrors_every_example(subject_dir):
    plain = attached(subject_data(subject_dir, batch_size=4, random_flip=0.0), 1).train_dataloader()
    mirrored = attached(subject_data(subject_dir, batch_size=4, random_flip=1.0), 1).train_dataloader()
    torch.testing.assert_close(next(iter(mirrored))["pixel_values"], next(iter(plain))["pixel_values"].flip(-1))


def test_training_needs_max_steps(subject_dir):
    data = attached(subject_data(subject_dir), max_steps=-1)
    with pytest.raises(ValueError, match="trainer.max_steps is not set"):
        data.train_dataloader()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"instance_prompt": "  "}, "data.instance_prompt is empty"), ({"random_flip": 2.0}, "data.random_flip")],
)
def test_bad_options_name_their_key(subject_dir, options, message):
    with pytest.raises(ValueError, match=message):
        SubjectDataModule(**{"instance_dir": str(subject_dir), "instance_prompt": PROMPT, **options})


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(ImageDataError, match="data.instance_dir"):
        SubjectDataModule(str(tmp_path / "nowhere"), PROMPT).setup("fit")


def test_photo_far_below_the_resolution_is_rejected_by_name(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "tiny.png")
    with pytest.raises(ImageDataError, match="tiny.png is 16x16, far smaller than data.resolution=512"):
        SubjectDataModule(str(tmp_path), PROMPT, resolution=512).setup("fit")


def test_prompt_templates_draw_a_template_per_position_and_validation_uses_the_first(subject_dir):
    templates = ["a photo of a {}", "a rendering of a {}", "a close-up photo of the {}"]
    data = attached(subject_data(subject_dir, batch_size=4, prompt_templates=templates), max_steps=6)
    data.instance_prompt = "<sks> toy"
    drawn = [prompt for batch in data.train_dataloader() for prompt in batch["prompts"]]
    assert set(drawn) == {template.format("<sks> toy") for template in templates}
    assert drawn == [p for batch in data.train_dataloader() for p in batch["prompts"]]  # a function of the position
    assert next(iter(data.val_dataloader()))["prompts"] == ["a photo of a <sks> toy"] * 4


@pytest.mark.parametrize(
    ("templates", "message"), [("portrait", "use 'object', 'style'"), (["a {} and a {}"], "exactly one")]
)
def test_bad_prompt_templates_name_the_key(subject_dir, templates, message):
    with pytest.raises(ValueError, match=f"data.prompt_templates.*{message}"):
        subject_data(subject_dir, prompt_templates=templates)
