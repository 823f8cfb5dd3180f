"""``speed.offload_blocks``: the frozen weights of the denoiser's blocks wait in CPU memory and come onto the device
one block at a time; a LoRA fit with it trains exactly what one without it trains (a UNet with gradient
checkpointing, whose mid block runs one block outside a checkpoint; a transformer without); bad values, full
fine-tuning and several processes are refused by name; on a GPU the peak memory falls."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.checkpoint import checkpoint
from training import LossRecorder, cpu_trainer, full_tuner, lora_tuner, subject_data

from sdft.errors import UserError
from sdft.families import Flux, ModelFamily, StableDiffusion
from sdft.methods.base import check_one_process
from sdft.offloading import BlockOffload
from sdft.speed import SpeedOptions, denoiser_blocks

STEPS = 2


def lora_fit(family: ModelFamily, subject_dir, root, speed: SpeedOptions, checkpointing: bool):
    """A short LoRA fit (with a validation pass before it) -> the model and its training losses by step."""
    model = lora_tuner(family, lr=5e-3, speed=speed, gradient_checkpointing=checkpointing)
    losses = LossRecorder()
    trainer = cpu_trainer(root, STEPS, [losses])
    data = subject_data(subject_dir)
    trainer.validate(model, datamodule=data, verbose=False)
    trainer.fit(model, datamodule=data)
    return model, losses.losses


def trained(model) -> dict[str, torch.Tensor]:
    return model.trainable_state_dict()


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    ("make_family", "checkpointing"),
    [(lambda folder: StableDiffusion(str(folder)), True), (lambda folder: Flux("builtin:tiny-flux"), False)],
    ids=["sd-unet-checkpointed", "flux-transformer"],
)
def test_an_offloaded_lora_fit_trains_exactly_what_one_without_trains(
    make_family, checkpointing, tiny_sd1, subject_dir, tmp_path
):
    offloaded, losses = lora_fit(
        make_family(tiny_sd1), subject_dir, tmp_path / "offloaded", SpeedOptions(offload_blocks="all"), checkpointing
    )
    kept, kept_losses = lora_fit(make_family(tiny_sd1), subject_dir, tmp_path / "kept", SpeedOptions(), checkpointing)
    # bit for bit: the same weights, copied, run the same operations
    assert losses == kept_losses and len(losses) == STEPS
    live, reference = trained(offloaded), trained(kept)
    assert live.keys() == reference.keys() and all(torch.equal(live[key], reference[key]) for key in live)
    offload = offloaded.block_offload
    blocks = denoiser_blocks(offloaded.family)
    assert offload is not None and set(offload.weights) == set(blocks) and kept.block_offload is None
    # between steps every frozen block weight is its CPU tensor again, but for the one block still resident
    held = [p for block in blocks if block is not offload.resident for p in offload.weights[block]]
    assert held and all(same_memory(p, offload.stored[p]) for p in held)
    # each training step brings every block on for its forward, and again for its backward all but the one still
    # resident (and a first block whose input needs no gradient: it has no backward)
    assert offload.transfers >= 2 * STEPS * (len(blocks) - 1)
    trained_weights = [p for block in blocks for p in block.parameters() if p.requires_grad]
    assert trained_weights and all(p not in offload.stored for p in trained_weights)


class Block(nn.Module):
    """A convolution and a norm (which save their weights themselves for the backward pass) with a trained scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1).requires_grad_(False)
        self.norm = nn.GroupNorm(1, 2).requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.norm(self.conv(x))


class Stack(nn.Module):
    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x)
        return x


@pytest.mark.parametrize("checkpointed", [True, False])
def test_the_backward_pass_brings_each_block_back_and_gets_the_same_gradients(checkpointed):
    torch.manual_seed(0)
    model = Stack(checkpointed)
    x = torch.randn(2, 2, 4, 4, requires_grad=True)  # so that every block has a backward pass

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        x.grad = None
        model(x).square().mean().backward()
        return [x.grad, *(block.scale.grad for block in model.blocks)]

    expected = gradients()
    offload = BlockOffload(model, list(model.blocks))
    seen = []
    model.blocks[1].register_forward_hook(lambda block, args, out: seen.append(block.conv.weight.data))
    assert all(torch.equal(grad, reference) for grad, reference in zip(gradients(), expected, strict=True))
    # three forwards and, the last block still being resident, two blocks brought back for the backward pass
    assert offload.transfers == 5 and offload.resident is model.blocks[0]
    stored = offload.stored[model.blocks[1].conv.weight]
    assert not same_memory(seen[0], stored) and torch.equal(seen[0], stored)  # a block computes with a copy
    assert same_memory(model.blocks[1].conv.weight, stored)


