"""The subject data module: batches, step-indexed order, and errors that name the config key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from training import PROMPT, subject_data

from sdft.data import SubjectDataModule, subject
from sdft.data.class_images import class_image_order
from sdft.data.images import ImageDataError, image_files
from sdft.data.toy import write_toy_class, write_toy_subject
from sdft.errors import UserError


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
    with pytest.raises(UserError, match="trainer.max_steps must be a positive number of optimizer steps, got -1"):
        data.train_dataloader()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"instance_prompt": "  "}, "data.instance_prompt is empty"),
        ({"random_flip": 2.0}, r"data.random_flip is a probability in \[0, 1\], got 2.0"),
        (
            {"resolution": 65},
            r"data.resolution must be a positive multiple of 8 \(the VAE's downsampling factor\), got 65; use e.g. 64$",
        ),
        ({"resolution": 0}, "data.resolution must be a positive multiple of 8.*got 0; use e.g. 8$"),
        ({"batch_size": 0}, "data.batch_size must be at least 1, got 0"),
        ({"num_workers": -1}, "data.num_workers must be 0 .* or more, got -1"),
        ({"class_prompt": " "}, "data.class_prompt is empty"),
        ({"class_dir": "classes"}, "data.class_dir is set but data.class_prompt is not"),
        ({"class_prompt": "a toy", "num_class_images": 0}, "data.num_class_images must be a positive integer"),
        ({"class_prompt": "a toy", "class_generation_steps": 0}, "data.class_generation_steps must be at least 1"),
        ({"class_prompt": "a toy", "class_generation_batch_size": 0}, "data.class_generation_batch_size must be"),
    ],
)
def test_bad_options_are_user_errors_naming_their_key(subject_dir, options, message):
    with pytest.raises(UserError, match=message):
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
    with pytest.raises(UserError, match=f"data.prompt_templates.*{message}"):
        subject_data(subject_dir, prompt_templates=templates)


# -- check(): the data read and checked before any model is loaded -----------------------------------------------------


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The names of the images the subject data module decodes, in order."""
    names = []
    read = subject.read_resized
    monkeypatch.setattr(
        subject, "read_resized", lambda path, resolution: names.append(path.name) or read(path, resolution)
    )
    return names


def test_check_decodes_the_photos_once_without_a_model(subject_dir, decoded):
    data = subject_data(subject_dir)
    data.check()
    assert decoded == ["toy_00.png", "toy_01.png", "toy_02.png", "toy_03.png"]
    assert len(data.images) == 4 and all(image.size == (32, 32) for image in data.images)
    data.check()
    attached(data, max_steps=1)  # setup("fit") reuses what check() decoded
    assert len(decoded) == 4 and len(data.images) == 4


def test_check_names_an_unreadable_photo(tmp_path):
    write_toy_subject(tmp_path, num_images=2, size=64)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageDataError, match=r"broken\.jpg could not be read as an image"):
        subject_data(tmp_path).check()


def test_check_warns_about_identical_photos_naming_both(tmp_path):
    write_toy_subject(tmp_path, num_images=3, size=64)
    shutil.copy(tmp_path / "toy_01.png", tmp_path / "toy_09.png")
    expected = rf"{re.escape(str(tmp_path / 'toy_01.png'))} and .*toy_09\.png are the same image \(identical bytes\)"
    with pytest.warns(UserWarning, match=expected) as caught:
        subject_data(tmp_path).check()
    assert len([warning for warning in caught if "identical bytes" in str(warning.message)]) == 1


def test_500_copies_of_one_photo_and_many_small_photos_are_one_warning_each(tmp_path):
    Image.new("RGB", (64, 64), (200, 90, 30)).save(tmp_path / "copy_000.png")
    for index in range(1, 500):
        shutil.copy(tmp_path / "copy_000.png", tmp_path / f"copy_{index:03d}.png")
    for index in range(3):
        Image.new("RGB", (20, 24), (index, 0, 0)).save(tmp_path / f"small_{index}.png")
    with pytest.warns(UserWarning) as caught:
        subject_data(tmp_path).check()
    messages = [str(warning.message) for warning in caught]
    assert messages == [
        f"499 files repeat {tmp_path / 'copy_000.png'} (identical bytes): copy_001.png, copy_002.png, copy_003.png, "
        "copy_004.png, copy_005.png, ...; it trains 500 times as often as the others: remove the copies unless that "
        "is intended",
        f"3 images in {tmp_path} are smaller than data.resolution=32: small_0.png (20x24), small_1.png (20x24), "
        "small_2.png (20x24); they will be upscaled and look soft",
    ]


