"""SubjectEvaluator in a real fit: the metrics table, the selection, the best export, and DDP equality."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training import checkpointer, cpu_trainer, lora_tuner, subject_data

from sdft.callbacks import SubjectEvaluator
from sdft.callbacks.checkpoint_files import export_step
from sdft.cli import main
from sdft.errors import UserError
from sdft.evaluation.selection import select_step
from sdft.evaluation.uncertainty import standard_error
from sdft.methods.lora import LORA_WEIGHTS
from sdft.runs import apply_checkpoint

TINY = {"clip_model": "builtin:tiny-clip", "dino_model": "builtin:tiny-dino", "num_inference_steps": 2}


def evaluator(**kwargs) -> SubjectEvaluator:
    return SubjectEvaluator(
        **{"every_n_steps": 2, "num_prompts": 2, "images_per_prompt": 2, "class_images": 2, **TINY, **kwargs}
    )


@pytest.fixture(scope="module")
def evaluated_run(tiny_sd1, subject_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluated")
    logger = TensorBoardLogger(root, name="run", version=0)
    monitored = ModelCheckpoint(root / "monitored", monitor="val/dino", mode="max", every_n_train_steps=2)
    callbacks = [evaluator(), checkpointer(root / "run" / "version_0", 2), monitored]
    trainer = cpu_trainer(root, 4, callbacks, logger=logger)
    trainer.fit(lora_tuner(tiny_sd1, lr=2e-2), datamodule=subject_data(subject_dir))
    (root / "monitored.json").write_text(json.dumps({"score": float(monitored.best_model_score)}))
    return root / "run" / "version_0"


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evaluation" / "metrics.jsonl").read_text().splitlines()]


def read_scores(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evaluation" / "scores.jsonl").read_text().splitlines()]


def test_every_checkpoint_step_and_the_base_model_are_scored(evaluated_run):
    rows = read_rows(evaluated_run)
    assert [row["step"] for row in rows] == [0, 2, 4]
    for row in rows:
        assert {"val/clip_i", "val/clip_t", "val/dino", "val/pres"} <= row.keys()
        assert all(-1.0 <= row[key] <= 1.0 for key in row if key.startswith("val/"))
        assert (evaluated_run / row["grid"]).is_file()
    reference = json.loads((evaluated_run / "evaluation" / "reference.json").read_text())
    assert reference["num_reference_images"] == 4 and 0 < reference["val/dino"] <= 1
    events = EventAccumulator(str(evaluated_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/dino")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("val/dino")] == pytest.approx([row["val/dino"] for row in rows])


def test_every_probe_score_is_kept_and_gives_each_step_its_mean_and_standard_error(evaluated_run):
    rows, scores = read_rows(evaluated_run), read_scores(evaluated_run)
    probes = json.loads((evaluated_run / "evaluation" / "probes.json").read_text())["scored"]
    subject = [probe for probe in probes if not probe["class_prompt"]]
    assert [score["step"] for score in scores] == [row["step"] for row in rows]
    for row, score in zip(rows, scores, strict=True):
        assert len(score["val/dino"]) == len(score["val/clip_t"]) == len(subject) == 4
        assert len(score["val/pres"]) == 2 and len(score["val/div"]) == 2  # 2 class images; 2 prompts of 2 images
        for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres", "val/div"):
            assert row[key] == pytest.approx(sum(score[key]) / len(score[key]), abs=1e-5)
            assert row["se"][key] == pytest.approx(standard_error(score[key]), abs=1e-5)
    # the recorded choice is the rule applied with those scores
    selection = json.loads((evaluated_run / "evaluation" / "selection.json").read_text())
    rule = {key: selection["rule"][key] for key in selection["rule"]}
    by_step = {score.pop("step"): score for score in scores}
    assert selection["step"] == select_step(rows, **rule, scores=by_step).step


def export_of(checkpoint: Path, model_dir: Path, directory: Path) -> dict[str, torch.Tensor]:
    return load_file(apply_checkpoint(lora_tuner(model_dir), checkpoint).export(directory))


def test_selection_records_the_winner_and_the_best_export_equals_its_checkpoint(evaluated_run, tiny_sd1, tmp_path):
    selection = json.loads((evaluated_run / "evaluation" / "selection.json").read_text())
    assert selection["step"] in (2, 4) and str(selection["step"]) in selection["reason"]
    assert selection["values"]["step"] == selection["step"]
    best = load_file(evaluated_run / "best" / LORA_WEIGHTS)
    reference = export_of(Path(selection["checkpoint"]), tiny_sd1, tmp_path)
    assert best.keys() == reference.keys() and all(torch.equal(best[k], reference[k]) for k in best)


def test_model_checkpoint_can_monitor_an_evaluator_metric(evaluated_run):
    best_score = json.loads((evaluated_run.parents[1] / "monitored.json").read_text())["score"]
    assert best_score == pytest.approx(max(row["val/dino"] for row in read_rows(evaluated_run)[1:]))


def test_exporting_an_earlier_step_leaves_the_live_weights_alone(evaluated_run, tiny_sd1, tmp_path):
    model = apply_checkpoint(lora_tuner(tiny_sd1), evaluated_run / "checkpoints" / "step=4.ckpt")
    live = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    export_step(model, evaluated_run / "checkpoints" / "step=2.ckpt", current_step=4, step=2, directory=tmp_path)
    exported = load_file(tmp_path / LORA_WEIGHTS)
    earlier = export_of(evaluated_run / "checkpoints" / "step=2.ckpt", tiny_sd1, tmp_path / "reference")
    assert all(torch.equal(exported[k], earlier[k]) for k in earlier)
    assert all(torch.equal(live[k], v) for k, v in model.trainable_state_dict().items())


def test_a_chosen_step_below_the_base_model_on_fidelity_is_warned_about():
    subject_evaluator = evaluator()
    subject_evaluator.rows = [{"step": 0, "val/dino": 0.5}, {"step": 2, "val/dino": 0.4}, {"step": 4, "val/dino": 0.6}]
    with pytest.warns(UserWarning, match=r"the chosen step 2 has val/dino 0.4000, below the base model's 0.5000"):
        subject_evaluator.warn_if_below_base(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subject_evaluator.warn_if_below_base(4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_n_steps": 0}, "SubjectEvaluator.every_n_steps must be >= 1, got 0"),
        ({"identifier": "sks dog"}, "SubjectEvaluator.identifier must be one word"),
        ({"fidelity": "val/clip_t"}, "SubjectEvaluator.fidelity must be val/dino or val/clip_i"),
        ({"class_images": 0}, "class_images=0 turns PRES off, but pres_margin=0.05 limits it; set pres_margin: null"),
        ({"tie_tolerance": -0.1}, "SubjectEvaluator.tie_tolerance must be >= 0"),
        ({"confidence": 1.0}, r"SubjectEvaluator.confidence must be in \[0.5, 1\)"),
        ({"tie_standard_errors": -1}, "SubjectEvaluator.tie_standard_errors must be >= 0"),
        ({"images_per_prompt": 1, "div_margin": 0.1}, "div_margin=0.1 limits DIV, which needs two images of a prompt"),
    ],
)
def test_a_bad_option_is_a_user_error_naming_it(options, message):
    with pytest.raises(UserError, match=message):
        SubjectEvaluator(**options)
    assert SubjectEvaluator(class_images=0, pres_margin=None).rule["pres_margin"] is None


def test_evaluation_cadence_must_fall_on_checkpoints(tiny_sd1, subject_dir, tmp_path):
    trainer = cpu_trainer(tmp_path, 4, [evaluator(every_n_steps=3), checkpointer(tmp_path, 2)])
    with pytest.raises(UserError, match="every_n_steps=3 is not a multiple of ModelCheckpoint.every_n_train_steps=2"):
        trainer.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))


def cli_run(tmp_path: Path, name: str, *options: str) -> list[dict]:
    main(
        [
            "fit",
            "--config",
            "configs/quickstart_tiny.yaml",
            "--trainer.max_steps=1",
            "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.logger.init_args.name={name}",
            "--data.init_args.resolution=32",
            "--trainer.callbacks+=sdft.callbacks.SubjectEvaluator",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.callbacks.num_prompts=3",
            "--trainer.callbacks.images_per_prompt=1",
            "--trainer.callbacks.class_images=1",
            "--trainer.callbacks.export_best=false",
            *[f"--trainer.callbacks.{key}={value}" for key, value in TINY.items()],
            *options,
        ]
    )
    return read_rows(tmp_path / name / "version_0")


@pytest.mark.slow  # multi-process: tests/test_parallel_training.py keeps the fast DDP representative
def test_ddp_splits_the_probes_and_logs_the_single_process_numbers(tmp_path):
    # 3 prompts x 2 images and 1 class image: 7 probes, dealt 4 and 3 to the ranks
    pairs = "--trainer.callbacks.images_per_prompt=2"
    single = cli_run(tmp_path, "single", pairs)
    ddp = cli_run(
        tmp_path, "ddp", pairs, "--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"
    )
    assert single[0]["step"] == ddp[0]["step"] == 0
    for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres", "val/div"):
        assert ddp[0][key] == pytest.approx(single[0][key], abs=1e-5)
        assert ddp[0]["se"][key] == pytest.approx(single[0]["se"][key], abs=1e-5)
    # every probe's score is gathered from both ranks, in probe order
    scores = {name: read_scores(tmp_path / name / "version_0")[0] for name in ("single", "ddp")}
    assert [len(scores["ddp"][key]) for key in ("val/dino", "val/pres", "val/div")] == [6, 1, 3]
    for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres", "val/div"):
        assert scores["ddp"][key] == pytest.approx(scores["single"][key], abs=1e-5)
    # each rank generated only its share: rank 0's grid (two probes a row) has 2 rows of 4 probes against 4 of 7
    rows = {
        name: Image.open(tmp_path / name / "version_0/evaluation/step_000000.png").height for name in ("single", "ddp")
    }
    assert rows["ddp"] * 2 == rows["single"]
