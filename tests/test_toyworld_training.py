"""Training the toy world's base model (scripts/train_toyworld.py): clutter shows the autoencoder small near-black and
near-white parts the world never draws, equal for equal seeds, and a run stopped in any stage and run again ends
with the weights of a run that never stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from script_modules import script_modules

from sdft.errors import UserError
from sdft.toyworld import world_dataset
from sdft.toyworld.datasets import ClutterDataset
from sdft.toyworld.model import GEOMETRIES, build_untrained_toyworld

WEIGHTS = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


@pytest.fixture(scope="module")
def scripts():
    """The training script's modules, imported from scripts/ as the script itself imports them."""
    names = ("train_toyworld", "toyworld_training", "toyworld_loop", "measure_toyworld_autoencoder")
    with script_modules(*names) as modules:
        yield modules


def extremes(image) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool: the near-black pixels (every channel at most 45), and the near-white (every channel 210 or more)."""
    pixels = np.asarray(image.convert("RGB"))
    return pixels.max(axis=2) <= 45, pixels.min(axis=2) >= 210


def blob_sizes(mask: np.ndarray) -> list[int]:
    """The pixel counts of the 4-connected components of a (H, W) bool mask."""
    seen, sizes = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start], stack, size = True, [start], 0
        while stack:
            row, column = stack.pop()
            size += 1
            for near in ((row - 1, column), (row + 1, column), (row, column - 1), (row, column + 1)):
                inside = 0 <= near[0] < mask.shape[0] and 0 <= near[1] < mask.shape[1]
                if inside and mask[near] and not seen[near]:
                    seen[near] = True
                    stack.append(near)
        sizes.append(size)
    return sizes


def test_clutter_is_equal_for_equal_seeds_and_draws_only_on_its_mask():
    first, again, other = ClutterDataset(3, 4), ClutterDataset(3, 4), ClutterDataset(4, 4)
    for index in range(4):
        drawing = first[index]
        assert drawing.image.tobytes() == again[index].image.tobytes()
        assert np.array_equal(drawing.mask, again[index].mask)
        assert drawing.image.tobytes() != other[index].image.tobytes()
        assert 0.0 < drawing.mask.mean() < 0.8
    with pytest.raises(IndexError):
        first[4]


def test_clutter_has_small_near_black_and_near_white_parts_that_world_scenes_never_have():
    clutter = [ClutterDataset(0, 24)[index].image for index in range(24)]
    world = world_dataset(0, 24)
    assert not any(mask.any() for index in range(24) for mask in extremes(world[index].image))
    both = [all(mask.sum() >= 2 for mask in extremes(image)) for image in clutter]
    assert np.mean(both) >= 0.9  # near-black and near-white in nearly every drawing
    small = [sum(1 for size in blob_sizes(dark | light) if size <= 12) for dark, light in map(extremes, clutter)]
    assert min(small) >= 1 and np.mean(small) >= 3  # pieces of a few pixels, as a subject's pupils and brim are


def test_a_work_folder_of_other_settings_is_refused_by_name(scripts, tmp_path):
    claim = scripts.train_toyworld.claim_work_folder
    assert claim(tmp_path / "run.work", {"seed": 0, "steps": {"vae": 2}}) == tmp_path / "run.work"
    claim(tmp_path / "run.work", {"seed": 0, "steps": {"vae": 2}})  # the same settings resume
    with pytest.raises(UserError, match="run.work holds the saved states of a run with other settings"):
        claim(tmp_path / "run.work", {"seed": 1, "steps": {"vae": 2}})


class Interrupted(Exception):
    """Stands for the process being killed."""


def interrupt_at(monkeypatch, stage_class, call: int) -> None:
    """Make ``stage_class.after_step`` raise :class:`Interrupted` on its ``call``-th call (from 1), after the step."""
    calls, original = [], stage_class.after_step

    def after_step(self) -> None:
        original(self)
        calls.append(1)
        if len(calls) == call:
            raise Interrupted

    monkeypatch.setattr(stage_class, "after_step", after_step)


@pytest.fixture
def tiny_run(scripts, monkeypatch):
    """Train a tiny model into a folder (4 steps a stage, 8 scenes, 4 clutter drawings, states every 2 steps)."""
    train, loop = scripts.train_toyworld, scripts.toyworld_loop
    for stage, batch_size in (("vae", 2), ("text", 4), ("unet", 2)):
        monkeypatch.setitem(train.SETTINGS[stage], "batch_size", batch_size)
    monkeypatch.setattr(train, "HELD_OUT_CAPTIONS", 4)
    monkeypatch.setattr(train, "HELD_OUT_SCENES", 2)
    budgets = {stage: loop.Budget(4) for stage in train.SETTINGS}
    return lambda output: train.train_model(output, 5, "cpu", budgets, examples=8, clutter=4, save_every=2)


def test_a_run_stopped_in_any_stage_resumes_to_the_weights_of_one_that_never_stopped(
    scripts, tiny_run, tmp_path, monkeypatch
):
    training = scripts.toyworld_training
    whole = tiny_run(tmp_path / "whole")
    work = tmp_path / "stopped.work"
    with monkeypatch.context() as patch:
        interrupt_at(patch, training.AutoencoderStage, call=3)
        with pytest.raises(Interrupted):
            tiny_run(tmp_path / "stopped")
    saved = torch.load(work / "autoencoder.pt", weights_only=True)
    assert saved["progress"]["step"] == 2 and not saved["progress"]["ended"]  # step 3 was lost with the process
    with monkeypatch.context() as patch:
        interrupt_at(patch, training.DenoiserStage, call=3)
        with pytest.raises(Interrupted):
            tiny_run(tmp_path / "stopped")
    ended = {name: torch.load(work / f"{name}.pt", weights_only=True)["progress"] for name in ("autoencoder", "unet")}
    assert ended["autoencoder"]["ended"] and ended["unet"]["step"] == 2
    resumed = tiny_run(tmp_path / "stopped")
    for component, name in WEIGHTS.items():
        first, again = load_file(tmp_path / "whole" / name), load_file(tmp_path / "stopped" / name)
        assert first.keys() == again.keys() and all(torch.equal(first[key], again[key]) for key in first), component
    assert resumed["scaling_factor"] == whole["scaling_factor"]
    assert [[row[:2] for row in stage["losses"]] for stage in resumed["stages"]] == [
        [row[:2] for row in stage["losses"]] for stage in whole["stages"]
    ]
    assert not work.exists()  # the states go once the model is written
    record = json.loads((tmp_path / "stopped" / "training.json").read_text())
    assert (record["geometry"], record["clutter"], [stage["steps"] for stage in record["stages"]]) == (
        "factor4",
        4,
        [4, 4, 4],
    )


def test_psnr_by_hand(scripts):
    psnr = scripts.measure_toyworld_autoencoder.psnr
    grey, lighter = Image.new("RGB", (2, 2), (100, 100, 100)), Image.new("RGB", (2, 2), (116, 116, 116))
    assert psnr([grey, grey], [lighter, lighter]) == round(10 * np.log10(255**2 / 16**2), 2) == 24.05


def test_measuring_an_autoencoder_reads_the_photos_and_its_reconstructions(scripts, tmp_path):
    folder = str(build_untrained_toyworld(tmp_path / "untrained", geometry=GEOMETRIES["factor2"]))
    options = ["--model", folder, "--photos", "2", "--scenes", "2", "--output", str(tmp_path / "measured.json")]
    record = scripts.measure_toyworld_autoencoder.main(options)
    readings = record["subjects"]["sks creature"]
    assert readings["photos"]["present"] == readings["photos"]["likeness"] == 1.0  # the oracle knows the photos
    assert readings[folder]["present"] == 0.0 and readings[folder]["psnr"] < 15  # an untrained autoencoder's noise
    assert set(record["world_scenes"][folder]) == {*scripts.train_toyworld.SCORED, "psnr"}
    assert json.loads((tmp_path / "measured.json").read_text()) == record
