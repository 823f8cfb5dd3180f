"""Captioned data: image-caption pairs from both layouts, caption dropout by position, errors naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from PIL import Image
from training import brief_fit, cpu_trainer, lora_tuner, validation_loss

from sdft import assets
from sdft.callbacks import SubjectEvaluator
from sdft.data import CaptionDataModule, SubjectDataModule, captions
from sdft.data.captions import CaptionDataError
from sdft.data.images import ImageDataError
from sdft.data.toy import SUBJECT, ToyDesign, color_name, describe
from sdft.errors import UserError
from sdft.methods.lora import LORA_WEIGHTS

COLORS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210), "yellow": (230, 210, 40)}


def caption_of(color: str) -> str:
    return f"a photo of a {color} square"


def write_images(folder: Path) -> list[Path]:
    """One 48x40 image per colour: the colour plus seeded noise, so crops and flips change the pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, rgb in COLORS.items():
        pixels = np.clip(np.array(rgb) + rng.integers(-25, 26, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def write_metadata(folder: Path, rows: list[dict] | None = None) -> Path:
    rows = [{"file_name": f"{name}.png", "text": caption_of(name)} for name in COLORS] if rows is None else rows
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "metadata.jsonl"


def write_txt(folder: Path, caption=caption_of) -> None:
    for name in COLORS:
        (folder / f"{name}.txt").write_text(caption(name) + "\n")


@pytest.fixture
def captioned(tmp_path) -> Path:
    """The colour images with captions in both layouts: ``metadata.jsonl`` and ``.txt`` files."""
    folder = tmp_path / "captioned"
    write_images(folder)
    write_metadata(folder)
    write_txt(folder)
    return folder


def attached(data: CaptionDataModule, max_steps: int, global_step: int = 0) -> CaptionDataModule:
    """The data module on a CPU trainer that has done ``global_step`` optimizer steps (as when resumed)."""
    data.trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    data.trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed = global_step
    data.setup("fit")
    return data


def caption_data(folder: Path, **kwargs) -> CaptionDataModule:
    options = {"resolution": 32, "batch_size": 2, "center_crop": False, "random_flip": 0.5, **kwargs}
    return CaptionDataModule(str(folder), **options)


def color_of(pixels: torch.Tensor) -> str:
    """The name of the colour nearest the mean of an example's pixels (3, R, R) in [-1, 1]."""
    mean = ((pixels.mean(dim=(1, 2)) + 1) * 127.5).numpy()
    return min(COLORS, key=lambda name: float(np.abs(mean - np.array(COLORS[name])).sum()))


def examples(loader) -> list[tuple[torch.Tensor, str]]:
    return [
        (pixels, prompt)
        for batch in loader
        for pixels, prompt in zip(batch["pixel_values"], batch["prompts"], strict=True)
    ]


# -- pairs ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["metadata", "txt", "auto"])
def test_every_example_carries_the_caption_of_its_image(captioned, source):
    if source == "auto":
        (captioned / "metadata.jsonl").unlink()  # auto falls back to the .txt files
    data = attached(caption_data(captioned, caption_source=source), max_steps=6)
    batches = list(data.train_dataloader())
    assert [batch["pixel_values"].shape for batch in batches] == [(2, 3, 32, 32)] * 6
    shown = examples(batches)
    assert all(prompt == caption_of(color_of(pixels)) for pixels, prompt in shown)
    assert {color_of(pixels) for pixels, _ in shown} == set(COLORS)
    validation = examples(data.val_dataloader())
    assert sorted(prompt for _, prompt in validation) == sorted(caption_of(name) for name in COLORS)
    assert all(prompt == caption_of(color_of(pixels)) for pixels, prompt in validation)


def test_auto_prefers_metadata_jsonl_over_txt_files(captioned):
    write_txt(captioned, caption=lambda name: f"txt caption of {name}")
    auto, txt = caption_data(captioned), caption_data(captioned, caption_source="txt")
    auto.setup("fit")
    txt.setup("fit")
    assert {path.stem: caption for path, caption in zip(auto.files, auto.captions, strict=True)} == {
        name: caption_of(name) for name in COLORS
    }
    assert {path.stem: caption for path, caption in zip(txt.files, txt.captions, strict=True)} == {
        name: f"txt caption of {name}" for name in COLORS
    }
    assert len(auto.images) == 4 and all(min(image.size) == 32 for image in auto.images)


def test_examples_follow_the_subject_data_scheme_position_for_position(captioned):
    subject = SubjectDataModule(str(captioned), "a photo", resolution=32, center_crop=False, random_flip=0.5)
    subject.trainer = Trainer(max_steps=5, accelerator="cpu", logger=False, enable_progress_bar=False)
    subject.setup("fit")
    data = caption_data(captioned, caption_source="txt", batch_size=1)  # .txt: images in name order, like subject's
    ours = examples(attached(data, max_steps=5).train_dataloader())
    theirs = examples(subject.train_dataloader())
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(ours, theirs, strict=True))


def test_validation_shows_every_image_centre_cropped_unflipped_and_captioned(captioned):
    data = attached(caption_data(captioned, caption_dropout=1.0, random_flip=1.0), max_steps=1)
    validation = examples(data.val_dataloader())
    assert sorted(prompt for _, prompt in validation) == sorted(caption_of(name) for name in COLORS)
    for pixels, prompt in validation:
        image = data.images[data.captions.index(prompt)]
        centre = torch.from_numpy(np.array(image)[:, 3:35]).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(pixels, centre)


# -- caption dropout --------------------------------------------------------------------------------------------------


def prompts(data: CaptionDataModule) -> list[str]:
    return [prompt for batch in data.train_dataloader() for prompt in batch["prompts"]]


@pytest.mark.parametrize(("rate", "dropped"), [(0.0, 0), (1.0, 200)])
def test_dropout_rate_zero_never_drops_and_one_always_drops(captioned, rate, dropped):
    shown = prompts(attached(caption_data(captioned, caption_dropout=rate, batch_size=8), max_steps=25))
    assert len(shown) == 200 and shown.count("") == dropped


def test_dropout_drops_about_the_rate_at_the_same_positions_on_a_rerun(captioned):
    first = prompts(attached(caption_data(captioned, caption_dropout=0.5, batch_size=8), max_steps=25))
    again = prompts(attached(caption_data(captioned, caption_dropout=0.5, batch_size=8), max_steps=25))
    assert 70 <= first.count("") <= 130
    assert first == again
    other_seed = prompts(attached(caption_data(captioned, caption_dropout=0.5, batch_size=8, seed=1), max_steps=25))
    assert [p == "" for p in other_seed] != [p == "" for p in first]


def test_resumed_data_yields_the_remaining_batches_of_the_uninterrupted_run(captioned):
    options = {"caption_dropout": 0.5, "batch_size": 2}
    straight = list(attached(caption_data(captioned, **options), max_steps=8).train_dataloader())
    resumed = list(attached(caption_data(captioned, **options), max_steps=8, global_step=3).train_dataloader())
    assert len(resumed) == 5
    for after, before in zip(resumed, straight[3:], strict=True):
        assert after["prompts"] == before["prompts"]
        assert torch.equal(after["pixel_values"], before["pixel_values"])
    assert any("" in batch["prompts"] for batch in straight) and any(p for b in straight for p in b["prompts"])


# -- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"file_name": "red.png", "text": "red"}', '{"file_name": "green.png", "text": '],
            "line 2 is not valid JSON",
        ),
        (['{"file_name": "nope.png", "text": "x"}'], "line 1: file_name 'nope.png' does not exist"),
        (['{"file_name": "red.png"}'], "line 1 has no text key"),
        (['{"text": "a red square"}'], "line 1 has no file_name key"),
        (['{"file_name": "red.png", "text": ["a", "b"]}'], r"line 1: text must be a string"),
        (['["red.png", "red"]'], "line 1 is a JSON list, not an object"),
    ],
)
def test_bad_metadata_rows_are_named_by_file_and_line(tmp_path, lines, message):
    write_images(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptionDataError, match=f"metadata.jsonl {message}"):
        caption_data(tmp_path, caption_source="metadata").setup("fit")


