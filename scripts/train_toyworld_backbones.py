"""Train the toy world's metric backbones, a small CLIP and a DINO stand-in, and save them into one folder.

    uv run python scripts/train_toyworld_backbones.py --output sdft/toyworld/weights --seed 0 --steps 1500 --threads 1

The folder gets ``clip/`` and ``dino/`` (each ``config.json`` and ``model.safetensors``) and ``training.json``: the
seed, the steps asked for and taken, every step's loss, the probes on the way (:mod:`sdft.toyworld.encoder_probes`,
on drawings of ``--probe-seed``), the wall time, the machine, the library versions and the command. It appears
whole or not at all. ``load_clip("toyworld-clip:<folder>")`` and ``load_dino("toyworld-dino:<folder>")`` read it;
``builtin:toyworld-clip`` / ``builtin:toyworld-dino`` read the shipped ``sdft/toyworld/weights``. Equal seeds and
steps give equal weights on one machine and device; ``--minutes`` stops each backbone after its share of the time
(the learning rate still follows ``--steps``), so the steps taken then depend on the machine.

Measured with the defaults on one core of a busy shared CPU (``--threads 1``; a second thread only waited there):
0.23 s a CLIP step and 0.20 s a DINO step, of which drawing the batch takes 0.09 s. After 1,200 steps the CLIP
picks an image's caption among 200 for 99% of images and prefers it to the caption with the shape or the pattern
changed for 97% / 96% (colour, background, position, size: 100%); the DINO stand-in retrieves an object's other
drawing among 200 for 90% and keeps it above the object with another shape / pattern / colour for 98.5% / 98% /
100%. The default 4,000 steps take about 15 minutes a backbone on one core; on a GPU drawing bounds a step (about
6 minutes a backbone). The shipped weights (``builtin:toyworld-clip`` / ``-dino``) are the command above: 1,500 steps
each, 61 minutes on a CPU shared with other training (``training.json``); their probes are in
tests/test_toyworld_shipped.py.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import PIL
import torch

from sdft.files import write_folder_atomic, write_json
from sdft.toyworld import encoder_probes as probes
from sdft.toyworld.encoder_training import doubling_steps, train_clip, train_dino
from sdft.toyworld.encoders import build_clip, build_dino, clip_config, dino_config, save_encoder

BACKBONES = ("clip", "dino")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="the folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the training drawings")
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps per backbone")
    parser.add_argument("--minutes", type=float, default=None, help="time budget, shared by the backbones")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's); 1 on a busy shared CPU"
    )
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--clip-batch", type=int, default=128, help="images and captions per CLIP step")
    parser.add_argument("--dino-batch", type=int, default=64, help="objects (two drawings each) per DINO step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=20, help="steps of linear learning-rate warm-up")
    parser.add_argument("--image-size", type=int, default=64, help="the encoders' input side in pixels")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 128], help="CNN stage widths")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--text-width", type=int, default=64, help="the CLIP text transformer's width")
    parser.add_argument("--text-layers", type=int, default=2, help="the CLIP text transformer's layers")
    parser.add_argument("--probe-seed", type=int, default=1_000_003, help="seed of the probes' drawings")
    parser.add_argument("--probe-count", type=int, default=200, help="drawings per probe; 0 for no probes")
    parser.add_argument("--first-probe", type=int, default=25, help="probe after this step and every doubling")
    return parser.parse_args(argv)


def build(kind: str, args: argparse.Namespace):
    """The config and fresh model of one backbone, on ``args.device``."""
    shape = {"image_size": args.image_size, "widths": args.widths, "dim": args.dim}
    if kind == "clip":
        config = clip_config(**shape, width=args.text_width, layers=args.text_layers)
        return config, build_clip(config, args.seed).to(args.device)
    config = dino_config(**shape)
    return config, build_dino(config, args.seed).to(args.device)


def probe_of(kind: str, features, args: argparse.Namespace):
    """What to measure on the way: the CLIP's captions and image view, the DINO's objects and subject."""
    if not args.probe_count:
        return None
    seed, count = args.probe_seed, args.probe_count

    def probe() -> dict[str, float]:
        if kind == "clip":
            image = features.encode_images
            rates = {
                **probes.caption_ranking(features, seed, count),
                **probes.object_ranking(image, seed, count, "image"),
            }
        else:
            rates = {**probes.object_ranking(features, seed, count), **probes.subject_ranking(features, seed)}
        print(kind, " ".join(f"{key} {value:.3f}" for key, value in rates.items()), flush=True)
        return rates

    return probe


def train(kind: str, features, args: argparse.Namespace, seconds: float):
    trainer = (
        partial(train_clip, batch_size=args.clip_batch)
        if kind == "clip"
        else partial(train_dino, batch_size=args.dino_batch)
    )
    return trainer(
        features,
        args.seed,
        args.steps,
        seconds=seconds,
        lr=args.lr,
        warmup=args.warmup,
        probe=probe_of(kind, features, args),
        probe_at=doubling_steps(args.first_probe, args.steps),
    )


def machine(device: str) -> str:
    cpu = f"{platform.machine()} {platform.processor() or ''}".strip()
    text = f"{platform.system()} {platform.release()}, {cpu}, {torch.get_num_threads()} torch threads"
    if device.startswith("cuda"):
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "open_clip": open_clip.__version__,
        "pillow": PIL.__version__,
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return train_and_save(args, argv)
    finally:
        torch.set_num_threads(threads)


def train_and_save(args: argparse.Namespace, argv: list[str] | None) -> Path:
    """Train the backbones ``args`` names and write the output folder."""
    seconds = math.inf if args.minutes is None else 60 * args.minutes / len(args.backbones)
    trained, record, started = {}, {}, time.perf_counter()
    for kind in args.backbones:
        config, features = build(kind, args)
        log = train(kind, features, args, seconds)
        trained[kind] = (features.cpu(), config)
        step_seconds = (log.seconds - log.probe_seconds) / log.steps
        record[kind] = {
            "steps": log.steps,
            "seconds": round(log.seconds, 2),
            "step_seconds": round(step_seconds, 4),
            "probes": log.probes,
            "losses": log.losses,
        }
        print(
            f"{kind}: {log.steps} steps in {log.seconds:.0f} s ({step_seconds:.3f} s a step), loss {log.losses[-1]:.3f}"
        )
    training = {
        "seed": args.seed,
        "steps": args.steps,
        "minutes": args.minutes,
        "device": args.device,
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        **record,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "machine": machine(args.device),
        "versions": versions(),
        "command": shlex.join(
            ["python", "scripts/train_toyworld_backbones.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }

    def write(staging: Path) -> None:
        for kind, (features, config) in trained.items():
            save_encoder(staging / kind, features, config)
        write_json(staging / "training.json", training)

    write_folder_atomic(args.output, write)
    return args.output


if __name__ == "__main__":
    main()