def test_a_cast_of_the_model_gives_the_offloaded_weights_its_dtype_in_cpu_memory():
    model = Stack(checkpointed=False)
    offload = BlockOffload(model, list(model.blocks[:2]))
    weight = model.blocks[0].conv.weight
    before = weight.detach().clone()
    with offload.conversion():
        model.to(torch.float64)
    assert weight.dtype == torch.float64 and same_memory(weight, offload.stored[weight])
    assert torch.equal(offload.stored[weight], before.double()) and offload.device == torch.device("cpu")
    assert model.blocks[0].scale.dtype == model.blocks[2].conv.weight.dtype == torch.float64


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "half"])
def test_offload_blocks_is_a_positive_count_or_all(value):
    with pytest.raises(UserError, match=r"speed.offload_blocks must be a positive number of blocks or all"):
        SpeedOptions(offload_blocks=value)


@pytest.mark.parametrize("other", [{"compile": True}, {"quantize": "int8"}])
def test_offload_blocks_refuses_the_switches_it_does_not_combine_with(other):
    key = next(iter(other))
    with pytest.raises(UserError, match=rf"offload_blocks does not combine with {key} yet"):
        SpeedOptions(offload_blocks=2, **other)


def test_a_config_gives_a_count_or_all():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--speed", type=SpeedOptions)
    for value, expected in (("all", "all"), ("3", 3)):
        assert (
            parser.instantiate(parser.parse_args([f"--speed.offload_blocks={value}"])).speed.offload_blocks == expected
        )


def test_full_fine_tuning_and_too_many_blocks_are_refused_by_name(subject_dir, tmp_path):
    full = full_tuner(Flux("builtin:tiny-flux"), speed=SpeedOptions(offload_blocks="all"))
    with pytest.raises(UserError, match=r"speed.offload_blocks keeps frozen weights .* \(full fine-tuning\)"):
        cpu_trainer(tmp_path, 1).fit(full, datamodule=subject_data(subject_dir))
    lora = lora_tuner(Flux("builtin:tiny-flux"), speed=SpeedOptions(offload_blocks=99))
    with pytest.raises(UserError, match=r"speed.offload_blocks 99: the transformer of Flux has \d+ blocks"):
        cpu_trainer(tmp_path, 1).fit(lora, datamodule=subject_data(subject_dir))


def test_several_processes_or_sharding_are_refused_by_name():
    with pytest.raises(UserError, match=r"speed.offload_blocks works in single-process fits .* \(2 processes\)"):
        check_one_process("offload_blocks", 2, sharded=False)
    with pytest.raises(UserError, match=r"\(1 processes, sharded\)"):
        check_one_process("offload_blocks", 1, sharded=True)
    check_one_process("offload_blocks", 1, sharded=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloading_lowers_the_peak_gpu_memory_of_a_lora_fit(tiny_sd1, subject_dir, tmp_path):
    peaks, losses = {}, {}
    for name, speed in (("kept", SpeedOptions()), ("offloaded", SpeedOptions(offload_blocks="all"))):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = lora_tuner(StableDiffusion(str(tiny_sd1)), speed=speed, gradient_checkpointing=True)
        recorder = LossRecorder()
        options = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
        trainer = Trainer(
            default_root_dir=tmp_path / name,
            accelerator="cuda",
            devices=1,
            max_steps=STEPS,
            callbacks=[recorder],
            limit_val_batches=0,
            **options,
        )
        trainer.fit(model, datamodule=subject_data(subject_dir))
        peaks[name], losses[name] = torch.cuda.max_memory_allocated(), recorder.losses
    assert peaks["offloaded"] < peaks["kept"]
    assert losses["offloaded"] == pytest.approx(losses["kept"], rel=1e-5)
