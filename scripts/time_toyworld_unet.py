"""Time one training step of the toy world's UNet stage for each geometry, on this machine.

    uv run python scripts/time_toyworld_unet.py [--geometry factor4 --geometry factor2] [--threads 1] [--steps 10]

Each geometry's untrained UNet trains through scripts/train_toyworld.py's own :class:`DenoiserStage` and
``toyworld_loop.take_step`` (the DDPM loss with min-SNR weights, caption dropout, AdamW, clipping, the moving
average) at the stage's batch size, on standard normal latents of its latent side and the captions of world scenes.
After two steps to warm up, ``--steps`` steps are timed one by one; the median and the fastest are printed in
seconds per step, with the load average before and after (other work on the machine slows a step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from toyworld_loop import take_step
from toyworld_training import DenoiserStage
from train_toyworld import MIN_SNR_GAMMA, SETTINGS, tokenize

from sdft.families.ddpm import DDPMSchedule
from sdft.tiny_models import clip_tokenizer, seeded
from sdft.toyworld import world_dataset
from sdft.toyworld.model import GEOMETRIES, LATENT_CHANNELS, toyworld_modules, toyworld_pipeline


def denoiser(geometry: str, examples: int = 256) -> DenoiserStage:
    """The UNet stage of an untrained model of ``geometry`` on ``examples`` random latents and world captions."""
    modules = seeded(0, lambda: toyworld_modules(GEOMETRIES[geometry]))
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = toyworld_pipeline(modules, clip_tokenizer(Path(scratch)))
    unet, _, text_encoder = modules
    text_encoder.requires_grad_(False)
    dataset = world_dataset(0, examples)
    token_ids = tokenize(pipeline.tokenizer, [dataset.describe(index)[1] for index in range(examples)])
    side = GEOMETRIES[geometry].latent_size
    means = torch.randn(examples, LATENT_CHANNELS, side, side, generator=torch.Generator().manual_seed(0))
    schedule = DDPMSchedule(dict(pipeline.scheduler.config), min_snr_gamma=MIN_SNR_GAMMA)
    empty_ids, latents = tokenize(pipeline.tokenizer, [""])[0], (means, torch.zeros_like(means))
    return DenoiserStage(unet, text_encoder, schedule, latents, token_ids, empty_ids, SETTINGS["unet"]["batch_size"])


def step_seconds(stage: DenoiserStage, steps: int, warmup: int = 2) -> list[float]:
    """The wall seconds of each of ``steps`` training steps after ``warmup`` untimed ones."""
    parameters = stage.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator, seconds = torch.Generator().manual_seed(0), []
    for index in range(warmup + steps):
        start = time.perf_counter()
        take_step(stage, parameters, optimizer, schedule, generator)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", action="append", choices=sorted(GEOMETRIES), help="repeat; default: all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    print(f"threads {options.threads}, batch {SETTINGS['unet']['batch_size']}, load before {os.getloadavg()[0]:.2f}")
    for geometry in options.geometry or sorted(GEOMETRIES, reverse=True):
        stage = denoiser(geometry)
        seconds = step_seconds(stage, options.steps)
        parameters = sum(parameter.numel() for parameter in stage.parameters())
        print(
            f"{geometry}: {GEOMETRIES[geometry].latent_size}x{GEOMETRIES[geometry].latent_size} latents, "
            f"{parameters / 1e6:.2f} M parameters, median {statistics.median(seconds):.3f} s/step, "
            f"fastest {min(seconds):.3f} s/step, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
