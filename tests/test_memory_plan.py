"""The memory plan (:mod:`sdft.memory`): its weights, trained parameters, gradients and optimizer state equal a real
load's on the tiny models, byte for byte, quantized and cast included; its activations equal what autograd saves in a
real step; ``sdft plan`` prints it from a config without loading weights, and ``--memory_budget`` stops a fit that
exceeds it before loading, naming the switches to add."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from training import adamw, full_tuner, lora_tuner, subject_data

from sdft.cli import main
from sdft.errors import UserError
from sdft.families import Flux, ModelFamily, QwenImage, StableDiffusion, StableDiffusionXL, ZImage
from sdft.memory import (
    GIB,
    SavedBytes,
    Switches,
    advice,
    fewest_changes,
    frozen_bytes,
    frozen_tensors,
    measure,
    parse_size,
    plan,
)
from sdft.methods import TextualInversion
from sdft.speed import SpeedOptions, cast_frozen, quantize_frozen

RESOLUTION = 32
TINY_ZIMAGE = "builtin:tiny-zimage"


def real_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor holds, through a quantized tensor's inner tensors."""
    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(real_bytes(getattr(tensor, name)) for name in names)


def loaded_tuner(tuner):
    tuner.configure_model()  # loads the family and adds the method's weights, as a fit does
    return tuner


def real_sizes(tuner) -> dict[str, int]:
    family = tuner.family
    return {
        name: sum(real_bytes(p.data) for p in module.parameters() if not p.requires_grad)
        for name, module in family.named_children()
        if any(True for _ in module.parameters())
    }


TUNERS = {
    "flux lora with text encoder": lambda: lora_tuner(Flux("builtin:tiny-flux"), train_text_encoder=True),
    "sdxl lora": lambda: lora_tuner(StableDiffusionXL("builtin:tiny-sdxl")),
    "sd textual inversion": lambda: TextualInversion(
        StableDiffusion("builtin:tiny-sd1"), optimizer=adamw(1e-2), placeholder_token="<sks>", initializer_token="toy"
    ),
    "sd full fine-tuning": lambda: full_tuner(StableDiffusion("builtin:tiny-sd1")),
    "qwen-image lora": lambda: lora_tuner(QwenImage("builtin:tiny-qwen-image")),
}


@pytest.mark.parametrize("name", list(TUNERS))
def test_weights_trained_parameters_and_optimizer_state_equal_a_real_load(name):
    footprint = measure(TUNERS[name](), batch_size=1, resolution=RESOLUTION, images=3, prompts=2)
    real = loaded_tuner(TUNERS[name]())
    planned = plan(footprint, Switches())
    assert {c: sum(sizes.values()) for c, sizes in planned.frozen.items()} == real_sizes(real)
    trained = [p for p in real.parameters() if p.requires_grad]
    assert planned.trained == planned.gradients == sum(p.numel() * 4 for p in trained) > 0
    for parameter in trained:
        parameter.grad = torch.zeros_like(parameter)
    optimizer = real.configure_optimizers()["optimizer"]
    optimizer.step()
    state = [t for values in optimizer.state.values() for t in values.values() if t.dim() > 0]
    assert planned.optimizer == sum(t.numel() * t.element_size() for t in state)


@pytest.mark.parametrize("quantize", ["int8", "float8", "nf4", None])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_quantized_and_cast_weights_equal_torchaos_and_the_cast(quantize, dtype):
    family = StableDiffusionXL("builtin:tiny-sdxl")  # its UNet has linear layers large enough for NF4's blocks
    family.load()
    planned = {
        name: sum(frozen_bytes(t, dtype, quantize)[1] for t in frozen_tensors(getattr(family, name), True))
        for name in ("unet", "text_encoder", "text_encoder_2")
    }
    if quantize is not None:
        quantize_frozen(family, quantize)
    if dtype is not None:
        cast_frozen(family, getattr(torch, dtype))
    real = {name: sum(real_bytes(p.data) for p in getattr(family, name).parameters()) for name in planned}
    assert planned == real


