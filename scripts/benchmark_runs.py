"""One measured run of scripts/benchmark.py: sdft, diffusers' script or the bare loop as a new process under the step
recorder."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from lightning.pytorch import LightningDataModule

from sdft.lightning_cli import QUIET, SdftCLI
from sdft.methods import DiffusionFineTuner

ROOT = Path(__file__).resolve().parents[1]
RECORDER = ROOT / "scripts" / "step_recorder.py"
BARE_LOOP = ROOT / "scripts" / "bare_loop.py"
#: callbacks that sample images: left out of the runs that time steps
SAMPLING_CALLBACKS = ("sdft.callbacks.SamplePreview", "sdft.callbacks.SubjectEvaluator")
EVALUATOR = "sdft.callbacks.SubjectEvaluator"
TINY_BACKBONES = {"clip_model": "builtin:tiny-clip", "dino_model": "builtin:tiny-dino"}


@dataclass(frozen=True)
class Size:
    """A model to measure on.

    Attributes:
        build: writes the model as a diffusers folder, ``build(folder, seed)``.
        config: the sdft LoRA config that trains it, relative to the repository.
        resolution: training resolution in pixels.
        reference: diffusers' DreamBooth-LoRA script for its family, in examples/dreambooth/.
        description: what the model is, for the report.
    """

    build: Callable[[Path, int], Path]
    config: str
    resolution: int
    reference: str
    description: str


@dataclass(frozen=True)
class Setup:
    """What every measurement of one size shares.

    Attributes:
        name: the size's name.
        size: the model and config it stands for.
        model: the model's diffusers folder.
        photos: the folder of instance photos.
        device: ``cpu`` or ``cuda``.
        warmup: optimizer steps before the steady step is timed.
        steps: optimizer steps of a run.
        pycache: where the new processes keep their bytecode caches (``PYTHONPYCACHEPREFIX``).
    """

    name: str
    size: Size
    model: Path
    photos: Path
    device: str
    warmup: int
    steps: int
    pycache: Path


# -- the sdft configuration ---------------------------------------------------------------------------------------


def sdft_overrides(setup: Setup, save_dir: Path, evaluated: bool) -> dict:
    """The second config of an sdft run: this size's model, photos, resolution, steps, device and run folder; without
    the sampling callbacks and validation and with one checkpoint at the end unless ``evaluated``."""
    base = yaml.safe_load((ROOT / setup.size.config).read_text())
    callbacks = base["trainer"].get("callbacks", [])
    if evaluated:
        callbacks = [with_tiny_backbones(callback) for callback in callbacks]
    else:
        callbacks = [checkpoint_at(c, setup.steps) for c in callbacks if c["class_path"] not in SAMPLING_CALLBACKS]
    cuda = setup.device == "cuda"
    trainer = {
        "accelerator": setup.device,
        "precision": "bf16-mixed" if cuda else "32-true",
        "max_steps": setup.steps,
        "callbacks": callbacks,
        "default_root_dir": str(save_dir),
    }
    if "logger" in base["trainer"]:
        logger = base["trainer"]["logger"]["class_path"]
        trainer["logger"] = {"class_path": logger, "init_args": {"save_dir": str(save_dir)}}
    if not evaluated:
        trainer["limit_val_batches"] = 0
    model = {"family": {"init_args": {"pretrained_model_name_or_path": str(setup.model)}}}
    if cuda:
        model["speed"] = {"frozen_dtype": "bfloat16"}
    data = {"instance_dir": str(setup.photos), "resolution": setup.size.resolution}
    return {"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}


def checkpoint_at(callback: dict, step: int) -> dict:
    """A ``ModelCheckpoint`` saving only at ``step`` (the last); other callbacks unchanged."""
    if not callback["class_path"].endswith("ModelCheckpoint"):
        return callback
    return {**callback, "init_args": {**callback.get("init_args", {}), "every_n_train_steps": step}}


def with_tiny_backbones(callback: dict) -> dict:
    """The evaluator with the built-in tiny CLIP and DINO (offline); other callbacks unchanged."""
    if callback["class_path"] != EVALUATOR:
        return callback
    return {**callback, "init_args": {**callback.get("init_args", {}), **TINY_BACKBONES}}


def fresh_folder(folder: Path) -> Path:
    """``folder``, emptied: a measurement made again starts from nothing."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def sdft_configs(setup: Setup, folder: Path, evaluated: bool = False) -> list[Path]:
    """The size's config and its overrides (written into ``folder``, emptied first), in the order ``--config`` takes
    them."""
    fresh_folder(folder)
    overrides = folder / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(sdft_overrides(setup, folder / "runs", evaluated), sort_keys=False))
    return [ROOT / setup.size.config, overrides]


def build_cli(configs: list[Path]) -> SdftCLI:
    """sdft's CLI over ``configs``, its classes instantiated and nothing run."""
    with warnings.catch_warnings():
        for message, category in QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        return SdftCLI(
            DiffusionFineTuner,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            args=[f"--config={config}" for config in configs],
            run=False,
        )


