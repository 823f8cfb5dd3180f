"""Measure whether a toy-world model's autoencoder can show a novel subject: the oracle's reading of its
reconstructions of subject photos, and of held-out world scenes, beside the photos themselves.

    uv run python scripts/measure_toyworld_autoencoder.py --model builtin:toyworld --model toyworld-factor2
        [--subjects default|all] [--photos 12] [--scenes 256] [--seed 0] [--threads 1] [--grid reconstructions.png]
        [--output measurements.json] [--base-samples 64]

A model is a folder ``scripts/train_toyworld.py`` wrote or a ``builtin:`` name. Each image goes through the
autoencoder as the pipeline sends it (the posterior's mean, decoded, clamped and rounded to 8 bits). For every
subject (``default``: ``Subject()``; ``all``: the development and held-out subjects too) ``--photos`` photos are
drawn by :func:`sdft.toyworld.subject_photos` (seeded ``--seed``), and the oracle reads the photos and their
reconstructions: :func:`~sdft.toyworld.oracle.subject_present` (its mean: the share present when it says yes or
no) and each feature of :func:`~sdft.toyworld.oracle.subject_likeness`. World scenes are the held-out scenes of
``scripts/train_toyworld.py`` (``world_dataset(seed + 1000000)``, never trained on), read with its
``reconstruction_agreement``. The peak signal-to-noise ratio of the reconstructions is given for both. With
``--base-samples N``, each model also samples every subject's prompt N times, and the oracle says in how many the
subject is present (the base model has never seen it, so about none). Everything
is a function of the weights and the seed; the JSON also records the machine, the versions, the date and the
command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from train_toyworld import HELD_OUT, reconstruction_agreement

from sdft.assets import resolve
from sdft.files import write_json
from sdft.tools.grids import image_grid
from sdft.toyworld import Subject, oracle, subject_photos, world_dataset
from sdft.toyworld.model import IMAGE_SIZE
from sdft.toyworld.subjects import DEVELOPMENT_SUBJECTS, HELD_OUT_SUBJECTS


def load_vae(model: str) -> AutoencoderKL:
    """The autoencoder of a model folder or ``builtin:`` name, in evaluation mode."""
    return AutoencoderKL.from_pretrained(resolve(model), subfolder="vae").eval()


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: list[Image.Image]) -> list[Image.Image]:
    """Each image encoded to its posterior's mean and decoded, as 8-bit RGB."""
    pixels = torch.stack([torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1) for image in images])
    decoded = vae.decode(vae.encode(pixels.float() / 127.5 - 1.0).latent_dist.mean).sample
    arrays = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(array) for array in arrays]


def psnr(originals: list[Image.Image], copies: list[Image.Image]) -> float:
    """The peak signal-to-noise ratio (dB) of ``copies`` against ``originals`` over all their pixels."""
    first, second = (np.stack([np.asarray(image.convert("RGB"), np.float64) for image in group]) for group in
                     (originals, copies))  # fmt: skip
    return round(float(10 * np.log10(255.0**2 / np.mean((first - second) ** 2))), 2)


def subject_reading(images: list[Image.Image], subject: Subject) -> dict[str, float]:
    """The mean over ``images`` of the oracle's presence and likeness features for ``subject``."""
    rows = [
        {"present": float(oracle.subject_present(image, subject)), **oracle.subject_likeness(image, subject)}
        for image in images
    ]
    return {key: round(float(np.mean([row[key] for row in rows])), 3) for key in rows[0]}


def subject_photo_images(subject: Subject, count: int, seed: int) -> list[Image.Image]:
    """``count`` photos of ``subject`` as :func:`subject_photos` draws them."""
    with tempfile.TemporaryDirectory() as folder:
        paths = subject_photos(Path(folder) / "photos", subject, count=count, seed=seed, size=IMAGE_SIZE)
        return [Image.open(path).convert("RGB") for path in paths]


def measure_subjects(vaes: dict[str, AutoencoderKL], subjects: list[Subject], count: int, seed: int) -> tuple:
    """Per subject, the oracle's reading of its photos and of each model's reconstructions of them; and the rows
    of a grid (photos, then each model's reconstructions)."""
    readings, rows = {}, []
    for subject in subjects:
        photos = subject_photo_images(subject, count, seed)
        reading = {"photos": subject_reading(photos, subject)}
        rows.append(photos)
        for name, vae in vaes.items():
            copies = reconstruct(vae, photos)
            reading[name] = {**subject_reading(copies, subject), "psnr": psnr(photos, copies)}
            rows.append(copies)
        readings[subject.name] = reading
    return readings, rows