def test_activations_equal_what_autograd_saves_in_a_real_step():
    """Counted on the meta device, the saved bytes equal those of the same batch run for real on the CPU, for
    prompts as long as the family reads (the plan's assumption: Z-Image's sequence is as long as its prompt)."""
    footprint = measure(lora_tuner(ZImage(TINY_ZIMAGE, max_sequence_length=16)), 2, RESOLUTION, 1, 1)
    real = loaded_tuner(lora_tuner(ZImage(TINY_ZIMAGE, max_sequence_length=16)))
    saved = real_saved_bytes(real, RESOLUTION)
    assert footprint.saved[False, "32"] == saved > 0
    # checkpointing keeps the blocks' inputs and one block's activations: less, and still something
    assert 0 < footprint.saved[True, "32"] < footprint.saved[False, "32"]
    assert footprint.saved[False, "mixed-16-bit-weights"] < footprint.saved[False, "mixed"] < saved


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # the CPU's bf16 RMS norm
@pytest.mark.parametrize(
    "family", [lambda: ZImage(TINY_ZIMAGE, max_sequence_length=16), lambda: Flux("builtin:tiny-flux")]
)
def test_the_emulated_autocast_saves_what_a_real_bf16_autocast_saves(family):
    """Within 10% on the CPU, whose autocast keeps a few more operations in bfloat16 than CUDA's, which the
    emulation follows (normalisations in float32)."""
    footprint = measure(lora_tuner(family()), 2, 64, 1, 1)
    real = loaded_tuner(lora_tuner(family()))
    with torch.autocast("cpu", torch.bfloat16):
        saved = real_saved_bytes(real, 64)
    assert footprint.saved[False, "mixed"] == pytest.approx(saved, rel=0.1)


def real_saved_bytes(tuner, resolution: int) -> int:
    """What autograd saves in a real forward of a batch of two, counted as the plan counts it."""
    family = tuner.family
    counter = SavedBytes({p.untyped_storage()._cdata for p in tuner.parameters()})
    pixels = torch.zeros(2, 3, resolution, resolution)
    with counter.hooks():
        with torch.no_grad():
            latents = family.encode_posterior(pixels).mean
            embeddings = family.encode_prompts(["a photo of sks dog on the beach at sunset, in the rain"] * 2)
        conditioning = family.condition(embeddings, {"pixel_values": pixels, "prompts": ["a"] * 2})
        noised = family.noise_latents(latents, torch.zeros_like(latents), torch.full((2,), 0.5))
        prediction = family.predict(noised, conditioning)
        torch.nn.functional.mse_loss(prediction.float(), noised.target.float())
    return counter.total


def test_switches_lower_the_plan_in_the_expected_parts():
    footprint = measure(lora_tuner(Flux("builtin:tiny-flux")), batch_size=1, resolution=RESOLUTION, images=3, prompts=2)
    base = plan(footprint, Switches())
    cast = plan(footprint, Switches(frozen_dtype="bfloat16"))
    assert cast.frozen_total == pytest.approx(base.frozen_total / 2, rel=0.01)
    offloaded = plan(footprint, Switches(offload_text_encoders=True))
    assert offloaded.frozen["text_encoder"] == {} and offloaded.offloaded > 0
    assert offloaded.training < base.training and offloaded.encoding == base.encoding  # they meet again
    checkpointed = plan(footprint, Switches(gradient_checkpointing=True))
    assert checkpointed.activations < base.activations
    ddp = plan(footprint, Switches(), devices=2, strategy="ddp")
    assert ddp.gradients == 2 * base.gradients
    sharded = plan(footprint, Switches(), devices=2, strategy="sharded")
    assert sharded.frozen_total == pytest.approx(base.frozen_total / 2, abs=64)


def test_advice_names_the_cheapest_switches_that_fit_or_says_none_do():
    footprint = measure(lora_tuner(Flux("builtin:tiny-flux")), batch_size=1, resolution=RESOLUTION, images=3, prompts=2)
    base = plan(footprint, Switches())
    assert advice(footprint, Switches(), base.peak)[1] is None
    checkpointed = plan(footprint, Switches(gradient_checkpointing=True)).peak
    _, line = advice(footprint, Switches(), checkpointed)
    assert "set model.init_args.gradient_checkpointing: true (planned" in line
    assert "speed" not in line  # checkpointing alone fits: nothing more is named
    bf16 = plan(footprint, Switches(frozen_dtype="bfloat16"), precision="bf16-mixed").peak
    _, line = advice(footprint, Switches(), bf16, precision="bf16-mixed")
    assert "set model.init_args.speed.frozen_dtype: bfloat16 (planned" in line  # checkpointing came first, not needed
    # what it names is needed: the fitting switches less any one of their changes exceed the budget
    everything = Switches(
        gradient_checkpointing=True, frozen_dtype="bfloat16", quantize="float8", offload_text_encoders=True
    )
    budget = plan(footprint, everything, precision="bf16-mixed").peak
    fitting = fewest_changes(footprint, Switches(), everything, budget, {"precision": "bf16-mixed"})
    assert plan(footprint, fitting, precision="bf16-mixed").peak <= budget
    for item in dataclasses.fields(Switches):
        if getattr(fitting, item.name) != getattr(Switches(), item.name):
            undone = dataclasses.replace(fitting, **{item.name: getattr(Switches(), item.name)})
            assert plan(footprint, undone, precision="bf16-mixed").peak > budget
    _, line = advice(footprint, Switches(), 1000)
    assert "at best with sdft's switches" in line and "lower data.resolution or data.batch_size" in line


