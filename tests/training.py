"""Helpers for tests that train, for every family: LoRA and full fine-tuners, their data, a CPU trainer that records
losses, a short recorded fit, the stock pipeline's images and the trained model's at fixed seeds, and a brief CLI fit
of a shipped config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DiffusionPipeline
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from sdft.cli import main
from sdft.data import SubjectDataModule
from sdft.families import ModelFamily, StableDiffusion
from sdft.families.base import NoisedLatents
from sdft.methods import DiffusionFineTuner, FullFineTuner, LoRAFineTuner
from sdft.runs import apply_checkpoint
from sdft.tools.sources import family_names

PROMPT = "a photo of sks toy"
#: the sampling seeds of the image comparisons between a trained model and its export
SEEDS = (3, 4)


def adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr)


def lora_tuner(model: ModelFamily | Path, lr: float = 3e-3, **kwargs) -> LoRAFineTuner:
    """A rank-4 LoRA on ``model``: a family, or the folder of an SD-1.x model; AdamW unless ``optimizer`` is given."""
    family = model if isinstance(model, ModelFamily) else StableDiffusion(str(model))
    return LoRAFineTuner(family, **{"optimizer": adamw(lr), "rank": 4, "alpha": 8.0, **kwargs})


def full_tuner(family: ModelFamily, lr: float = 1e-3, **kwargs) -> FullFineTuner:
    return FullFineTuner(family, optimizer=adamw(lr), **kwargs)


def loaded(family: ModelFamily) -> ModelFamily:
    """``family`` with its components loaded, as a fine-tuner's ``configure_model`` loads them."""
    family.load()
    return family


def sampled_latents(family: ModelFamily, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents sampled from the family's posterior of ``pixels`` with one standard normal draw from ``generator``
    (as diffusers' ``latent_dist.sample(generator)`` draws)."""
    posterior = family.encode_posterior(pixels)
    return posterior.sample(torch.randn(posterior.mean.shape, generator=generator))


def training_noise(
    family: ModelFamily, latents: torch.Tensor, generator: torch.Generator, levels: torch.Tensor | None = None
) -> NoisedLatents:
    """The family's forward process at levels (uniform draws unless given) and noise drawn from ``generator``, in
    that order."""
    if levels is None:
        levels = torch.rand(latents.shape[0], generator=generator)
    return family.noise_latents(latents, torch.randn(latents.shape, generator=generator), levels)


def subject_data(subject_dir: Path, prompt: str = PROMPT, **kwargs) -> SubjectDataModule:
    options = {"resolution": 32, "batch_size": 2, "random_flip": 0.5, **kwargs}
    return SubjectDataModule(str(subject_dir), prompt, **options)


class LossRecorder(Callback):
    """Training loss of every optimizer step, keyed by the global step it produced."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


def cpu_trainer(root: Path, max_steps: int, callbacks: list[Callback] = (), **kwargs) -> Trainer:
    options = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    return Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        limit_val_batches=1.0,
        val_check_interval=None,
        check_val_every_n_epoch=None,
        **options,
    )


def validation_loss(trainer: Trainer, model, data) -> float:
    """The fixed-noise validation loss of ``model`` on ``data``'s validation images."""
    return trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]


def checkpointer(root: Path, every_n_steps: int) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=root / "checkpoints", every_n_train_steps=every_n_steps, save_top_k=-1, filename="{step}"
    )


@dataclass
class Fit:
    """A short fit: the model, its per-step training losses, and its validation loss before and after."""

    model: DiffusionFineTuner
    root: Path
    losses: dict[int, float]
    loss_before: float
    loss_after: float

    def checkpoint(self, step: int) -> Path:
        return self.root / "checkpoints" / f"step={step}.ckpt"


def fit(model: DiffusionFineTuner, data, root: Path, steps: int, every: int | None = None) -> Fit:
    """Train ``steps`` steps on ``data``, checkpointing every ``every`` steps (``None``: never)."""
    recorder = LossRecorder()
    trainer = cpu_trainer(root, steps, [recorder] if every is None else [recorder, checkpointer(root, every)])
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    return Fit(model, root, recorder.losses, before, validation_loss(trainer, model, data))


def resumed_losses(model: DiffusionFineTuner, data, root: Path, steps: int, checkpoint: Path) -> dict[int, float]:
    """The training losses of a fresh ``model`` resumed from ``checkpoint`` and run to ``steps``."""
    recorder = LossRecorder()
    cpu_trainer(root, steps, [recorder]).fit(model, datamodule=data, ckpt_path=checkpoint)
    return recorder.losses


