"""Full fine-tuning (DreamBooth): learning, checkpoints of the trained modules only, a pipeline export that the
stock loader reproduces, the text encoder's own learning rate, and the shipped DreamBooth configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from training import PROMPT, brief_fit, checkpointer, cpu_trainer, subject_data

from sdft.families import StableDiffusion
from sdft.methods import FullFineTuner
from sdft.methods.lora import LORA_WEIGHTS
from sdft.runs import apply_checkpoint

SEEDS = [3, 4]


def full_tuner(model_dir, lr: float = 1e-3, **kwargs) -> FullFineTuner:
    optimizer = lambda params: torch.optim.AdamW(params, lr=lr)  # noqa: E731
    return FullFineTuner(StableDiffusion(str(model_dir)), optimizer=optimizer, **kwargs)


def validation_loss(model, data, root) -> float:
    return cpu_trainer(root, 1).validate(model, datamodule=data, verbose=False)[0]["val/loss"]


@pytest.fixture(scope="module")
def trained(tiny_sd1, subject_dir, tmp_path_factory):
    """UNet and text encoder fine-tuned for 12 steps, the text encoder at a tenth of the rate, checkpointed."""
    root = tmp_path_factory.mktemp("full")
    model, data = full_tuner(tiny_sd1, train_text_encoder=True, text_encoder_lr=1e-4), subject_data(subject_dir)
    before = validation_loss(model, data, root)
    cpu_trainer(root, 12, [checkpointer(root, 12)]).fit(model, datamodule=data)
    model.loss_before, model.loss_after = before, validation_loss(model, data, root)
    model.checkpoint = root / "checkpoints" / "step=12.ckpt"
    return model


def test_short_fit_lowers_the_loss_on_the_instance_images(trained):
    assert trained.loss_after < 0.9 * trained.loss_before, (trained.loss_before, trained.loss_after)


def test_checkpoint_holds_the_trained_modules_and_nothing_else(trained):
    state = torch.load(trained.checkpoint, weights_only=False)["state_dict"]
    unet = {f"family.unet.{key}" for key in trained.family.unet.state_dict()}
    text_encoder = {f"family.text_encoder.{key}" for key in trained.family.text_encoder.state_dict()}
    assert set(state) == unet | text_encoder
    assert not any(key.startswith("family.vae.") for key in state)


def test_the_text_encoder_has_its_own_learning_rate_and_trains(trained, tiny_sd1):
    optimizer = trained.configure_optimizers()["optimizer"]
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-4]
    base = StableDiffusion(str(tiny_sd1))
    base.load()
    for name in ("unet", "text_encoder"):
        changed = [
            not torch.equal(value, base.state_dict()[f"{name}.{key}"])
            for key, value in getattr(trained.family, name).state_dict().items()
        ]
        assert any(changed), name
    assert all(torch.equal(v, base.vae.state_dict()[k]) for k, v in trained.family.vae.state_dict().items())


def images(pipeline_or_model) -> np.ndarray:
    if isinstance(pipeline_or_model, StableDiffusionPipeline):
        pipeline_or_model.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
        out = pipeline_or_model(
            [PROMPT] * len(SEEDS), generator=generators, height=32, width=32, num_inference_steps=4
        ).images
    else:
        out = pipeline_or_model.generate([PROMPT] * len(SEEDS), SEEDS, resolution=32, num_inference_steps=4)
    return np.stack([np.asarray(image) for image in out]).astype(np.int16)


def test_the_pipeline_export_loads_in_diffusers_and_reproduces_the_images(trained, tiny_sd1, tmp_path):
    folder = trained.export(tmp_path / "pipeline")
    assert folder == tmp_path / "pipeline"
    weights = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))
    assert weights == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.ckpt"))
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    expected = images(trained)
    assert np.abs(images(StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)) - expected).max() <= 1
    base = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None)
    assert np.abs(images(base) - expected).mean() > 1.0  # training changed the images, so equality means something


def test_a_second_export_replaces_the_first_whole(trained, tmp_path):
    (tmp_path / "pipeline" / "stale").mkdir(parents=True)
    trained.export(tmp_path / "pipeline")
    assert not (tmp_path / "pipeline" / "stale").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left


def test_resume_restores_the_trained_modules(trained, tiny_sd1):
    restored = apply_checkpoint(full_tuner(tiny_sd1, train_text_encoder=True, text_encoder_lr=1e-4), trained.checkpoint)
    live = trained.trainable_state_dict()
    assert all(torch.equal(value, live[key]) for key, value in restored.trainable_state_dict().items())


def test_a_text_encoder_rate_without_text_encoder_training_names_both_keys(tiny_sd1):
    with pytest.raises(ValueError, match="text_encoder_lr is set but model.init_args.train_text_encoder is false"):
        full_tuner(tiny_sd1, text_encoder_lr=1e-5)


def class_data(tmp_path) -> dict:
    """Prior preservation with two class images generated by the tiny model."""
    return {
        "instance_dir": "builtin:toy-subject",
        "class_dir": str(tmp_path / "class"),
        "num_class_images": 2,
        "class_generation_steps": 2,
    }


def test_the_dreambooth_config_fits_with_class_images_and_exports_a_pipeline(tmp_path):
    run = brief_fit(
        "configs/sd15/dreambooth.yaml", tmp_path, class_data(tmp_path), "--model.init_args.lr_scheduler=null"
    )
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    for export in ("final", "best"):
        assert StableDiffusionPipeline.from_pretrained(run / export, safety_checker=None).unet is not None
    assert (run / "evaluation" / "selection.json").is_file()


def test_the_dreambooth_lora_config_fits_with_class_images(tmp_path):
    run = brief_fit("configs/sd15/dreambooth_lora.yaml", tmp_path, class_data(tmp_path), "--model.init_args.rank=2")
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    assert (run / "final" / LORA_WEIGHTS).is_file() and (run / "best" / LORA_WEIGHTS).is_file()