@dataclass(frozen=True)
class TrainingSettings:
    """What the reference is told, read from sdft's resolved config.

    Attributes:
        prompt_options: how the family reads prompts (e.g. SD3's and Flux's ``max_sequence_length``), under the
            names diffusers' scripts give these flags.
    """

    prompt: str
    batch_size: int
    num_workers: int
    rank: int
    learning_rate: float
    gradient_checkpointing: bool
    accumulation: int = 1
    prompt_options: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, cli: SdftCLI) -> TrainingSettings:
        model, data = cli.model, cli.datamodule
        learning_rate = model.optimizer([torch.nn.Parameter(torch.zeros(1))]).defaults["lr"]
        return cls(
            data.instance_prompt,
            data.batch_size,
            data.num_workers,
            model.rank,
            learning_rate,
            model.gradient_checkpointing,
            cli.trainer.accumulate_grad_batches,
            model.family.sampling_options(),
        )


# -- measurements -------------------------------------------------------------------------------------------------


def run_recorded(program: list[str], folder: Path, pycache: Path) -> dict:
    """Run ``program`` (a script and its arguments, or ``-m module ...``) under the step recorder in a new process;
    return its time to first step, steps, wall time and peak memory. The log goes to ``folder/log.txt``.

    Python's bytecode caches are written and read under ``pycache``, whatever ``PYTHONDONTWRITEBYTECODE`` says: a
    start that compiles thousands of modules is no one's usual start.
    """
    record = folder / "steps.json"
    argv = [sys.executable, str(RECORDER), str(record), *program]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPYCACHEPREFIX": str(pycache)}
    with open(folder / "log.txt", "wb") as log:
        redirect = [(os.POSIX_SPAWN_DUP2, log.fileno(), 1), (os.POSIX_SPAWN_DUP2, log.fileno(), 2)]
        started = time.time()
        pid = os.posix_spawn(sys.executable, argv, env, file_actions=redirect)
        _, status = os.waitpid(pid, 0)
    wall = time.time() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(program)} failed ({os.waitstatus_to_exitcode(status)}); see {log.name}")
    recorded = json.loads(record.read_text())
    steps = [moment - started for moment in recorded["steps"]]
    peak = recorded["cuda_peak_bytes"] or recorded["rss_peak_bytes"]
    return {"first_step_s": steps[0], "steps": steps, "wall_s": wall, "peak_bytes": peak}


def steady_step(steps: list[float], warmup: int) -> float:
    """Seconds per step from the end of step ``warmup`` to the end of the last step (steps count from 1)."""
    return (steps[-1] - steps[warmup - 1]) / (len(steps) - warmup)


def measure_sdft(setup: Setup, folder: Path, evaluated: bool = False) -> dict:
    """``sdft fit`` in a new process: times, peak memory, checkpoint size and (``evaluated``) evaluation time."""
    configs = sdft_configs(setup, folder, evaluated)
    program = ["-m", "sdft.cli", "fit", *(f"--config={config}" for config in configs)]
    result = run_recorded(program, folder, setup.pycache)
    result["step_s"] = steady_step(result.pop("steps"), setup.warmup)
    checkpoints = sorted((folder / "runs").rglob("*.ckpt"))
    result["checkpoint_bytes"] = checkpoints[-1].stat().st_size if checkpoints else None
    if evaluated:
        rows = (folder / "runs").rglob("evaluation/metrics.jsonl")
        lines = [line for path in rows for line in path.read_text().splitlines()]
        result["evaluation_s"] = sum(json.loads(line)["seconds"] for line in lines)
    return result


def reference_arguments(setup: Setup, settings: TrainingSettings, output: Path) -> list[str]:
    """diffusers' script arguments for the same model, photos and settings, checkpointing and validation off."""
    arguments = {
        "pretrained_model_name_or_path": setup.model,
        "instance_data_dir": setup.photos,
        "instance_prompt": settings.prompt,
        "output_dir": output,
        "resolution": setup.size.resolution,
        "train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.accumulation,
        "dataloader_num_workers": settings.num_workers,
        "rank": settings.rank,
        "learning_rate": settings.learning_rate,
        "max_train_steps": setup.steps,
        "checkpointing_steps": setup.steps + 1,
        "mixed_precision": "bf16" if setup.device == "cuda" else "no",
        "seed": 0,
        **settings.prompt_options,
    }
    flags = [item for key, value in arguments.items() for item in (f"--{key}", str(value))]
    return flags + (["--gradient_checkpointing"] if settings.gradient_checkpointing else [])


def measure_reference(setup: Setup, script: Path, settings: TrainingSettings, folder: Path) -> dict:
    fresh_folder(folder)
    arguments = reference_arguments(setup, settings, folder / "output")
    result = run_recorded([str(script), *arguments], folder, setup.pycache)
    result["step_s"] = steady_step(result.pop("steps"), setup.warmup)
    return result


def measure_bare_loop(setup: Setup, folder: Path) -> dict:
    """scripts/bare_loop.py on the inputs sdft makes of its first batch, in a new process: times and peak memory."""
    configs = [str(config) for config in sdft_configs(setup, folder)]
    program = [str(BARE_LOOP), "--device", setup.device, "--steps", str(setup.steps), *configs]
    result = run_recorded(program, folder, setup.pycache)
    result["step_s"] = steady_step(result.pop("steps"), setup.warmup)
    return result
