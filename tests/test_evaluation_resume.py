"""A run resumed into another folder keeps its evaluation history: the whole table, the earlier grids, the chosen
step's checkpoint from the earlier folder, and a best/ export; without the history it says what is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from safetensors.torch import load_file
from training import checkpointer, cpu_trainer, lora_tuner, subject_data

from sdft.callbacks import SubjectEvaluator
from sdft.errors import UserError
from sdft.methods.lora import LORA_WEIGHTS
from sdft.reporting import write_report
from sdft.runs import apply_checkpoint

TINY = {"clip_model": "builtin:tiny-clip", "dino_model": "builtin:tiny-dino", "num_inference_steps": 2}
# no constraints and every step tied: the earliest trained step (2, before the resume at 2) always wins
EARLIEST = {"clip_t_margin": None, "pres_margin": None, "tie_tolerance": 1.0}


def fit(root: Path, name: str, model_dir: Path, subject_dir: Path, ckpt_path: Path | None = None) -> Path:
    """Four steps (or the rest of them) with a checkpoint and an evaluation every two; returns the run folder."""
    run = root / name / "version_0"
    evaluator = SubjectEvaluator(
        every_n_steps=2, num_prompts=1, images_per_prompt=1, class_images=1, **TINY, **EARLIEST
    )
    logger = TensorBoardLogger(root, name=name, version=0)
    trainer = cpu_trainer(root, 4, [evaluator, checkpointer(run, 2)], logger=logger)
    trainer.fit(lora_tuner(model_dir, lr=2e-2), datamodule=subject_data(subject_dir), ckpt_path=ckpt_path)
    return run


def read_json(path: Path):
    return json.loads(path.read_text())


def steps_of(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "evaluation" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tiny_sd1, subject_dir, tmp_path_factory) -> Path:
    return fit(tmp_path_factory.mktemp("first"), "a", tiny_sd1, subject_dir)


def test_a_run_resumed_into_another_folder_exports_the_earlier_best_step(
    first_run, tiny_sd1, subject_dir, tmp_path, caplog
):
    checkpoint = first_run / "checkpoints" / "step=2.ckpt"
    with caplog.at_level(logging.INFO):
        run = fit(tmp_path, "b", tiny_sd1, subject_dir, ckpt_path=checkpoint)
    assert f"best step 2 exported to {run / 'best'}" in caplog.text
    assert steps_of(run) == [0, 2, 4]
    rows = [json.loads(line) for line in (run / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    assert all((run / row["grid"]).is_file() for row in rows)
    # every probe's scores travel with the checkpoint: the resumed run's table holds the earlier steps' too
    scores = [json.loads(line) for line in (run / "evaluation" / "scores.jsonl").read_text().splitlines()]
    earlier = [json.loads(line) for line in (first_run / "evaluation" / "scores.jsonl").read_text().splitlines()]
    assert [score["step"] for score in scores] == [0, 2, 4] and scores[:2] == earlier[:2]
    selection = read_json(run / "evaluation" / "selection.json")
    assert selection["step"] == 2 and selection["export"] == "best"
    assert Path(selection["checkpoint"]) == checkpoint.resolve()
    best = load_file(run / "best" / LORA_WEIGHTS)
    expected = load_file(apply_checkpoint(lora_tuner(tiny_sd1), checkpoint).export(tmp_path / "expected"))
    assert best.keys() == expected.keys() and all(torch.equal(best[k], expected[k]) for k in best)
    text = write_report(run).read_text()
    assert "Exported checkpoint: `best`" in text and len(text.split("![probes at step")) == 4


def test_a_resume_without_the_earlier_folders_says_no_best_was_written(first_run, tiny_sd1, subject_dir, tmp_path):
    state = torch.load(first_run / "checkpoints" / "step=2.ckpt", weights_only=False)
    evaluator_state = state["callbacks"]["SubjectEvaluator"]
    del evaluator_state["run_dirs"], evaluator_state["checkpoint_dirs"]  # as a checkpoint of an older sdft
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="no checkpoint holds step 2"):
        run = fit(tmp_path, "c", tiny_sd1, subject_dir, ckpt_path=tmp_path / "old.ckpt")
    assert steps_of(run) == [0, 2, 4]
    selection = read_json(run / "evaluation" / "selection.json")
    assert (selection["step"], selection["checkpoint"], selection["export"]) == (2, None, None)
    assert not (run / "best").exists()
    text = write_report(run).read_text()
    assert "Exported checkpoint" not in text and "No export of the chosen step" in text
    assert "not found, not shown: step 0 (evaluation/step_000000.png), step 2" in text


def test_keep_last_n_deletes_old_checkpoints_but_never_the_chosen_step(tiny_sd1, subject_dir, tmp_path):
    run = tmp_path / "kept" / "version_0"
    evaluator = SubjectEvaluator(
        every_n_steps=2, num_prompts=1, images_per_prompt=1, class_images=1, keep_last_n=1, **TINY, **EARLIEST
    )
    logger = TensorBoardLogger(tmp_path, name="kept", version=0)
    trainer = cpu_trainer(tmp_path, 8, [evaluator, checkpointer(run, 2)], logger=logger)
    trainer.fit(lora_tuner(tiny_sd1, lr=2e-2), datamodule=subject_data(subject_dir), ckpt_path=None)
    chosen = read_json(run / "evaluation" / "selection.json")["step"]
    assert chosen == 2  # every step tied: the earliest trained step, long before the last one
    kept = sorted(path.name for path in (run / "checkpoints").glob("*.ckpt"))
    assert kept == ["step=2.ckpt", "step=8.ckpt"], kept  # the chosen step and the last one
    assert (run / "best" / LORA_WEIGHTS).is_file()


def test_keep_last_n_must_keep_one():
    with pytest.raises(UserError, match="keep_last_n must be at least 1"):
        SubjectEvaluator(keep_last_n=0)
