"""scripts/benchmark_selection.py: the judge reads drawn images as their prompts say, each rule picks its step from
a run's records, and the summary counts wins and regrets (the whole benchmark is run by the script itself)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdft.toyworld import Scene, draw
from sdft.toyworld.subjects import Subject

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "scripts"))
        yield importlib.import_module("benchmark_selection")


def test_judge_scores_the_subject_where_the_prompt_puts_it(bench):
    subject, rng = Subject(), np.random.default_rng(0)
    prompt = f"a photo of {subject.name} on the left, on grass"
    right = draw(subject.scene("grass", "left"), 64, rng)
    presence, context = bench.judge_image(right, prompt, subject)
    assert presence > 0.8 and context == 1.0
    elsewhere = bench.judge_image(draw(subject.scene("brick", "right"), 64, rng), prompt, subject)
    assert elsewhere[0] > 0.8 and elsewhere[1] == 0.0  # the subject, but neither the background nor the side
    circle = draw(Scene("circle", "red", "plain", "large", "left", "grass"))
    world_object = bench.judge_image(circle, prompt, subject)
    assert world_object[0] < 0.2 and world_object[1] == 1.0  # the prompt's place, without the subject
    blue = f"a photo of a blue {subject.name} on grass"
    orange = bench.judge_image(draw(subject.scene("grass")), blue, subject)[0]
    recoloured = bench.judge_image(draw(Subject(color="blue").scene("grass")), blue, subject)[0]
    assert recoloured > 0.9 and orange < recoloured - 0.15  # the colour asked for counts


def write_run(folder: Path, train: dict[int, float], validation: dict[int, float], selected: int) -> Path:
    """A run folder with TensorBoard scalars and a selection, as sdft fit leaves one."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in train.items():
        writer.add_scalar("train/loss", value, step)
    for step, value in validation.items():
        writer.add_scalar("val/loss", value, step)
    writer.close()
    (folder / "evaluation").mkdir(parents=True)
    (folder / "evaluation" / "selection.json").write_text(json.dumps({"step": selected}))
    return folder


def test_each_rule_picks_its_step(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "EVERY", 2)
    train = {0: 1.0, 1: 0.9, 2: 0.2, 3: 0.3, 4: 0.5, 5: 0.5}  # steps 2-3 (checkpoint 4) have the lowest mean
    validation = {2: 0.4, 4: 0.6, 6: 0.1}  # validation is lowest at the last checkpoint
    run = write_run(tmp_path / "run", train, validation, selected=2)
    judged = {step: {"score": score} for step, score in {0: 0.0, 2: 0.5, 4: 0.7, 6: 0.3}.items()}
    assert bench.choices(run, judged) == {"sdft": 2, "last": 6, "train loss": 4, "val loss": 6, "oracle": 4}


def test_summary_counts_wins_ties_and_regret(bench):
    scores = [  # sdft, last, train loss, val loss, oracle
        (0.5, 0.2, 0.5, 0.6, 0.6),
        (0.4, 0.4, 0.1, 0.1, 0.5),
        (0.3, 0.3, 0.3, 0.3, 0.3),
    ]
    results = [{"scores": dict(zip(bench.RULES, row, strict=True))} for row in scores]
    summary = bench.summarize(results)
    assert summary["rules"]["sdft"]["regret"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert summary["rules"]["oracle"]["regret"] == 0.0
    assert {key: summary["duels"]["last"][key] for key in ("wins", "ties", "losses")} == {
        "wins": 1, "ties": 2, "losses": 0,
    }  # fmt: skip
    assert {key: summary["duels"]["val loss"][key] for key in ("wins", "ties", "losses")} == {
        "wins": 1, "ties": 1, "losses": 1,
    }  # fmt: skip
    low, high = summary["duels"]["last"]["gap_ci"]
    assert low <= summary["duels"]["last"]["gap"] <= high


def test_run_configs_are_what_sdft_fit_reads(bench, tmp_path):
    models = bench.Models()
    lora = bench.run_config(bench.Run("lora", False, "fit", 0), tmp_path / "photos", tmp_path, models)
    full = bench.run_config(bench.Run("full", True, "over", 1), tmp_path / "photos", tmp_path, models)
    assert lora["model"]["init_args"]["optimizer"]["init_args"]["lr"] == bench.LEARNING_RATES["lora"]["fit"]
    assert "class_prompt" not in lora["data"]["init_args"]
    assert full["data"]["init_args"]["class_prompt"] == "a photo of a creature"
    assert full["data"]["init_args"]["instance_prompt"] == "a photo of zwx creature"  # seed 1's own subject
    assert yaml.safe_load(yaml.safe_dump(full)) == full


def test_components_and_reading_name_the_base_model_and_the_runs_the_rule_loses(bench):
    judge = {
        "0": {"score": 0.2, "presence": 0.2, "context": 1.0},
        "50": {"score": 0.3, "presence": 0.5, "context": 0.6},
        "100": {"score": 0.1, "presence": 0.4, "context": 0.25},
    }
    choices = {"sdft": 50, "last": 100, "train loss": 100, "val loss": 100, "oracle": 50}
    results = [{"name": "won", "run": {"steps": 100}, "judge": judge, "choices": choices,
                "scores": {rule: judge[str(step)]["score"] for rule, step in choices.items()}}]  # fmt: skip
    parts = bench.components(results)
    assert parts["base model (step 0)"] == {"score": 0.2, "presence": 0.2, "context": 1.0}
    assert parts["last"]["context"] == 0.25 and parts["sdft"]["presence"] == 0.5
    text = bench.reading(bench.summarize(results), parts, results)
    assert "loses to the last step in 0 runs (none)" in text and "against 0.200 for the base model" in text