def test_metadata_mode_without_metadata_jsonl_names_the_file_and_the_key(tmp_path):
    write_images(tmp_path)
    write_txt(tmp_path)
    with pytest.raises(CaptionDataError, match=r"metadata.jsonl does not exist.*data.caption_source to txt"):
        caption_data(tmp_path, caption_source="metadata").setup("fit")


@pytest.mark.parametrize("source", ["txt", "auto"])
def test_images_without_txt_captions_are_named(tmp_path, source):
    write_images(tmp_path)
    (tmp_path / "red.txt").write_text("a red square")
    expected = r"3 of 4 images .* have no .txt caption beside them: blue.png, green.png, yellow.png"
    with pytest.raises(CaptionDataError, match=f"data.caption_source={source}: .*{expected}"):
        caption_data(tmp_path, caption_source=source).setup("fit")


def test_empty_captions_are_warned_about_by_file_and_all_empty_is_an_error(captioned):
    (captioned / "green.txt").write_text("  \n")
    with pytest.warns(UserWarning, match=r"1 of 4 images .* have an empty caption .*: green.png"):
        data = caption_data(captioned, caption_source="txt")
        data.setup("fit")
    assert data.captions[[path.stem for path in data.files].index("green")] == ""
    write_metadata(captioned, [{"file_name": f"{name}.png", "text": ""} for name in COLORS])
    with pytest.raises(CaptionDataError, match="every caption in .* is empty"):
        caption_data(captioned).setup("fit")