def test_copies_of_several_photos_are_one_warning_naming_each_pair(tmp_path):
    write_toy_subject(tmp_path, num_images=3, size=64)
    for name, copy in [("toy_00.png", "x_copy_0.png"), ("toy_01.png", "x_copy_1.png")]:
        shutil.copy(tmp_path / name, tmp_path / copy)
    with pytest.warns(UserWarning) as caught:
        subject_data(tmp_path).check()
    assert [str(warning.message) for warning in caught] == [
        "2 files repeat another image (identical bytes): x_copy_0.png = toy_00.png, x_copy_1.png = toy_01.png; "
        "those images train more often than the others: remove the copies unless that is intended"
    ]


def class_data(subject_dir: Path, class_dir: Path, **options) -> SubjectDataModule:
    return subject_data(subject_dir, class_prompt="a photo of a toy", class_dir=str(class_dir), **options)


def test_check_reads_the_class_folder_and_setup_decodes_nothing_again(subject_dir, tmp_path, decoded):
    write_toy_class(tmp_path / "classes", num_images=3, size=64)
    data = class_data(subject_dir, tmp_path / "classes", num_class_images=2)
    data.check()
    assert decoded[4:] == ["class_toy_00.png", "class_toy_01.png"]  # the photos, then the class images training uses
    data.check()
    # the class images training gets, as prepare_class_images returns them when none need generating
    data.prepare_class_images = lambda: class_image_order(image_files(tmp_path / "classes"), 2)
    attached(data, max_steps=1)
    assert len(decoded) == 6 and len(data.class_images) == 2
    batch = next(iter(data.train_dataloader()))
    assert batch["prompts"] == [PROMPT] * 2 + ["a photo of a toy"] * 2


def test_check_names_a_bad_class_image_and_a_class_dir_that_is_a_file(subject_dir, tmp_path):
    write_toy_class(tmp_path / "classes", num_images=2, size=64)
    Image.new("RGB", (8, 8)).save(tmp_path / "classes" / "small.png")
    with pytest.raises(ImageDataError, match=r"small\.png is 8x8, far smaller than data\.resolution=32"):
        class_data(subject_dir, tmp_path / "classes").check()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageDataError, match="file is a file, not a folder; set data.class_dir to a folder"):
        class_data(subject_dir, tmp_path / "file").check()


def test_class_images_that_are_the_subjects_photos_are_refused_by_name(subject_dir, tmp_path):
    with pytest.raises(UserError, match=r"data.class_dir is data.instance_dir .*a folder of its own"):
        class_data(subject_dir, subject_dir).check()
    write_toy_class(tmp_path / "classes", num_images=2, size=64)
    before = {folder: sorted(folder.iterdir()) for folder in (subject_dir, tmp_path / "classes")}
    photo = sorted(subject_dir.iterdir())[0]
    shutil.copyfile(photo, tmp_path / "classes" / "copy.png")  # overlapping folders: a photo among the class images
    with pytest.raises(UserError, match=rf"class image \S*copy.png is the subject's photo \S*{photo.name}"):
        class_data(subject_dir, tmp_path / "classes").check()
    (tmp_path / "classes" / "copy.png").unlink()
    class_data(subject_dir, tmp_path / "classes").check()  # two folders apart are fine
    assert {folder: sorted(folder.iterdir()) for folder in before} == before  # nothing written or moved


def test_check_accepts_a_class_dir_that_does_not_exist_yet(subject_dir, tmp_path, decoded):
    data = class_data(subject_dir, tmp_path / "to-generate")
    data.check()
    assert len(decoded) == 4 and data.found_class_images == {}