def equal_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def stock_pipeline(folder: str | Path, family_class: type[ModelFamily] = StableDiffusion) -> DiffusionPipeline:
    """The family's diffusers pipeline loaded from a model folder, as a user loads a base model or an exported one."""
    pipeline = family_class.pipeline_class.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_images(
    pipeline: DiffusionPipeline, prompt: str = PROMPT, resolution: int = 32, guidance_scale: float = 7.5
) -> np.ndarray:
    """Images of ``prompt`` at :data:`SEEDS` (4 steps) from a stock pipeline, as int16 arrays; the guidance scale
    defaults to ``generate``'s (CFG, or Flux's distilled guidance embedding), asked for as the pipeline's users ask
    for it (Qwen-Image: ``true_cfg_scale`` with a blank negative prompt)."""
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    families = family_names().values()
    family = next((family for family in families if isinstance(pipeline, family.pipeline_class)), ModelFamily)
    images = pipeline(
        prompt=[prompt] * len(SEEDS),
        generator=generators,
        height=resolution,
        width=resolution,
        num_inference_steps=4,
        **family.guidance_options(guidance_scale, len(SEEDS)),
    ).images
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def trained_images(
    model: DiffusionFineTuner, prompt: str = PROMPT, resolution: int = 32, guidance_scale: float = 7.5
) -> np.ndarray:
    """The same images from the model in training (its ``generate``), to compare with :func:`stock_images`."""
    images = model.generate(
        [prompt] * len(SEEDS), list(SEEDS), resolution, num_inference_steps=4, guidance_scale=guidance_scale
    )
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def check_full_transformer_fine_tuning(
    family_class: type[ModelFamily], model_dir: Path, subject_dir: Path, root: Path, guidance_scale: float
) -> None:
    """Four steps of full fine-tuning of a transformer family (SD3, Flux): the loss falls, the checkpoint holds
    exactly the transformer, the exported pipeline reproduces the trained images (which differ from the base
    model's), and the checkpoint restores the trained weights."""
    trained = fit(full_tuner(family_class(str(model_dir))), subject_data(subject_dir), root, steps=4, every=2)
    assert trained.loss_after < trained.loss_before
    state = torch.load(trained.checkpoint(4), weights_only=False)["state_dict"]
    transformer = trained.model.family.transformer
    assert set(state) == {f"family.transformer.{name}" for name, _ in transformer.named_parameters()}
    folder = trained.model.export(root / "export")
    expected = trained_images(trained.model, guidance_scale=guidance_scale)
    exported = stock_images(stock_pipeline(folder, family_class), guidance_scale=guidance_scale)
    assert np.abs(exported - expected).max() <= 1
    base = stock_images(stock_pipeline(model_dir, family_class), guidance_scale=guidance_scale)
    assert np.abs(base - expected).mean() > 1
    restored = apply_checkpoint(full_tuner(family_class(str(model_dir))), trained.checkpoint(4))
    live = trained.model.trainable_state_dict()
    assert all(torch.equal(value, live[key]) for key, value in restored.trainable_state_dict().items())


def brief_fit(
    config: str, tmp_path: Path, data: dict, *options: str, evaluate: bool = True, max_steps: int = 2
) -> Path:
    """A few steps of ``sdft fit`` with a shipped config, on the tiny model at 32 px, logging every step, with a
    checkpoint, samples and (``evaluate``) the subject evaluator with tiny backbones every two steps and at step 0;
    returns the run folder.

    Args:
        config: a config under ``configs/``.
        tmp_path: where the run folder goes.
        data: ``data.init_args`` overrides, e.g. the toy data folder.
        options: further command-line options.
        evaluate: include the ``SubjectEvaluator`` (subject data only).
        max_steps: optimizer steps.
    """
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "every_n_train_steps": 2,
                "save_top_k": -1,
                "filename": "step={step:06d}",
                "auto_insert_metric_name": False,
            },
        },
        {
            "class_path": "sdft.callbacks.SamplePreview",
            "init_args": {"prompts": ["a photo of sks toy"], "every_n_steps": 2, "num_inference_steps": 2},
        },
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
    ]
    if evaluate:
        evaluator = {
            "every_n_steps": 2,
            "num_prompts": 1,
            "images_per_prompt": 1,
            "class_images": 1,
            "num_inference_steps": 2,
            "clip_model": "builtin:tiny-clip",
            "dino_model": "builtin:tiny-dino",
        }
        callbacks.append({"class_path": "sdft.callbacks.SubjectEvaluator", "init_args": evaluator})
    overrides = {
        "trainer": {
            "accelerator": "cpu",
            "precision": "32-true",
            "max_steps": max_steps,
            "val_check_interval": 2,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "run"},
            },
            "callbacks": callbacks,
        },
        "model": {"init_args": {"family": {"init_args": {"pretrained_model_name_or_path": "builtin:tiny-sd1"}}}},
        "data": {"init_args": {"resolution": 32, "num_workers": 0, **data}},
    }
    (tmp_path / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    arguments = ["fit", "--config", config, "--config", str(tmp_path / "overrides.yaml")]
    main([*arguments, "--trainer.enable_progress_bar=false", *options])
    return tmp_path / "run" / "version_0"


def fit_shipped_config(config: str, tmp_path: Path, builtin: str, *options: str, evaluate: bool = True) -> Path:
    """Two steps of ``sdft fit`` with a shipped config on a tiny built-in model, with two class images generated by
    the base model and any further command-line ``options`` (see :func:`brief_fit`); returns the run folder."""
    data = {
        "instance_dir": "builtin:toy-subject",
        "class_dir": str(tmp_path / "class"),
        "num_class_images": 2,
        "class_generation_steps": 2,
    }
    options = [
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={builtin}",
        "--trainer.accumulate_grad_batches=1",
        *options,
    ]
    return brief_fit(config, tmp_path, data, *options, evaluate=evaluate)


class MemoryLogger(Logger):
    """Every logged value, keyed by (step, name)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[int, str], float] = {}

    name = "memory"
    version = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.values.update({(step, key): float(value) for key, value in metrics.items()})

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass
