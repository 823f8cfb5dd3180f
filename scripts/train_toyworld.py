"""Train the toy world's base model (``builtin:toyworld``) from a seed, or measure how well a trained one follows
captions.

    uv run python scripts/train_toyworld.py --output toyworld --seed 0 [--device cpu|cuda] [--examples 16384]
        [--geometry factor4|factor2] [--clutter 0] [--save-every 200]
        [--vae-steps N] [--text-steps N] [--unet-steps N] [--vae-minutes M] [--text-minutes M] [--unet-minutes M]
        [--ship sdft/toyworld/weights/base]
    uv run python scripts/train_toyworld.py --evaluate toyworld [--seed 0] [--samples 96] [--guidance-scale 4]
        [--inference-steps 25] [--grid samples.png]

The model is :mod:`sdft.toyworld.model`'s SD 1.x architecture at 64 px in one of its ``GEOMETRIES``: ``factor4``
(the shipped one: a factor-4 autoencoder, 16x16x4 latents) or ``factor2`` (32x32x4 latents, fine enough for a
novel subject's eyes). It learns from ``--examples`` scenes of ``world_dataset(seed, examples)``, drawn once, in
three stages, each a plain PyTorch loop (scripts/toyworld_training.py, scripts/toyworld_loop.py) with AdamW, a
warm-up and clipped gradients:

1. the autoencoder reconstructs whole 64 px images (squared error, an object's pixels weighing five times the
   background's, and a small KL term): the scenes and ``--clutter`` drawings of what the world never draws
   (:mod:`sdft.toyworld.clutter`: overlapping shapes in any colour, specks, strokes and eye-like discs, near-black
   and near-white among them), without which no autoencoder draws a subject's small parts; its ``scaling_factor``
   is then measured as the inverse standard deviation of the training set's latents (the scenes');
2. the text encoder (width 64, two layers, the real CLIP tokenizer) learns to read every attribute of the scene back
   from its states at and after the caption's end token, through a linear head dropped afterwards. This stands in
   for a pretrained CLIP: trained jointly with the UNet from scratch, a text encoder gets only the weak gradient
   that reaches it through cross-attention and learns its words slowly, and an hour on a CPU is not enough for both;
   read from the captions, the attributes are learnt in a minute, and the UNet then conditions on states in which
   they already differ. It is frozen afterwards, as SD 1.x's CLIP is;
3. the UNet learns the DDPM epsilon objective on latents sampled from the cached posteriors, each caption dropped
   to the empty prompt with probability 0.1 (for classifier-free guidance), and keeps the moving average of its
   weights (decay 0.999).

Everything random comes from ``--seed``: the weights (:func:`sdft.tiny_models.seeded`), the scenes, the clutter,
and one ``torch.Generator`` (on the CPU, whatever ``--device``) that draws every batch, crop and noise; equal seeds
and step budgets give equal models on one machine. A ``--*-minutes`` budget ends its stage early when the time runs
out, which no longer reproduces; ``training.json`` records the steps each stage ran.

Training resumes: every ``--save-every`` steps and at its end each stage saves its whole state (weights,
optimizer, moving average, generator, step, losses) in ``<output>.work/``, and the same command run again after an
interruption continues from the newest state, to the weights an uninterrupted run ends with. The folder holds the
run's settings, and a command with other settings is refused until it is deleted; it is deleted once the model is
written.

The output is written whole or not at all: an ordinary diffusers folder (safetensors) that
``sdft.families.StableDiffusion`` loads, with ``training.json`` (seed, geometry, clutter, steps, losses, wall time,
machine, versions, command, the text encoder's accuracy and the oracle's agreement with the autoencoder's
reconstructions of held-out scenes) beside the weights.

``--ship FOLDER`` also stores the trained folder as sdft ships it (:func:`sdft.toyworld.model.ship`: float16
weights, no tokenizer); ``builtin:toyworld`` unpacks ``sdft/toyworld/weights/base``. The shipped model was made by
``sdft.toyworld.model.TRAIN_COMMAND`` (``factor4``, no clutter); the finer model is trained by the same command
with ``--geometry factor2 --clutter 16384`` (and ``--device cuda`` where there is a GPU), and
``scripts/measure_toyworld_autoencoder.py`` says whether its autoencoder shows the subjects.

``--evaluate`` samples ``--samples`` images for the captions of held-out scenes (``world_dataset(seed + 1000000)``,
never trained on) through ``StableDiffusion``'s pipeline and prints how often :func:`sdft.toyworld.oracle.score`
finds each attribute the caption names, beside chance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from PIL import Image
from toyworld_loop import Budget, StateFolder, fit
from toyworld_training import (
    ATTRIBUTE_VALUES,
    AutoencoderStage,
    DenoiserStage,
    Examples,
    Pictures,
    TextStage,
    attribute_labels,
    draw_clutter,
    draw_examples,
    encode_images,
    latent_scale,
    mixed,
)
from transformers import CLIPTokenizer

from sdft.errors import UserError
from sdft.families import StableDiffusion
from sdft.families.ddpm import DDPMSchedule
from sdft.files import write_folder_atomic, write_json
from sdft.tiny_models import clip_tokenizer, save_pipeline, seeded
from sdft.tools.grids import image_grid
from sdft.toyworld import oracle, parse_caption, world_dataset
from sdft.toyworld.datasets import ClutterDataset
from sdft.toyworld.model import GEOMETRIES, IMAGE_SIZE, ship, toyworld_modules, toyworld_pipeline

ROOT = Path(__file__).resolve().parent.parent
#: the UNet's loss weights each example by min-SNR-gamma (Hang et al. 2023), which learns the coarse layout (what
#: the captions name) first and converges several times faster
MIN_SNR_GAMMA = 5.0
#: held-out scenes come from the dataset of this seed plus the training seed
HELD_OUT = 1_000_000
#: held-out captions the text encoder's accuracy is measured on, and scenes the autoencoder's reconstructions are
HELD_OUT_CAPTIONS, HELD_OUT_SCENES = 256, 64
#: the main object's attributes the oracle checks in ``--evaluate``; the first three say whether captions are followed
SCORED = ("shape", "color", "background", "pattern", "size", "position")
#: per stage: examples per step, learning rate, default steps (about an hour on two CPU cores in all)
SETTINGS = {
    "vae": {"batch_size": 16, "learning_rate": 2e-3, "steps": 2000},
    "text": {"batch_size": 64, "learning_rate": 1e-3, "steps": 1000},
    "unet": {"batch_size": 32, "learning_rate": 1e-3, "steps": 8000},
}


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """(N, 77) token ids, padded and truncated as SD 1.x's pipeline does."""
    length = tokenizer.model_max_length
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def train_model(
    output: Path,
    seed: int,
    device: str,
    budgets: dict[str, Budget],
    examples: int,
    geometry: str = "factor4",
    clutter: int = 0,
    save_every: int = 200,
) -> dict:
    """Train the three stages on ``examples`` scenes of ``world_dataset(seed)`` (the autoencoder also on ``clutter``
    clutter drawings) and write the model folder with its ``training.json``; return that record. Each stage resumes
    from the state it saved in ``<output>.work`` (see the module docstring).

    Args:
        output: the model folder to write.
        seed: the seed of the weights, the data and every draw.
        device: where the modules train.
        budgets: each stage's (``SETTINGS``' keys) budget.
        examples: the number of training scenes.
        geometry: a key of :data:`sdft.toyworld.model.GEOMETRIES`.
        clutter: the number of clutter drawings the autoencoder also learns from.
        save_every: steps between saved states.
    """
    start, generator = time.perf_counter(), torch.Generator().manual_seed(seed)
    settings = {"seed": seed, "examples": examples, "geometry": geometry, "clutter": clutter,
                "steps": {stage: budget.steps for stage, budget in budgets.items()}, "stages": SETTINGS}  # fmt: skip
    states = StateFolder(claim_work_folder(work_folder(output), settings), save_every)
    modules = seeded(seed, lambda: toyworld_modules(GEOMETRIES[geometry]))
    unet, vae, text_encoder = (module.to(device) for module in modules)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = toyworld_pipeline(modules, clip_tokenizer(Path(scratch)))
    drawn = draw_examples(world_dataset(seed, examples, size=IMAGE_SIZE))
    vae_stage = AutoencoderStage(vae, autoencoder_pictures(drawn, seed, clutter), SETTINGS["vae"]["batch_size"])
    stages = [fit(vae_stage, budgets["vae"], SETTINGS["vae"]["learning_rate"], generator, states=states)]
    token_ids, end_id = tokenize(pipeline.tokenizer, drawn.captions), pipeline.tokenizer.eos_token_id
    labels = attribute_labels(drawn.scenes)
    text = TextStage(text_encoder, token_ids, labels, end_id, SETTINGS["text"]["batch_size"], seed)
    stages.append(fit(text, budgets["text"], SETTINGS["text"]["learning_rate"], generator, states=states))
    text_encoder.requires_grad_(False)
    means, stds = encode_images(vae, drawn.images)
    scale = latent_scale(means, stds, generator)
    vae.register_to_config(scaling_factor=scale)
    empty_ids = tokenize(pipeline.tokenizer, [""])[0]
    schedule = DDPMSchedule(dict(pipeline.scheduler.config), min_snr_gamma=MIN_SNR_GAMMA).to(device)
    latents, batch_size = (means * scale, stds * scale), SETTINGS["unet"]["batch_size"]
    denoiser = DenoiserStage(unet, text_encoder, schedule, latents, token_ids, empty_ids, batch_size)
    stages.append(fit(denoiser, budgets["unet"], SETTINGS["unet"]["learning_rate"], generator, states=states))
    held_out = world_dataset(seed + HELD_OUT, HELD_OUT_CAPTIONS, size=IMAGE_SIZE)
    record = {
        **run_facts(seed, device, examples, time.perf_counter() - start),
        "geometry": geometry,
        "clutter": clutter,
        "stages": stages,
        "scaling_factor": scale,
        "text_encoder_accuracy": held_out_accuracy(text, pipeline.tokenizer, held_out),
        "autoencoder_oracle": reconstruction_agreement(vae, held_out, count=HELD_OUT_SCENES),
    }
    write_folder_atomic(output, lambda staging: save_model(pipeline, record, staging))
    shutil.rmtree(states.folder, ignore_errors=True)
    return record


def autoencoder_pictures(drawn: Examples, seed: int, clutter: int) -> Pictures | Examples:
    """The scenes, followed by ``clutter`` clutter drawings of ``ClutterDataset(seed)`` when there are any."""
    return mixed(drawn, draw_clutter(ClutterDataset(seed, clutter, size=IMAGE_SIZE))) if clutter else drawn


def work_folder(output: Path) -> Path:
    """Where a run writing ``output`` keeps its stages' states: ``<output>.work`` beside it."""
    return output.with_name(output.name + ".work")


def claim_work_folder(folder: Path, settings: dict) -> Path:
    """``folder`` with ``settings`` (what a run's states depend on) written in it, or checked against those it holds:
    states saved by a run of other settings are never resumed."""
    path = folder / "settings.json"
    settings = json.loads(json.dumps(settings))  # as JSON reads it back
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise UserError(
            f"{folder} holds the saved states of a run with other settings than this command's; delete the folder "
            "to start afresh, or give the other run's settings to resume it"
        )
    write_json(path, settings)
    return folder


def save_model(pipeline: diffusers.StableDiffusionPipeline, record: dict, folder: Path) -> None:
    """The pipeline as a diffusers folder (safetensors) with ``training.json`` beside its weights."""
    save_pipeline(pipeline.to("cpu"), folder)
    write_json(folder / "training.json", record)


def held_out_accuracy(text: TextStage, tokenizer: CLIPTokenizer, dataset) -> dict[str, float]:
    """How often the text stage's head reads each attribute of held-out captions right."""
    described = [dataset.describe(index) for index in range(len(dataset))]
    token_ids = tokenize(tokenizer, [text for _, text in described])
    return text.accuracy(token_ids, attribute_labels([scene for scene, _ in described]))


@torch.no_grad()
def reconstruction_agreement(vae: diffusers.AutoencoderKL, dataset, count: int) -> dict[str, float]:
    """How often the oracle reads each attribute of ``count`` held-out scenes from the autoencoder's reconstructions
    of their drawings (the best the model can do)."""
    images, _, captions, _ = draw_examples(world_dataset(dataset.seed, count, size=IMAGE_SIZE))
    means, _ = encode_images(vae, images)
    decoded = vae.decode(means.to(next(vae.parameters()).device)).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return agreement([Image.fromarray(array) for array in pixels], captions)


def agreement(images: list[Image.Image], captions: list[str]) -> dict[str, float]:
    """The share of images in which the oracle finds each ``SCORED`` attribute their caption names."""
    found: dict[str, list[bool]] = {key: [] for key in SCORED}
    for image, text in zip(images, captions, strict=True):
        expected = {key: value for key, value in parse_caption(text).items() if key in SCORED}
        for key, agrees in oracle.score(image, expected).items():
            found[key].append(agrees)
    return {key: round(float(np.mean(values)), 3) for key, values in found.items()}