def test_sizes_read_as_a_user_writes_them():
    assert parse_size("24GB", "--budget") == 24 * GIB
    assert parse_size("12.5 GiB", "--budget") == int(12.5 * GIB)
    assert parse_size("512MB", "--budget") == 512 * 2**20
    with pytest.raises(UserError, match=r"--budget: expected a size such as 24GB or 12.5GiB, got 'lots'"):
        parse_size("lots", "--budget")


def config_for(tmp_path, subject_dir) -> str:
    config = tmp_path / "plan.yaml"
    config.write_text(
        f"""trainer:
  accelerator: cpu
  max_steps: 2
  logger: false
model:
  class_path: sdft.methods.LoRAFineTuner
  init_args:
    family:
      class_path: sdft.families.Flux
      init_args:
        pretrained_model_name_or_path: builtin:tiny-flux
    rank: 4
data:
  class_path: sdft.data.SubjectDataModule
  init_args:
    instance_dir: {subject_dir}
    instance_prompt: a photo of sks toy
    resolution: {RESOLUTION}
"""
    )
    return str(config)


def record_loads(monkeypatch) -> list[bool]:
    """Whether each family load read weights (False: built on the meta device)."""
    loads, original = [], ModelFamily.load_components
    monkeypatch.setattr(
        ModelFamily, "load_components", lambda self, *args: loads.append(self.load_weights) or original(self, *args)
    )
    return loads


def test_sdft_plan_prints_the_plan_and_the_switches_for_a_budget(tmp_path, subject_dir, capsys, monkeypatch):
    loads = record_loads(monkeypatch)
    main(["plan", "--config", config_for(tmp_path, subject_dir), "--budget", "1MB"])
    out = capsys.readouterr().out
    assert "memory plan per device (single device, 1 device(s)), in MiB" in out
    assert "transformer" in out and "optimizer state" in out and "AdamW" in out
    assert "over the budget of 1.0 MiB" in out
    assert loads == [False]  # built on the meta device only


def test_a_fit_over_its_memory_budget_stops_before_loading_in_one_line(tmp_path, subject_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the fit's config.yaml and checkpoints
    loads = record_loads(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", config_for(tmp_path, subject_dir), "--memory_budget", "1MB"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("sdft: error: --memory_budget: this fit plans")
    assert loads and True not in loads  # meta builds only (the disk check's and the plan's), no real load
    main(["fit", "--config", config_for(tmp_path, subject_dir), "--memory_budget", "8GB"])
    assert loads.count(True) == 1 and loads[-1]  # within the budget: planned, then loaded once and trained


class PeakMemory(Callback):
    """The most CUDA memory allocated during the training steps (after the model is on the device)."""

    def on_train_start(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "switches",
    [
        Switches(),
        Switches(gradient_checkpointing=True, frozen_dtype="bfloat16"),
        Switches(gradient_checkpointing=True, frozen_dtype="bfloat16", quantize="float8"),
        Switches(gradient_checkpointing=True, frozen_dtype="bfloat16", offload_blocks="all"),
    ],
)
def test_the_plan_is_near_the_measured_peak_on_cuda(switches, subject_dir, tmp_path):
    """The planned training step against ``max_memory_allocated`` over two steps of a LoRA on the tiny Flux at
    256 px under bf16-mixed: within 25% (the tiny model's own sizes are near the allocator's rounding)."""
    speed = SpeedOptions(
        frozen_dtype=switches.frozen_dtype, quantize=switches.quantize, offload_blocks=switches.offload_blocks
    )
    tuner = lora_tuner(
        Flux("builtin:tiny-flux"), speed=speed, gradient_checkpointing=switches.gradient_checkpointing, cache="off"
    )
    data = subject_data(subject_dir, resolution=256)
    data.check()
    footprint = measure(tuner, batch_size=1, resolution=256, images=0, prompts=0)
    planned = plan(footprint, switches, precision="bf16-mixed")
    peak = PeakMemory()
    trainer = Trainer(
        default_root_dir=tmp_path, accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[peak], limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tuner, data)
    assert planned.training == pytest.approx(peak.peak, rel=0.25)