def test_images_left_out_of_metadata_are_warned_about(captioned):
    write_metadata(captioned, [{"file_name": "red.png", "text": "a red square"}])
    with pytest.warns(UserWarning, match="3 images .* are not listed in metadata.jsonl .*: blue.png, green.png"):
        caption_data(captioned).setup("fit")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"caption_dropout": 1.5}, r"data.caption_dropout is a probability in \[0, 1\], got 1.5"),
        ({"caption_dropout": -0.1}, "data.caption_dropout"),
        ({"random_flip": 2.0}, "data.random_flip"),
        ({"caption_source": "csv"}, "data.caption_source must be one of auto, metadata, txt"),
        ({"resolution": 65}, r"data.resolution must be a positive multiple of 8 .*got 65; use e.g. 64$"),
        ({"batch_size": 0}, "data.batch_size must be at least 1, got 0"),
        ({"num_workers": -2}, "data.num_workers must be 0 .* or more, got -2"),
    ],
)
def test_bad_options_are_user_errors_naming_their_key(captioned, options, message):
    with pytest.raises(UserError, match=message):
        caption_data(captioned, **options)


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(ImageDataError, match="does not exist; set data.data_dir"):
        caption_data(tmp_path / "nowhere").setup("fit")


def test_check_reads_captions_and_images_once_without_a_model(captioned, monkeypatch):
    decoded = []
    read = captions.read_resized
    monkeypatch.setattr(captions, "read_resized", lambda path, size: decoded.append(path.name) or read(path, size))
    data = caption_data(captioned)
    data.check()
    assert sorted(decoded) == sorted(f"{name}.png" for name in COLORS)
    assert sorted(data.captions) == sorted(caption_of(name) for name in COLORS) and len(data.images) == 4
    data.check()
    attached(data, max_steps=1)  # setup("fit") reuses what check() read
    assert len(decoded) == 4


def test_check_names_a_bad_metadata_row_before_any_setup(captioned):
    write_metadata(captioned, [{"file_name": "red.png", "text": "red"}, {"file_name": "gone.png", "text": "x"}])
    with pytest.raises(CaptionDataError, match="metadata.jsonl line 2: file_name 'gone.png' does not exist"):
        caption_data(captioned).check()


def test_a_row_repeated_in_metadata_is_warned_about_by_line(captioned):
    rows = [{"file_name": f"{name}.png", "text": caption_of(name)} for name in COLORS]
    write_metadata(captioned, [*rows, {"file_name": "green.png", "text": "a green square again"}])
    with pytest.warns(UserWarning, match=r"metadata.jsonl lines 2 and 5 both list green.png, so it trains twice"):
        caption_data(captioned).check()


def test_several_repeated_rows_are_one_warning(captioned):
    rows = [{"file_name": f"{name}.png", "text": caption_of(name)} for name in COLORS]
    again = [{"file_name": f"{name}.png", "text": "again"} for name in ("green", "red", "blue")]
    write_metadata(captioned, [*rows, *again])
    with pytest.warns(UserWarning, match="rows of") as caught:
        caption_data(captioned).check()
    assert [str(warning.message) for warning in caught if "rows of" in str(warning.message)] == [
        f"3 rows of {captioned / 'metadata.jsonl'} list an image an earlier row lists: line 5 (green.png, as line 2), "
        "line 6 (red.png, as line 1), line 7 (blue.png, as line 3); those images train more often than the others: "
        "remove the repeated rows unless that is intended"
    ]


