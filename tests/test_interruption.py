"""An interrupted fit (SIGTERM, Ctrl-C) saves the step it was on, says how to resume, exits non-zero, and resuming
from that checkpoint continues with the uninterrupted losses."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from training import LossRecorder, checkpointer, cpu_trainer, lora_tuner, subject_data

from sdft.callbacks import InterruptionCheckpoint

MAX_STEPS = 6


class SendSignal(Callback):
    """Sends this process a signal at the end of one step, as a scheduler or a user at the keyboard would."""

    def __init__(self, number: int, step: int) -> None:
        self.number, self.step = number, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.number)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_and_the_run_resumes_exactly(number, tiny_sd1, subject_dir, tmp_path, caplog):
    straight = LossRecorder()
    cpu_trainer(tmp_path / "straight", MAX_STEPS, [straight]).fit(
        lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir)
    )
    interruption = InterruptionCheckpoint()
    callbacks = [SendSignal(number, 4), interruption, checkpointer(tmp_path, 3)]
    trainer = cpu_trainer(tmp_path, MAX_STEPS, callbacks)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C too: Lightning turns it into exit(1), sdft's CLI into 130
        trainer.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))
    if number == signal.SIGTERM:
        assert stopped.value.code == 143
    assert interruption.signal == number and trainer.global_step == 4
    assert signal.getsignal(number) is not interruption.request_stop  # handlers restored
    saved = tmp_path / "checkpoints" / "step=4.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 4
    assert f"--ckpt_path {saved}" in caplog.text

    resumed = LossRecorder()
    cpu_trainer(tmp_path / "resumed", MAX_STEPS, [resumed]).fit(
        lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir), ckpt_path=saved
    )
    assert sorted(resumed.losses) == [5, 6]
    for step in (5, 6):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-6, abs=1e-7)


def logged_losses(folder: Path) -> dict[int, float]:
    """``train/loss`` by logged step from the ``metrics.csv`` of a CSV logger's run folder."""
    with (folder / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]}


def test_the_interrupted_step_is_logged_and_the_resumed_run_logs_the_rest(tiny_sd1, subject_dir, tmp_path):
    def trainer(name: str, callbacks: list[Callback]):
        logger = CSVLogger(tmp_path, name=name, version=0)
        return cpu_trainer(tmp_path / name, MAX_STEPS, callbacks, logger=logger, log_every_n_steps=1)

    trainer("straight", []).fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))
    callbacks = [SendSignal(signal.SIGTERM, 4), InterruptionCheckpoint(), checkpointer(tmp_path / "interrupted", 100)]
    interrupted = trainer("interrupted", callbacks)
    with pytest.raises(SystemExit):
        interrupted.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))
    saved = tmp_path / "interrupted" / "checkpoints" / "step=4.ckpt"
    trainer("resumed", []).fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir), ckpt_path=saved)

    straight = logged_losses(tmp_path / "straight" / "version_0")
    before = logged_losses(tmp_path / "interrupted" / "version_0")
    after = logged_losses(tmp_path / "resumed" / "version_0")
    assert sorted(before) == [0, 1, 2, 3] and sorted(after) == [4, 5]  # step 3 is the fourth, interrupted one
    assert {**before, **after} == pytest.approx(straight, rel=1e-6, abs=1e-7)


def test_sigterm_to_sdft_fit_exits_143_with_a_checkpoint_and_the_resume_command(tmp_path, subject_dir):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"""
trainer:
  accelerator: cpu
  max_steps: 100000
  log_every_n_steps: 1
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {tmp_path}, name: run, flush_logs_every_n_steps: 1}}
  enable_progress_bar: false
  callbacks:
    - {{class_path: lightning.pytorch.callbacks.ModelCheckpoint,
        init_args: {{every_n_train_steps: 100000, filename: "step={{step:06d}}", auto_insert_metric_name: false}}}}
model:
  class_path: sdft.methods.LoRAFineTuner
  init_args:
    family:
      class_path: sdft.families.StableDiffusion
      init_args: {{pretrained_model_name_or_path: builtin:tiny-sd1}}
data:
  class_path: sdft.data.SubjectDataModule
  init_args: {{instance_dir: {subject_dir}, instance_prompt: a photo of sks toy, resolution: 32}}
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sdft.cli", "fit", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "run" / "version_0" / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() or process.poll() is not None or time.monotonic() > deadline):
        time.sleep(0.2)  # the CSV logger writes after every step: training is under way
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 143, output
    checkpoints = list((tmp_path / "run" / "version_0" / "checkpoints").glob("step=*.ckpt"))
    assert len(checkpoints) == 1
    step = torch.load(checkpoints[0], weights_only=False)["global_step"]
    assert step > 0 and checkpoints[0].name == f"step={step:06d}.ckpt"
    config_path = tmp_path / "run" / "version_0" / "config.yaml"
    assert f"sdft fit --config {config_path} --ckpt_path {checkpoints[0]}" in output
    assert not (tmp_path / "run" / "version_0" / "final").exists()
