"""The limit for any trainer: sdft's numerical work of a training step and nothing else, over and over.

    python scripts/bare_loop.py --steps 120 [--device cpu|cuda] CONFIG [CONFIG ...]

The fine-tuner and data module are built from the sdft configs as ``sdft fit`` builds them and the model is set up
as a fit sets it up (``configure_model``, which applies the speed options for the trainer's precision, and
``on_fit_start``). Every step then does what sdft's step computes: the batches sdft draws at that step (the run's
loader, in its order), their loss (:meth:`DiffusionFineTuner.training_loss`: the cached posteriors sampled and the
noise and timesteps drawn as sdft draws them), the backward pass under the trainer precision's autocast, over
``trainer.accumulate_grad_batches`` micro-batches, gradient clipping as the trainer sets it, the config's optimizer
and learning-rate scheduler. There is no Lightning loop, logging or check. scripts/benchmark.py runs it under
scripts/step_recorder.py, as it runs sdft, and checks first that its losses are sdft's (``check_bare_loop``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from benchmark_runs import Setup, build_cli, sdft_configs
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim.lr_scheduler import LRScheduler

from sdft.batches import Batch
from sdft.methods import DiffusionFineTuner


def train(configs: list[Path], device: str, steps: int) -> list[float]:
    """``steps`` optimizer steps of the configs' model, each over ``trainer.accumulate_grad_batches`` micro-batches;
    returns each micro-batch's loss, in order."""
    cli = build_cli(configs)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    model.trainer = data.trainer = trainer
    model.configure_model()
    model.to(device)
    model.on_fit_start()
    data.setup("fit")
    optimizer, scheduler = optimization(model)
    batches = (move(batch, device) for batch in data.train_dataloader())
    losses = []
    for _ in range(steps):
        losses += optimizer_step(model, trainer, optimizer, batches)
        if scheduler is not None:
            scheduler.step()
    return [float(loss) for loss in losses]


def optimization(model: DiffusionFineTuner) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
    """The optimizer and the scheduler (stepped every optimizer step; None without one) the model configures."""
    configured = model.configure_optimizers()
    scheduler = configured.get("lr_scheduler")
    return configured["optimizer"], None if scheduler is None else scheduler["scheduler"]


def optimizer_step(
    model: DiffusionFineTuner, trainer: Trainer, optimizer: torch.optim.Optimizer, batches: Iterator[Batch]
) -> list[torch.Tensor]:
    """One optimizer step over the next ``trainer.accumulate_grad_batches`` batches, the gradients clipped as the
    trainer clips them (Lightning's ``gradient_clip_val`` and ``gradient_clip_algorithm``); the micro-batches'
    losses, detached."""
    accumulation, losses = trainer.accumulate_grad_batches, []
    for _ in range(accumulation):
        with trainer.precision_plugin.forward_context():
            loss, _ = model.training_loss(next(batches))
        (loss / accumulation).backward()
        losses.append(loss.detach())
    if trainer.gradient_clip_val:
        parameters = [param for group in optimizer.param_groups for param in group["params"]]
        if trainer.gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, trainer.gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, trainer.gradient_clip_val)
    optimizer.step()
    optimizer.zero_grad()
    return losses


def move(batch: Batch, device: str) -> Batch:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


class LossRecorder(Callback):
    """Keeps ``train/loss`` as sdft logs it, at every micro-batch."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: object) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def sdft_losses(configs: list[Path]) -> list[float]:
    """``train/loss`` of each micro-batch of ``sdft fit`` over ``configs``, run in this process."""
    cli = build_cli(configs)
    recorder = LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder.losses


def check_bare_loop(setup: Setup, folder: Path, steps: int = 3) -> tuple[list[float], list[float]]:
    """Raise unless the bare loop's losses over the first ``steps`` optimizer steps of ``setup`` are sdft's
    ``train/loss`` (to 1e-6): the bare loop then does sdft's numerical work, which makes it a limit. Returns both
    (the bare loop's, sdft's), one per micro-batch."""
    configs = sdft_configs(dataclasses.replace(setup, steps=steps), folder)
    bare, sdft = train(configs, setup.device, steps), sdft_losses(configs)
    if len(bare) != len(sdft) or any(abs(ours - theirs) > 1e-6 for ours, theirs in zip(bare, sdft, strict=False)):
        raise RuntimeError(f"the bare loop's losses {bare} are not sdft's {sdft}: it does other work than sdft")
    return bare, sdft


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="sdft configs, in --config order")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    options = parser.parse_args(argv)
    train(options.configs, options.device, options.steps)


if __name__ == "__main__":
    main()
