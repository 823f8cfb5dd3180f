"""The exported LoRA loads in diffusers' stock loader and reproduces the images of the model in training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from training import PROMPT, cpu_trainer, lora_tuner, stock_images, stock_pipeline, subject_data, trained_images

from sdft.methods.lora import LORA_WEIGHTS


def lora_images(model_dir, lora_dir) -> np.ndarray:
    pipeline = stock_pipeline(model_dir)
    pipeline.load_lora_weights(lora_dir)
    return stock_images(pipeline, PROMPT)


@pytest.fixture(scope="module")
def trained(tiny_sd1, subject_dir, tmp_path_factory):
    """A LoRA with alpha != rank on the UNet and the text encoder, trained for a few steps."""
    model = lora_tuner(tiny_sd1, lr=2e-2, rank=4, alpha=2.0, train_text_encoder=True)
    cpu_trainer(tmp_path_factory.mktemp("fit"), max_steps=8).fit(model, datamodule=subject_data(subject_dir))
    return model


def test_stock_loader_reproduces_the_trained_images(trained, tiny_sd1, tmp_path):
    trained.export(tmp_path)
    expected = trained_images(trained, PROMPT)
    assert np.abs(lora_images(tiny_sd1, tmp_path) - expected).max() <= 1
    base = trained_images_without_adapter(trained)
    assert np.abs(base - expected).mean() > 1.0  # the adapter changes the images, so the equality above means something


def trained_images_without_adapter(model) -> np.ndarray:
    for component in model.adapted_components().values():
        component.disable_adapters()
    try:
        return trained_images(model, PROMPT)
    finally:
        for component in model.adapted_components().values():
            component.enable_adapters()


def test_alpha_travels_in_the_file_metadata(trained, tiny_sd1, tmp_path):
    path = trained.export(tmp_path / "lora")
    with safe_open(path, "pt") as file:
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
        keys = list(file.keys())
    assert metadata["unet.lora_alpha"] == 2.0 and metadata["unet.r"] == 4
    assert metadata["text_encoder.lora_alpha"] == 2.0
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)

    # Without the metadata the same tensors load at alpha = rank: twice the strength, other images.
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    with safe_open(path, "pt") as file:
        save_file({key: file.get_tensor(key) for key in keys}, stripped / LORA_WEIGHTS)
    assert np.abs(lora_images(tiny_sd1, stripped) - lora_images(tiny_sd1, tmp_path / "lora")).mean() > 0.5
