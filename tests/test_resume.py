"""Resuming from any checkpoint step continues exactly as the uninterrupted run: the same batches, noise,
learning rates and logged values, and the same epoch."""

from __future__ import annotations

import warnings

import pytest
import torch
from training import MemoryLogger, checkpointer, cpu_trainer, lora_tuner, subject_data

MAX_STEPS = 8


def scheduled_tuner(model_dir):
    tuner = lora_tuner(model_dir)
    tuner.lr_scheduler = lambda optimizer: torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, total_iters=MAX_STEPS)
    return tuner


def fit(root, model_dir, subject_dir, ckpt_path=None, callbacks=()) -> MemoryLogger:
    logger = MemoryLogger()
    trainer = cpu_trainer(root, MAX_STEPS, list(callbacks), logger=logger, log_every_n_steps=1)
    trainer.fit(scheduled_tuner(model_dir), datamodule=subject_data(subject_dir), ckpt_path=ckpt_path)
    assert trainer.global_step == MAX_STEPS
    return logger


@pytest.fixture(scope="module")
def straight(tiny_sd1, subject_dir, tmp_path_factory):
    """The uninterrupted run, with a checkpoint every two steps."""
    root = tmp_path_factory.mktemp("straight")
    return root, fit(root, tiny_sd1, subject_dir, callbacks=[checkpointer(root, 2)]).values


@pytest.mark.parametrize("step", [2, 4, 6])
def test_resume_from_any_checkpoint_logs_the_uninterrupted_values(straight, step, tiny_sd1, subject_dir, tmp_path):
    root, expected = straight
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        resumed = fit(tmp_path, tiny_sd1, subject_dir, ckpt_path=root / f"checkpoints/step={step}.ckpt").values
    later = {key: value for key, value in expected.items() if key[0] >= step}
    assert {key[1] for key in later} >= {"train/loss", "epoch"}
    assert set(resumed) == set(later)
    for key, value in later.items():
        assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert {value for (_, name), value in resumed.items() if name == "epoch"} == {0.0}
