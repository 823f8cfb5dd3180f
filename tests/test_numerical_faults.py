"""A nan or an infinity in a step's loss or gradients is found before the weights change: ``nonfinite: skip`` drops
the step and counts it, ``nonfinite: stop`` ends the fit naming the step; a checkpoint or an export of non-finite
weights is never written."""

from __future__ import annotations

import pytest
import torch
from training import MemoryLogger, brief_fit, checkpointer, cpu_trainer, lora_tuner, subject_data

from sdft.errors import UserError
from sdft.faults import all_finite
from sdft.methods import LoRAFineTuner

NAN = float("nan")


def poison_loss(model: LoRAFineTuner, steps_done: int) -> None:
    """Make the denoiser's training prediction nan in the step after ``steps_done`` steps (loss and gradients)."""
    predict = model.family.predict

    def predict_nan(noised, conditioning):
        prediction = predict(noised, conditioning)
        return prediction * NAN if model.training and model.global_step == steps_done else prediction

    model.family.predict = predict_nan


def poison_gradient(model: LoRAFineTuner, steps_done: int) -> str:
    """Make one LoRA weight's gradient infinite (the loss stays finite) in the step after ``steps_done`` steps;
    return the weight's name."""
    model.configure_model()
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    param.register_hook(lambda grad: grad * float("inf") if model.global_step == steps_done else grad)
    return name


def trained(model: LoRAFineTuner) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.trainable_state_dict().items()}


def checkpointed(path) -> dict[str, torch.Tensor]:
    """The trained tensors a checkpoint holds."""
    return torch.load(path, weights_only=True)["state_dict"]


def test_skip_drops_the_faulty_step_counts_it_and_training_goes_on(tiny_sd1, subject_dir, tmp_path):
    model = lora_tuner(tiny_sd1, nonfinite="skip")
    poison_loss(model, steps_done=1)
    logger = MemoryLogger()
    trainer = cpu_trainer(tmp_path, 3, [checkpointer(tmp_path, 1)], logger=logger, log_every_n_steps=1)
    trainer.fit(model, datamodule=subject_data(subject_dir))
    assert trainer.global_step == 3 and model.skipped_steps == 1
    assert [value for (step, key), value in sorted(logger.values.items()) if key == "train/skipped_steps"] == [1.0, 1.0]
    after_1, after_2, after_3 = (checkpointed(tmp_path / "checkpoints" / f"step={k}.ckpt") for k in (1, 2, 3))
    assert all(torch.equal(after_1[key], after_2[key]) for key in after_1)  # step 2 changed nothing
    assert not all(torch.equal(after_2[key], after_3[key]) for key in after_2)  # step 3 trained again
    assert all(torch.isfinite(value).all() for value in trained(model).values())
    assert torch.load(tmp_path / "checkpoints" / "step=3.ckpt", weights_only=True)["skipped_steps"] == 1


def test_stop_names_the_step_and_keeps_the_checkpoints_before_it(tiny_sd1, subject_dir, tmp_path):
    model = lora_tuner(tiny_sd1)  # nonfinite: stop is the default
    poison_loss(model, steps_done=2)
    trainer = cpu_trainer(tmp_path, 4, [checkpointer(tmp_path, 1)])
    with pytest.raises(UserError) as error:
        trainer.fit(model, datamodule=subject_data(subject_dir))
    message = str(error.value)
    assert message.startswith("step 3: the training loss is nan or inf, so the fit stopped before the weights changed")
    assert "model.init_args.optimizer.init_args.lr" in message and "model.init_args.nonfinite: skip" in message
    assert "\n" not in message
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step=1.ckpt", "step=2.ckpt"]
    last = checkpointed(tmp_path / "checkpoints" / "step=2.ckpt")
    live = trained(model)
    assert all(torch.equal(last[key], live[key]) for key in last)  # the faulty step changed nothing
    assert all(torch.isfinite(value).all() for value in last.values())


def test_a_learning_rate_far_too_high_ends_the_command_in_one_line_naming_the_step(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        brief_fit(
            "configs/quickstart_tiny.yaml",
            tmp_path,
            {},
            "--model.init_args.optimizer.init_args.lr=1e30",
            evaluate=False,
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("sdft: error: step 2: the training loss is nan or inf, so the fit")
    assert not (tmp_path / "run" / "version_0" / "final").exists()


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_a_non_finite_gradient_with_a_finite_loss_is_found(nonfinite, tiny_sd1, subject_dir, tmp_path):
    model = lora_tuner(tiny_sd1, nonfinite=nonfinite)
    name = poison_gradient(model, steps_done=0)
    trainer = cpu_trainer(tmp_path, 2)
    if nonfinite == "stop":
        with pytest.raises(UserError, match=rf"^step 1: the gradient of {name} holds nan or inf, so the fit stopped"):
            trainer.fit(model, datamodule=subject_data(subject_dir))
    else:
        trainer.fit(model, datamodule=subject_data(subject_dir))
        assert model.skipped_steps == 1 and trainer.global_step == 2


def test_non_finite_weights_are_never_checkpointed_or_exported(tiny_sd1, subject_dir, tmp_path):
    model = lora_tuner(tiny_sd1)
    trainer = cpu_trainer(tmp_path, 1)
    trainer.fit(model, datamodule=subject_data(subject_dir))
    checkpoint, export = tmp_path / "last.ckpt", tmp_path / "export"
    trainer.save_checkpoint(checkpoint)
    main_file = model.export(export)
    saved, exported = checkpoint.read_bytes(), main_file.read_bytes()
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        param[0, 0] = NAN
    with pytest.raises(UserError, match=rf"^step 1: the trained tensor {name} holds nan or inf, so a checkpoint was"):
        trainer.save_checkpoint(checkpoint)
    with pytest.raises(UserError, match=rf"^step 1: the trained tensor {name} holds nan or inf, so the export "):
        model.export(export)
    assert checkpoint.read_bytes() == saved and main_file.read_bytes() == exported
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_all_finite_is_exact_where_a_sum_overflows():
    big = torch.full((4,), 3e38)  # finite values whose float32 sum is inf
    assert all_finite([]) and all_finite([torch.ones(2, 3), big])
    assert not all_finite([torch.ones(2), torch.tensor([1.0, float("nan")])])
    assert not all_finite([big, torch.tensor([float("-inf"), float("inf")])])  # a sum of nan, not inf
    assert not all_finite([torch.tensor([float("inf")], dtype=torch.bfloat16), torch.zeros(1)])


def test_nonfinite_names_its_key():
    with pytest.raises(UserError, match="model.init_args.nonfinite must be one of stop, skip, got 'ignore'"):
        lora_tuner("unused", nonfinite="ignore")
