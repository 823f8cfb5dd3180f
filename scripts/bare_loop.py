"""The limit for any trainer: the denoiser's forward pass, loss, backward pass and optimizer step, over and over, on
the inputs sdft makes of one batch.

    python scripts/bare_loop.py --steps 120 [--device cpu|cuda] CONFIG [CONFIG ...]

The fine-tuner and data module are built from the sdft configs as ``sdft fit`` builds them; the model is set up
(``configure_model``, which applies the speed options for the trainer's precision) and one training batch becomes
the denoiser's inputs (``training_inputs``); then only the step runs, under the trainer precision's autocast, with
the config's optimizer and gradient accumulation. scripts/benchmark.py runs it under scripts/step_recorder.py, as it
runs sdft.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from benchmark_runs import build_cli

from sdft.methods.base import weighted_losses


def train(configs: list[Path], device: str, steps: int) -> None:
    """``steps`` optimizer steps of the configs' model on the inputs of their first training batch, each over
    ``trainer.accumulate_grad_batches`` forward and backward passes."""
    cli = build_cli(configs)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    model.trainer = data.trainer = trainer
    model.configure_model()
    model.to(device)
    data.setup("fit")
    batch = {key: move(value, device) for key, value in next(iter(data.train_dataloader())).items()}
    with torch.no_grad():
        noised, conditioning, _ = model.training_inputs(batch)
    optimizer, accumulation = model.configure_optimizers()["optimizer"], trainer.accumulate_grad_batches
    for _ in range(steps):
        for _ in range(accumulation):
            with trainer.precision_plugin.forward_context():
                loss = weighted_losses(model.family.predict(noised, conditioning), noised).mean()
            (loss / accumulation).backward()
        optimizer.step()
        optimizer.zero_grad()


def move(value: object, device: str) -> object:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="sdft configs, in --config order")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    options = parser.parse_args(argv)
    train(options.configs, options.device, options.steps)


if __name__ == "__main__":
    main()
