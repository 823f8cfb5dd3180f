"""``speed.quantize``: a LoRA trains on an int8 or float8 weight-only base (torchao) whose loss starts where the
full-precision base's does, its checkpoint holds only the adapters, and its export loads on the unquantized base in
diffusers; full fine-tuning refuses it by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training import adamw, fit, lora_tuner, stock_images, stock_pipeline, subject_data, trained_images

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families import Flux, StableDiffusionXL
from sdft.methods import FullFineTuner
from sdft.methods.lora import LORA_WEIGHTS
from sdft.speed import SpeedOptions

STEPS = 4


def flux_lora(quantize: str | None):
    return lora_tuner(Flux("builtin:tiny-flux"), lr=5e-3, speed=SpeedOptions(quantize=quantize))


@pytest.mark.parametrize("quantize", [pytest.param("int8", marks=pytest.mark.slow), "float8"])  # float8: the fast one
def test_a_lora_trains_on_a_quantized_base_from_the_full_precision_loss(quantize, subject_dir, tmp_path):
    quantized = fit(flux_lora(quantize), subject_data(subject_dir), tmp_path / "quantized", STEPS, every=STEPS)
    full = fit(flux_lora(None), subject_data(subject_dir), tmp_path / "full", STEPS)
    transformer = quantized.model.family.transformer
    assert "Tensor" in type(transformer.transformer_blocks[0].attn.to_q.base_layer.weight).__name__  # torchao's
    assert type(transformer.transformer_blocks[0].attn.to_q.base_layer.weight) is not torch.nn.Parameter
    # the same noise draws: the first loss within 2% of the full-precision base's, and training lowers it
    assert quantized.losses[1] == pytest.approx(full.losses[1], rel=0.02)
    assert quantized.loss_after < quantized.loss_before
    state = torch.load(quantized.checkpoint(STEPS), weights_only=False)["state_dict"]
    assert state and all(".lora_" in key for key in state)
    export = quantized.model.export(tmp_path / "export")
    pipeline = stock_pipeline(resolve("builtin:tiny-flux"), Flux)  # unquantized
    pipeline.load_lora_weights(str(export.parent), weight_name=LORA_WEIGHTS)
    exported, trained = stock_images(pipeline), trained_images(quantized.model)
    base = stock_images(stock_pipeline(resolve("builtin:tiny-flux"), Flux))
    # the quantized base draws nearly what the full one draws with the same adapters
    assert np.abs(exported - trained).mean() < np.abs(exported - base).mean()


def test_a_lora_trains_on_an_nf4_base(subject_dir, tmp_path):
    """NF4 quantizes the tiny SDXL UNet's linear layers large enough for its blocks (10 of 60); the first loss stays
    within 2% of the full-precision base's, training lowers it, and the export loads on the unquantized base."""
    family = lambda: StableDiffusionXL("builtin:tiny-sdxl")  # noqa: E731
    quantized = fit(
        lora_tuner(family(), lr=5e-3, speed=SpeedOptions(quantize="nf4")), subject_data(subject_dir), tmp_path, STEPS
    )
    full = fit(lora_tuner(family(), lr=5e-3), subject_data(subject_dir), tmp_path / "full", STEPS)
    unet = quantized.model.family.unet
    nf4 = [m for m in unet.modules() if type(getattr(m, "weight", None)).__name__ == "NF4Tensor"]
    assert len(nf4) == 10
    assert quantized.losses[1] == pytest.approx(full.losses[1], rel=0.02) and quantized.losses[1] != full.losses[1]
    assert quantized.loss_after < quantized.loss_before
    export = quantized.model.export(tmp_path / "export")
    pipeline = stock_pipeline(resolve("builtin:tiny-sdxl"), StableDiffusionXL)
    pipeline.load_lora_weights(str(export.parent), weight_name=LORA_WEIGHTS)
    exported, trained = stock_images(pipeline), trained_images(quantized.model)
    base = stock_images(stock_pipeline(resolve("builtin:tiny-sdxl"), StableDiffusionXL))
    assert np.abs(exported - trained).mean() < np.abs(exported - base).mean()


def test_full_fine_tuning_refuses_a_quantized_base_by_name():
    with pytest.raises(UserError, match=r"speed.quantize int8: full fine-tuning trains every weight"):
        FullFineTuner(Flux("builtin:tiny-flux"), optimizer=adamw(1e-3), speed=SpeedOptions(quantize="int8"))


def test_an_unknown_quantization_names_its_key():
    with pytest.raises(UserError, match=r"model.init_args.speed.quantize must be null or one of int8, float8, nf4"):
        SpeedOptions(quantize="int4")


def test_a_quantized_encoder_has_a_fingerprint_of_its_own_for_the_disk_cache():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from sdft.caching import fingerprint

    torch.manual_seed(0)
    full, quantized = torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)
    quantized.load_state_dict(full.state_dict())
    quantize_(quantized, Int8WeightOnlyConfig())
    assert fingerprint(quantized) == fingerprint(quantized) != fingerprint(full)  # its rounded values are other ones
