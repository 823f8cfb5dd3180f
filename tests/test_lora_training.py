"""LoRA fine-tuning end to end on the tiny model: learning, slim checkpoints, exact resume."""

from __future__ import annotations

import pytest
import torch
from training import LossRecorder, checkpointer, cpu_trainer, lora_tuner, subject_data, validation_loss


def test_short_fit_lowers_the_loss_on_the_instance_images(tiny_sd1, subject_dir, tmp_path):
    model, data = lora_tuner(tiny_sd1), subject_data(subject_dir)
    trainer = cpu_trainer(tmp_path, max_steps=40)
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    after = validation_loss(trainer, model, data)
    assert after < 0.9 * before, (before, after)


def test_only_adapter_weights_train_and_reach_the_optimizer(tiny_sd1):
    model = lora_tuner(tiny_sd1, train_text_encoder=True)
    model.configure_model()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert any("text_encoder" in name for name in trainable)
    optimizer = model.configure_optimizers()["optimizer"]
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_checkpoint_holds_the_adapter_and_no_frozen_weight(tiny_sd1, subject_dir, tmp_path):
    model = lora_tuner(tiny_sd1)
    cpu_trainer(tmp_path, max_steps=2, callbacks=[checkpointer(tmp_path, 2)]).fit(
        model, datamodule=subject_data(subject_dir)
    )
    checkpoint_path = tmp_path / "checkpoints" / "step=2.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    adapter = model.trainable_state_dict()
    assert set(checkpoint["state_dict"]) == set(adapter)
    assert all("lora_" in key for key in checkpoint["state_dict"])
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter.values())
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    # weights + two AdamW moments + pickling overhead, far below the frozen model
    assert checkpoint_path.stat().st_size < 4 * adapter_bytes + 200_000 < base_bytes
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"] is not None


def test_resume_continues_with_the_uninterrupted_losses(tiny_sd1, subject_dir, tmp_path):
    straight = LossRecorder()
    cpu_trainer(tmp_path / "a", 6, [straight, checkpointer(tmp_path / "a", 3)]).fit(
        lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir)
    )
    resumed = LossRecorder()
    trainer = cpu_trainer(tmp_path / "b", 6, [resumed])
    trainer.fit(
        lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir), ckpt_path=tmp_path / "a/checkpoints/step=3.ckpt"
    )
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-6, abs=1e-7)
    assert trainer.global_step == 6


def test_resume_with_another_method_configuration_names_the_problem(tiny_sd1, subject_dir, tmp_path):
    cpu_trainer(tmp_path, 1, [checkpointer(tmp_path, 1)]).fit(
        lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir)
    )
    other = lora_tuner(tiny_sd1, train_text_encoder=True)
    with pytest.raises(ValueError, match="lacks .* trained tensors"):
        cpu_trainer(tmp_path, 2).fit(
            other, datamodule=subject_data(subject_dir), ckpt_path=tmp_path / "checkpoints/step=1.ckpt"
        )


def test_unknown_target_module_names_the_config_key(tiny_sd1):
    with pytest.raises(ValueError, match="model.init_args.target_modules"):
        lora_tuner(tiny_sd1, target_modules=["no_such_projection"]).configure_model()