def run_facts(seed: int, device: str, examples: int, seconds: float) -> dict:
    """What reproduces and describes a run: seed, data, command, wall time, machine and versions."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "seed": seed,
        "examples": examples,
        "image_size": IMAGE_SIZE,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "wall_seconds": round(seconds, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "sdft_commit": commit or None,
        },
    }


def evaluate(folder: Path, seed: int, samples: int, guidance_scale: float, steps: int, device: str) -> tuple:
    """Sample one image per held-out caption through :class:`StableDiffusion`'s pipeline; return the oracle's
    agreement rates and the images."""
    family = StableDiffusion(str(folder))
    family.load()
    pipeline = family.to(device).pipeline()
    pipeline.set_progress_bar_config(disable=True)
    dataset = world_dataset(seed + HELD_OUT, samples, size=IMAGE_SIZE)
    captions = [dataset.describe(index)[1] for index in range(samples)]
    generator, images = torch.Generator().manual_seed(seed), []
    for start in range(0, samples, 32):
        batch = captions[start : start + 32]
        options = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "generator": generator}
        images += pipeline(batch, height=IMAGE_SIZE, width=IMAGE_SIZE, **options).images
    return agreement(images, captions), images


def report(rates: dict[str, float]) -> str:
    """The agreement rates beside chance, one attribute a line."""
    lines = [f"{'attribute':<12}{'agreement':>10}{'chance':>8}"]
    lines += [f"{key:<12}{rate:>10.3f}{1 / len(ATTRIBUTE_VALUES[key]):>8.3f}" for key, rate in rates.items()]
    return "\n".join(lines)


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="the model folder to write")
    parser.add_argument("--ship", type=Path, metavar="FOLDER", help="also store the model as sdft ships it")
    parser.add_argument("--evaluate", type=Path, metavar="FOLDER", help="measure a trained model instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads; fewer than the cores on a machine others share")
    parser.add_argument("--examples", type=int, default=16384, help="training scenes, drawn once")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="factor4", help="autoencoder and UNet")
    parser.add_argument("--clutter", type=int, default=0, help="clutter drawings the autoencoder also learns from")
    parser.add_argument("--save-every", type=int, default=200, help="steps between saved training states")
    for stage, settings in SETTINGS.items():
        parser.add_argument(f"--{stage}-steps", type=int, default=settings["steps"])
        parser.add_argument(f"--{stage}-minutes", type=float, help="end the stage early when this time runs out")
    parser.add_argument("--samples", type=int, default=96, help="--evaluate: held-out captions to sample")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--inference-steps", type=int, default=25)
    parser.add_argument("--grid", type=Path, help="--evaluate: also save the samples as one PNG")
    options = parser.parse_args(argv)
    if (options.output is None) == (options.evaluate is None):
        parser.error("give --output (train a model) or --evaluate FOLDER (measure one), not both")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    if options.evaluate is not None:
        rates, images = evaluate(
            options.evaluate, options.seed, options.samples, options.guidance_scale, options.inference_steps,
            options.device,
        )  # fmt: skip
        if options.grid is not None:
            image_grid(images, columns=8).save(options.grid)
        print(report(rates))
        return
    budgets = {
        stage: Budget(getattr(options, f"{stage}_steps"), getattr(options, f"{stage}_minutes")) for stage in SETTINGS
    }
    try:
        record = train_model(
            options.output, options.seed, options.device, budgets, options.examples, options.geometry,
            options.clutter, options.save_every,
        )  # fmt: skip
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    if options.ship is not None:
        ship(options.output, options.ship)
    print(json.dumps({key: record[key] for key in ("wall_seconds", "text_encoder_accuracy", "autoencoder_oracle")}))


if __name__ == "__main__":
    main()