def measure_scenes(vaes: dict[str, AutoencoderKL], count: int, seed: int) -> dict[str, dict[str, float]]:
    """Per model, the oracle's agreement with the captions on reconstructions of ``count`` held-out scenes, and
    their PSNR."""
    dataset = world_dataset(seed + HELD_OUT, count, size=IMAGE_SIZE)
    scenes = [dataset[index].image for index in range(count)]
    return {
        name: {**reconstruction_agreement(vae, dataset, count), "psnr": psnr(scenes, reconstruct(vae, scenes))}
        for name, vae in vaes.items()
    }


@torch.no_grad()
def base_model_presence(model: str, subjects: list[Subject], count: int, seed: int) -> dict[str, float]:
    """Per subject, the share of ``count`` base-model samples of its prompt (``a photo of sks creature``, 25 DDIM
    steps at guidance 4, seeds ``seed, seed + 1, ...``) in which the oracle finds the subject: what the base model
    knows of the subject before any fine-tuning (the world never draws it, so this should be about 0)."""
    from sdft.families import StableDiffusion

    family = StableDiffusion(model)
    family.load()
    pipeline = family.pipeline()
    pipeline.set_progress_bar_config(disable=True)
    shares = {}
    for subject in subjects:
        prompt = f"a photo of {subject.identifier} {subject.class_noun}"
        found = 0
        for start in range(0, count, 16):
            seeds = range(seed + start, seed + min(start + 16, count))
            generators = [torch.Generator().manual_seed(value) for value in seeds]
            images = pipeline([prompt] * len(generators), generator=generators, guidance_scale=4.0).images
            found += sum(oracle.subject_present(image, subject) for image in images)
        shares[subject.name] = round(found / count, 4)
    return shares


def chosen_subjects(which: str) -> list[Subject]:
    """``default``: the default subject; ``all``: every development and held-out subject (the default first)."""
    if which == "default":
        return [Subject()]
    return list(dict.fromkeys([Subject(), *DEVELOPMENT_SUBJECTS, *HELD_OUT_SUBJECTS]))


def run_facts() -> dict:
    """The machine, versions, date and command of a measurement."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "sdft_commit": commit()},
    }


def commit() -> str | None:
    """The sdft commit measured (its working tree may differ), or None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    return found or None


def report(subjects: dict, scenes: dict) -> str:
    """The measurements as text: one line per subject and source, then one per model on the scenes."""
    lines = []
    for subject, readings in subjects.items():
        for source, reading in readings.items():
            lines.append(f"{subject:<16}{source:<28}" + " ".join(f"{k} {v:.3f}" for k, v in reading.items()))
    for model, reading in scenes.items():
        lines.append(f"{'world scenes':<16}{model:<28}" + " ".join(f"{k} {v:.3f}" for k, v in reading.items()))
    return "\n".join(lines)


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a model folder or builtin: name (repeat)")
    parser.add_argument("--subjects", choices=("default", "all"), default="default")
    parser.add_argument("--photos", type=int, default=12, help="photos per subject")
    parser.add_argument("--scenes", type=int, default=256, help="held-out world scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--grid", type=Path, help="also save photos and reconstructions as one PNG, a row each")
    parser.add_argument("--output", type=Path, help="also write the measurements as JSON")
    parser.add_argument(
        "--base-samples", type=int, default=0, help="also sample each subject's prompt this many times per model"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    options = parse_options(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    vaes = {model: load_vae(model) for model in options.model}
    subjects, rows = measure_subjects(vaes, chosen_subjects(options.subjects), options.photos, options.seed)
    scenes = measure_scenes(vaes, options.scenes, options.seed)
    record = {**run_facts(), "models": options.model, "photos": options.photos, "scenes": options.scenes,
              "seed": options.seed, "subjects": subjects, "world_scenes": scenes}  # fmt: skip
    print(report(subjects, scenes))
    if options.base_samples:
        chosen = chosen_subjects(options.subjects)
        presence = {model: base_model_presence(model, chosen, options.base_samples, options.seed) for model in vaes}
        record |= {"base_samples": options.base_samples, "base_model_presence": presence}
        for model, shares in presence.items():
            print(f"{'base samples':<16}{model:<28}" + " ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    if options.grid is not None:
        image_grid([image for row in rows for image in row], columns=options.photos).save(options.grid)
    if options.output is not None:
        write_json(options.output, record)
    return record


if __name__ == "__main__":
    main()
