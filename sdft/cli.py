"""The ``sdft`` command: LightningCLI for ``fit`` / ``validate`` / ``test`` / ``predict``, and tools beside it."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from jsonargparse import auto_cli
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from sdft.callbacks import FinalExport
from sdft.evaluation.folders import evaluate_folders
from sdft.evaluation.posthoc import score_run
from sdft.methods import DiffusionFineTuner
from sdft.reporting import write_report
from sdft.runs import export_checkpoint
from sdft.tiny_models import build_tiny_sd1


class SdftCLI(LightningCLI):
    """LightningCLI with sdft's forced callback (the final export)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FinalExport, "final_export")


def export(checkpoint: Path, output: Path | None = None) -> None:
    """Export a checkpoint in its method's format (e.g. a diffusers LoRA file).

    Args:
        checkpoint: a ``.ckpt`` file in ``<run>/checkpoints/``.
        output: destination folder; default ``<run>/exports/<checkpoint name>``.
    """
    print(export_checkpoint(checkpoint, output))


def tiny_model(output: Path, seed: int = 0) -> None:
    """Write a tiny random SD-1.x-shaped model as a diffusers folder (for trying sdft offline).

    Args:
        output: the folder to write.
        seed: the weights are a function of this seed.
    """
    print(build_tiny_sd1(output, seed))


def report(run_dir: Path, output: Path | None = None) -> None:
    """Write a markdown report of a run's evaluations: metric plots, the chosen step and why, the image grids.

    Args:
        run_dir: a run folder made by ``sdft fit`` with the ``SubjectEvaluator`` callback.
        output: destination folder; default ``<run_dir>/report``.
    """
    print(write_report(run_dir, output))


TOOLS = {
    "evaluate": evaluate_folders,
    "evaluate-run": score_run,
    "export": export,
    "report": report,
    "tiny-model": tiny_model,
}


def usage() -> str:
    """The top-level help: Lightning's subcommands, then the tools."""
    lines = [
        "usage: sdft <command> [options]   (sdft <command> --help for a command's options)",
        "",
        "commands:",
    ]
    lightning = {
        "fit": "train a model",
        "validate": "score a checkpoint on the validation data",
        "test": "run the test loop",
        "predict": "run the predict loop",
    }
    lines += [f"  {name:<13}{text}" for name, text in lightning.items() if name in LightningCLI.subcommands()]
    lines += [f"  {name:<13}{tool.__doc__.splitlines()[0]}" for name, tool in TOOLS.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``sdft`` console script.

    Args:
        args: command-line arguments without the program name; ``sys.argv[1:]`` when None.
    """
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in TOOLS:
        auto_cli(TOOLS[argv[0]], args=argv[1:])
        return
    # The frozen base model stays in eval mode on purpose; only the trained modules are in train mode.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
    SdftCLI(
        DiffusionFineTuner,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        args=args,
    )


if __name__ == "__main__":
    main()
