"""A run folder and what can be rebuilt from it: the model of its ``config.yaml`` and exports of its checkpoints.

Layout (``<run>`` is the logger's version folder, e.g. ``runs/quickstart/version_0``)::

    <run>/config.yaml          resolved configuration (LightningCLI)
    <run>/events.out.tfevents.* TensorBoard logs: train/loss, lr, samples/grid, val/*
    <run>/checkpoints/*.ckpt   trainable weights + optimizer, scheduler and loop state
    <run>/samples/step_N/      fixed-seed sample images
    <run>/final/               the export of the last step
    <run>/ema/                 the export of the moving average (``ExponentialMovingAverage``)
    <run>/exports/<ckpt>/      exports of chosen checkpoints (``sdft export``)

Every export folder (``final/``, ``best/``, ``ema/``, ``exports/<ckpt>/``) holds a model card, ``README.md``, and
the samples of its step as ``samples.png`` where the run has them (see :mod:`sdft.interop.model_card`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from sdft.checkpointing import check_checkpoint_file, read_checkpoint
from sdft.errors import UserError
from sdft.interop.formats import check_formats
from sdft.methods.base import DiffusionFineTuner
from sdft.methods.lora import LoRAFineTuner
from sdft.methods.run_notes import RunNotes


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder that holds ``checkpoint`` (its ``checkpoints/`` parent's parent)."""
    return checkpoint.resolve().parent.parent


def instantiate(section: dict[str, Any], base: type) -> Any:
    """Instantiate one ``class_path`` / ``init_args`` section of a config as a subclass of ``base``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "section")
    return parser.instantiate_classes(parser.parse_object({"section": section})).section


def read_config(config_path: Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` of a run, as plain data."""
    if not config_path.is_file():
        raise UserError(f"{config_path} not found: pass a run folder (or a checkpoint in one) made by `sdft fit`")
    return yaml.safe_load(config_path.read_text())


def model_from_config(config_path: Path) -> DiffusionFineTuner:
    """Instantiate (but not load) the ``model`` section of a run's ``config.yaml``.

    Args:
        config_path: the resolved config LightningCLI wrote into the run folder.
    """
    return instantiate(read_config(config_path)["model"], DiffusionFineTuner)


def checkpoints_by_step(folder: Path) -> list[tuple[int, Path]]:
    """The ``.ckpt`` files of a folder with the global step each holds, in step order (tensors are not read).

    Args:
        folder: a checkpoint folder, e.g. ``<run>/checkpoints``.
    """
    found = [(read_checkpoint(path, mmap=True)["global_step"], path) for path in Path(folder).glob("*.ckpt")]
    return sorted(found)


def apply_checkpoint(model: DiffusionFineTuner, checkpoint: Path) -> DiffusionFineTuner:
    """Load ``model``'s base weights if needed, then the trained tensors of ``checkpoint``; return ``model``.

    Args:
        model: a method configured like the run that wrote the checkpoint.
        checkpoint: a ``.ckpt`` written during ``sdft fit``.
    """
    state = read_checkpoint(Path(checkpoint))
    model.on_load_checkpoint(state)  # loads the base weights and configures what trains first
    model.load_state_dict(state["state_dict"], strict=False)
    return model


def load_checkpoint(checkpoint: Path) -> DiffusionFineTuner:
    """The run's model (from its ``config.yaml``) with the checkpoint's trained tensors applied.

    Args:
        checkpoint: a ``.ckpt`` written during ``sdft fit``.
    """
    return apply_checkpoint(model_from_config(run_dir_of(checkpoint) / "config.yaml"), checkpoint)


def export_checkpoint(checkpoint: Path, output: Path | None = None, formats: list[str] | None = None) -> Path:
    """Export one checkpoint in its method's consumer format; return the written file or folder (a LoRA: the file
    of its first format).

    Args:
        checkpoint: a ``.ckpt`` file in ``<run>/checkpoints/``.
        output: destination folder; default ``<run>/exports/<checkpoint name>``.
        formats: the LoRA files to write, ``diffusers`` and / or ``kohya``; None writes the run's
            ``export_formats``. Only LoRA runs (LoRA, pivotal tuning) have a choice.
    """
    checkpoint = Path(checkpoint)
    check_checkpoint_file(checkpoint, "sdft export")
    run_dir = run_dir_of(checkpoint)
    output = output or run_dir / "exports" / checkpoint.stem
    config = read_config(run_dir / "config.yaml")
    model = instantiate(config["model"], DiffusionFineTuner)
    model.run_notes = run_notes(config, run_dir)
    if isinstance(model, LoRAFineTuner):
        if formats is not None:
            check_formats(formats, "--format", model.adapter)
            model.export_formats = list(formats)
    elif formats is not None:
        raise UserError(
            f"--format chooses LoRA file formats, but {checkpoint} is of a {type(model).__name__} run, which has one "
            "export format: leave --format out"
        )
    return apply_checkpoint(model, checkpoint).export(output)


def run_notes(config: dict[str, Any], run_dir: Path) -> RunNotes:
    """What a run's ``config.yaml`` tells an export's metadata and model card: the data's resolution and instance
    prompt (where the data module has them), the run's name (the logger folder above the version folder) and the
    run folder itself (its evaluation and samples)."""
    data = (config.get("data") or {}).get("init_args") or {}
    return RunNotes(
        resolution=data.get("resolution"),
        trigger=data.get("instance_prompt"),
        title=run_dir.parent.name,
        run_dir=run_dir,
    )