@pytest.mark.parametrize("source", ["metadata", "txt"])
def test_the_same_image_under_two_names_is_warned_about_naming_both(captioned, source):
    shutil.copy(captioned / "red.png", captioned / "scarlet.png")
    (captioned / "scarlet.txt").write_text("a photo of a scarlet square")
    rows = [{"file_name": f"{name}.png", "text": caption_of(name)} for name in [*COLORS, "scarlet"]]
    write_metadata(captioned, rows)
    expected = r"red\.png and .*scarlet\.png are the same image \(identical bytes\)"
    with pytest.warns(UserWarning, match=expected) as caught:
        caption_data(captioned, caption_source=source).check()
    assert len([warning for warning in caught if "identical bytes" in str(warning.message)]) == 1


# -- the toy captioned set --------------------------------------------------------------------------------------------


def test_toy_captions_name_the_colours_and_shapes():
    assert describe(SUBJECT) == "a photo of a red round plush toy with a yellow 5-pointed star on its belly"
    pear = ToyDesign((40, 160, 60), "pear", (40, 60, 210), "diamond", 4, (0, 0, 0))
    assert describe(pear) == "a photo of a green pear-shaped plush toy with a blue diamond on its belly"
    assert [color_name(c) for c in [(20, 20, 20), (128, 128, 128), (245, 245, 245), (150, 60, 200)]] == [
        "black",
        "grey",
        "white",
        "purple",
    ]


def test_builtin_toy_captions_resolve_and_load():
    folder = Path(assets.resolve("builtin:toy-captions"))
    assert (folder / "metadata.jsonl").is_file()
    data = caption_data("builtin:toy-captions")
    data.setup("fit")
    assert len(data.images) == len(data.captions) == 8
    assert [path.name for path in data.files] == [f"toy_{index:02d}.png" for index in range(8)]
    assert all(caption.startswith("a photo of a ") and "plush toy with a" in caption for caption in data.captions)
    assert len(set(data.captions)) > 4


# -- with the rest of sdft ---------------------------------------------------------------------------------------------


def test_subject_evaluator_without_an_instance_prompt_asks_for_identifier_and_class_noun(tiny_sd1, captioned, tmp_path):
    evaluator = SubjectEvaluator(clip_model="builtin:tiny-clip", dino_model="builtin:tiny-dino")
    with pytest.raises(ValueError, match="set SubjectEvaluator's identifier and class_noun init args"):
        cpu_trainer(tmp_path, 1, [evaluator]).fit(lora_tuner(tiny_sd1), datamodule=caption_data(captioned))
    assert SubjectEvaluator(identifier="sks", class_noun="toy").subject(None) == ("sks", "toy")


def fit_captions(config: str, tmp_path: Path, *options: str) -> Path:
    """A two-step ``sdft fit`` of a shipped captions config on the tiny model and the toy captioned set."""
    data = {"data_dir": "builtin:toy-captions", "batch_size": 2}
    return brief_fit(config, tmp_path, data, *options, evaluate=False)


def test_lora_fit_on_captions_through_the_cli_writes_the_final_export(tmp_path):
    run = fit_captions("configs/sd15/captions_lora.yaml", tmp_path, "--model.init_args.rank=4")
    assert (run / "final" / LORA_WEIGHTS).is_file()
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["step=000002.ckpt"]
    assert sorted(path.name for path in (run / "samples").iterdir()) == ["step_000000", "step_000002"]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["class_path"] == "sdft.data.CaptionDataModule"


def test_full_fit_on_captions_through_the_cli_writes_a_pipeline(tmp_path):
    run = fit_captions("configs/sd15/captions_full.yaml", tmp_path, "--model.init_args.gradient_checkpointing=false")
    assert (run / "final" / "model_index.json").is_file()
    assert list((run / "final" / "unet").glob("*.safetensors"))


def test_a_short_lora_fit_lowers_the_loss_on_the_captioned_images(tiny_sd1, tmp_path):
    data = CaptionDataModule("builtin:toy-captions", resolution=32, batch_size=2, random_flip=0.5)
    model, trainer = lora_tuner(tiny_sd1), cpu_trainer(tmp_path, max_steps=30)
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    after = validation_loss(trainer, model, data)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("source", ["metadata", "txt"])
def test_a_caption_file_that_is_not_utf8_is_named_with_the_fix(captioned, source):
    broken = captioned / ("metadata.jsonl" if source == "metadata" else "green.txt")
    broken.write_bytes('{"file_name": "red.png", "text": "caf\u00e9"}\n'.encode("latin-1"))  # a Windows editor's
    with pytest.raises(CaptionDataError, match=rf"{broken.name} is not UTF-8 text .*re-save it as UTF-8"):
        caption_data(captioned, caption_source=source).check()
