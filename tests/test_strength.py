"""The adapter strength the evaluator measures: the rule across scales, the record, the card, and diffusers' weight."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from training import (
    PROMPT,
    checkpointer,
    cpu_trainer,
    lora_tuner,
    stock_images,
    stock_pipeline,
    subject_data,
    trained_images,
)

from sdft.callbacks import SubjectEvaluator
from sdft.errors import UserError
from sdft.evaluation.strength import check_scales, select_scale
from sdft.methods.lora import LORA_WEIGHTS, kohya_file

TINY = {"clip_model": "builtin:tiny-clip", "dino_model": "builtin:tiny-dino", "num_inference_steps": 2}
BASE = {"val/dino": 0.30, "val/clip_t": 0.30, "val/pres": 0.50}


def scale_row(dino: float, clip_t: float = 0.30, pres: float = 0.50) -> dict[str, float]:
    return {"val/dino": dino, "val/clip_t": clip_t, "val/pres": pres}


def test_the_rule_keeps_the_strongest_fidelity_whose_prompt_following_holds():
    rows = {0.5: scale_row(0.35), 1.0: scale_row(0.45), 1.5: scale_row(0.60), 2.0: scale_row(0.70, clip_t=0.20)}
    strength = select_scale(BASE, rows)
    assert strength.scale == 1.5
    assert list(strength.rejected) == [2.0] and "val/clip_t 0.2000 < 0.2700" in strength.rejected[2.0]
    assert strength.reason.startswith("scale 1.5 has val/dino 0.6000, the highest among scales [0.5, 1, 1.5]")


def test_near_ties_go_to_the_weaker_scale():
    rows = {0.5: scale_row(0.35), 1.0: scale_row(0.59), 1.5: scale_row(0.60)}
    strength = select_scale(BASE, rows, tie_tolerance=0.02)
    assert strength.scale == 1.0 and "and is weaker" in strength.reason
    assert select_scale(BASE, rows, tie_tolerance=0.0).scale == 1.5


def test_scales_are_checked_and_sorted():
    assert check_scales([1.5, 0.5, 1.0]) == (0.5, 1.0, 1.5)
    assert check_scales(None) == () and check_scales([]) == ()
    with pytest.raises(UserError, match="SubjectEvaluator.scales must be positive"):
        check_scales([0.0, 1.0])
    with pytest.raises(UserError, match="repeated"):
        check_scales([1.0, 1.0])


@pytest.fixture(scope="module")
def measured(tiny_sd1, subject_dir, tmp_path_factory):
    """A LoRA fit whose evaluator measured the strength of its chosen step, with the trainer and model kept."""
    root = tmp_path_factory.mktemp("strength")
    logger = TensorBoardLogger(root, name="run", version=0)
    evaluator = SubjectEvaluator(every_n_steps=2, num_prompts=2, images_per_prompt=2, class_images=2, **TINY)
    trainer = cpu_trainer(root, 4, [evaluator, checkpointer(root / "run" / "version_0", 2)], logger=logger)
    model = lora_tuner(tiny_sd1, lr=2e-2)
    trainer.fit(model, datamodule=subject_data(subject_dir))
    return trainer, model, evaluator, root / "run" / "version_0"


def test_the_chosen_step_is_scored_at_every_scale_and_the_rule_picks_one(measured):
    _, _, _, run = measured
    selection = json.loads((run / "evaluation" / "selection.json").read_text())
    strength = selection["strength"]
    assert strength["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    rows = {row["scale"]: row for row in strength["rows"]}
    chosen = selection["values"]
    assert rows[1.0]["val/dino"] == chosen["val/dino"]  # scale 1 is the step's own evaluation
    assert len({round(row["val/dino"], 6) for row in rows.values()}) > 1  # other scales draw other images
    for row in rows.values():
        assert (run / row["grid"]).is_file() and row["se"]["val/dino"] >= 0
    assert strength["scale"] in strength["scales"] and f"{strength['scale']:g}" not in strength["rejected"]
    assert strength["reason"].startswith(f"scale {strength['scale']:g} has val/dino")
    card = (run / "best" / "README.md").read_text()
    assert f"Recommended strength: **{strength['scale']:g}**" in card
    with safe_open(kohya_file(run / "best"), "pt") as file:
        assert file.metadata()["modelspec.usage_hint"].startswith(f"strength {strength['scale']:g} ")


def test_a_lora_that_needs_a_higher_scale_is_recommended_one(measured):
    """Halving every LoRA update makes scale 2s draw exactly what scale s drew: the measurement follows."""
    trainer, model, evaluator, _ = measured
    step = trainer.global_step
    evaluator.scales = (0.25, 0.75, 1.25, 1.75)
    strong = evaluator.measure_strength(trainer, model, step)
    for layer in (module for module in model.modules() if isinstance(module, LoraLayer)):
        for up in layer.lora_B.values():
            up.weight.data.mul_(0.5)
    evaluator.scales = (0.5, 1.5, 2.5, 3.5)
    weak = evaluator.measure_strength(trainer, model, step)
    assert weak["scale"] == 2 * strong["scale"]
    for strong_row, weak_row in zip(strong["rows"], weak["rows"], strict=True):
        assert weak_row["val/dino"] == pytest.approx(strong_row["val/dino"], abs=1e-6)
        assert weak_row["val/clip_t"] == pytest.approx(strong_row["val/clip_t"], abs=1e-6)


def test_diffusers_adapter_weight_draws_what_the_measured_scale_drew(measured, tiny_sd1):
    """The card's ``set_adapters(..., scale)`` line loads the export at the strength the evaluator scored."""
    _, model, _, run = measured
    model.export(run / "scaled")
    pipeline = stock_pipeline(tiny_sd1)
    pipeline.load_lora_weights(run / "scaled", weight_name=LORA_WEIGHTS)
    pipeline.set_adapters(pipeline.get_active_adapters(), 0.5)
    with model.adapter_scale(0.5):
        ours = trained_images(model, PROMPT)
    theirs = stock_images(pipeline, PROMPT)
    assert np.abs(ours - theirs).max() <= 2
    assert np.abs(trained_images(model, PROMPT) - theirs).max() > 2  # the scale changed the images
