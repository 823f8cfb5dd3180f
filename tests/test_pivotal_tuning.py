"""Pivotal tuning end to end on the tiny model: a word and a LoRA learn together after an embedding-only phase,
checkpoints hold both, and the export loads in diffusers' stock loaders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_textual_inversion import PLACEHOLDER, PROMPT, base_embeddings
from training import (
    brief_fit,
    checkpointer,
    cpu_trainer,
    stock_images,
    stock_pipeline,
    trained_images,
    validation_loss,
)

from sdft.data import SubjectDataModule
from sdft.families import StableDiffusion
from sdft.methods import PivotalTuning
from sdft.methods.lora import LORA_WEIGHTS, kohya_file_name
from sdft.methods.tokens import EMBEDDINGS_FILE
from sdft.runs import apply_checkpoint

STEPS = 6  # the first half trains the embedding alone
ROWS_KEY = "family.text_encoder.embeddings.token_embedding.rows"


def exported(kohya_name: str) -> list[str]:
    """An export's files: the LoRA in both formats, the embedding for diffusers and for A1111."""
    return sorted(["README.md", EMBEDDINGS_FILE, kohya_name, LORA_WEIGHTS, "sks.safetensors"])


def pivotal(model_dir: Path, lr: float = 2e-2, **kwargs) -> PivotalTuning:
    options = {
        "placeholder_token": PLACEHOLDER,
        "initializer_token": "toy",
        "embedding_lr": 5e-2,
        "embedding_only_fraction": 0.5,
        "rank": 4,
        "alpha": 8.0,
        "train_text_encoder": True,
        **kwargs,
    }
    optimizer = lambda params: torch.optim.AdamW(params, lr=lr)  # noqa: E731
    return PivotalTuning(StableDiffusion(str(model_dir)), optimizer=optimizer, **options)


def pivotal_data(subject_dir: Path) -> SubjectDataModule:
    return SubjectDataModule(str(subject_dir), f"a photo of {PLACEHOLDER} toy", resolution=32, batch_size=2)


def lora_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if key != ROWS_KEY}


@dataclass
class Fit:
    model: PivotalTuning
    initial: dict[str, torch.Tensor]
    checkpoints: Path
    loss_before: float
    loss_after: float


@pytest.fixture(scope="module")
def fit(tiny_sd1, subject_dir, tmp_path_factory) -> Fit:
    """A word and a LoRA on the UNet and text encoder, checkpointed after the embedding-only half and at the end."""
    root = tmp_path_factory.mktemp("fit")
    model, data = pivotal(tiny_sd1), pivotal_data(subject_dir)
    model.configure_model()
    initial = {key: value.clone() for key, value in model.trainable_state_dict().items()}
    trainer = cpu_trainer(root, STEPS, [checkpointer(root, STEPS // 2)])
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    return Fit(model, initial, root / "checkpoints", before, validation_loss(trainer, model, data))


def checkpoint_state(fit: Fit, step: int) -> dict:
    return torch.load(fit.checkpoints / f"step={step}.ckpt", weights_only=False)


def test_short_fit_lowers_the_loss_on_the_instance_images(fit):
    assert fit.loss_after < 0.97 * fit.loss_before, (fit.loss_before, fit.loss_after)  # seeds 0-3: 0.92-0.966


def test_original_rows_stay_bit_identical_and_the_new_row_learns(fit, tiny_sd1):
    base = base_embeddings(tiny_sd1)
    table = fit.model.family.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[: base.shape[0]], base)
    assert table.shape[0] == base.shape[0] + 1
    assert (table[-1] - fit.initial[ROWS_KEY][0]).abs().max() > 1e-2


def test_the_lora_waits_for_the_embedding_only_phase(fit):
    halfway = checkpoint_state(fit, STEPS // 2)
    assert not torch.equal(halfway["state_dict"][ROWS_KEY], fit.initial[ROWS_KEY])
    for key, initial in lora_tensors(fit.initial).items():
        assert torch.equal(halfway["state_dict"][key], initial), key
    # AdamW never saw the LoRA: no moments, so no weight decay or momentum reached it
    assert len(halfway["optimizer_states"][0]["state"]) == 1
    final = checkpoint_state(fit, STEPS)["state_dict"]
    for key, initial in lora_tensors(fit.initial).items():
        assert not torch.equal(final[key], initial), key


def test_checkpoint_holds_the_lora_and_the_new_row(fit):
    state = checkpoint_state(fit, STEPS)["state_dict"]
    assert set(state) == set(fit.initial)
    assert all(".lora_A." in key or ".lora_B." in key for key in lora_tensors(state))
    assert any(key.startswith("family.text_encoder.") for key in lora_tensors(state))
    assert state[ROWS_KEY].shape == (1, 32)


def test_checkpoint_restores_the_embedding_and_the_lora(fit, tiny_sd1):
    restored = apply_checkpoint(pivotal(tiny_sd1), fit.checkpoints / f"step={STEPS}.ckpt")
    trained = fit.model.trainable_state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in restored.trainable_state_dict().items())
    assert np.array_equal(trained_images(restored, PROMPT), trained_images(fit.model, PROMPT))


def test_embeddings_get_their_own_learning_rate(tiny_sd1):
    model = pivotal(tiny_sd1, lr=1e-4, embedding_lr=5e-4)
    model.configure_model()
    lora, embeddings = model.configure_optimizers()["optimizer"].param_groups
    assert (lora["name"], lora["lr"], embeddings["name"], embeddings["lr"]) == ("lora", 1e-4, "embeddings", 5e-4)
    assert [p.shape for p in embeddings["params"]] == [(1, 32)]
    assert sum(p.numel() for p in lora["params"] + embeddings["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_stock_loaders_reproduce_the_trained_images(fit, tiny_sd1, tmp_path):
    assert fit.model.export(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == exported(kohya_file_name(None, STEPS))
    pipeline = stock_pipeline(tiny_sd1)
    untrained = stock_images(pipeline, PROMPT.replace(PLACEHOLDER, "toy"))
    pipeline.load_lora_weights(tmp_path)
    pipeline.load_textual_inversion(tmp_path / EMBEDDINGS_FILE)
    expected = trained_images(fit.model, PROMPT)
    assert np.abs(stock_images(pipeline, PROMPT) - expected).max() <= 1
    assert np.abs(untrained - expected).mean() > 1.0  # training changed the images: the equality above means something


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"embedding_only_fraction": 1.0}, "embedding_only_fraction must be in [0, 1)"),
        ({"embedding_only_fraction": -0.1}, "embedding_only_fraction must be in [0, 1)"),
        ({"embedding_lr": 0.0}, "embedding_lr must be positive"),
        ({"num_vectors": 0}, "num_vectors must be a positive integer"),
    ],
)
def test_invalid_arguments_name_the_config_key(tiny_sd1, options, key):
    with pytest.raises(ValueError, match=re.escape(f"model.init_args.{key}")):
        pivotal(tiny_sd1, **options)


def test_shipped_config_runs_through_the_cli(subject_dir, tmp_path):
    run = brief_fit("configs/sd15/pivotal_tuning.yaml", tmp_path, {"instance_dir": str(subject_dir)})
    final = run / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(
        [*exported(kohya_file_name("run", 2)), "samples.png"]
    )  # the step's evaluation grid
    assert load_file(final / EMBEDDINGS_FILE)[PLACEHOLDER].shape == (2, 32)
    assert (run / "evaluation" / "selection.json").is_file()
