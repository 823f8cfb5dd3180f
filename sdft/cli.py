"""The ``sdft`` command: LightningCLI for ``fit`` / ``validate`` / ``test`` / ``predict``, and tools beside it.

This module imports only what parsing needs; each command imports its own machinery when it runs, so
``sdft --help`` and light tools such as ``sdft report`` start in about a second. A user's mistake
(:class:`sdft.errors.UserError`) is printed as one line and exits with status 2; ``SDFT_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from jsonargparse import auto_cli

from sdft.errors import UserError
from sdft.interop.legacy import convert
from sdft.interop.merge_commands import Merge, extract
from sdft.tools.generate import generate
from sdft.tools.prepare import prepare

#: the LightningCLI subcommands sdft offers, with their help lines
LIGHTNING_COMMANDS = {
    "fit": "train a model",
    "validate": "score a checkpoint on the validation data",
    "test": "run the test loop",
    "predict": "run the predict loop",
}
DEFAULT_CLIP = "open_clip:ViT-B-32/openai"
DEFAULT_DINO = "facebook/dino-vits16"


def export(checkpoint: Path, output: Path | None = None, format: list[str] | None = None) -> None:
    """Export a checkpoint in its method's format (e.g. a LoRA for diffusers and for ComfyUI, A1111 and kohya).

    Args:
        checkpoint: a .ckpt file in <run>/checkpoints/.
        output: destination folder; default <run>/exports/<checkpoint name>.
        format: LoRA files to write, diffusers and/or kohya (each adapter kind in the formats that read it: LoKr and
            LoHa kohya, DoRA diffusers); default the run's model.init_args.export_formats.
    """
    from sdft.runs import export_checkpoint

    print(export_checkpoint(checkpoint, output, formats=format))


def tiny_model(output: Path, seed: int = 0) -> None:
    """Write a tiny random SD-1.x-shaped model as a diffusers folder (for trying sdft offline).

    Args:
        output: the folder to write.
        seed: the weights are a function of this seed.
    """
    from sdft.tiny_models import build_tiny_sd1

    print(build_tiny_sd1(output, seed))


def report(runs: Path | list[Path], output: Path | None = None, embed_images: bool = False) -> None:
    """Write a run's report (report.md with plots, report.html for a browser), or compare runs on one page.

    One run writes report.md, its plots and report.html into <run>/report. Several runs, given as a list
    ('[runs/a/version_0,runs/b/version_0]'), write one report.html with their curves on shared axes and their
    chosen steps side by side, into <first run>/report/compare-<the other runs> (e.g. compare-version_1 for two
    versions of one run) unless --output is given. The page references the images of the run folders by relative
    paths: keep it where it was written, or move it with the runs.

    Args:
        runs: a run folder made by `sdft fit`, or a list of run folders to compare.
        output: destination folder; default <run>/report, or <first run>/report/compare-<the other runs>.
        embed_images: embed the images in report.html, so that the page can be sent on its own.
    """
    from sdft.reporting import write_comparison, write_report

    if isinstance(runs, list) and len(runs) > 1:
        print(write_comparison(runs, output, embed_images))
        return
    markdown = write_report(runs[0] if isinstance(runs, list) else runs, output, embed_images)
    print(markdown)
    print(markdown.with_suffix(".html"))


def evaluate(
    generated: Path,
    subjects: Path,
    identifier: str = "sks",
    clip_model: str = DEFAULT_CLIP,
    dino_model: str = DEFAULT_DINO,
    output: Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> None:
    """Score folders of generated images against subject photos (DreamBench CLIP-I, CLIP-T, DINO, PRES).

    Every generated/<subject>/ (images and a metadata.jsonl naming each image's prompt) is scored against
    subjects/<subject>/; a final mean row averages the subjects.

    Args:
        generated: folder of <subject>/ folders of generated images, each with its metadata.jsonl.
        subjects: folder of <subject>/ folders of the real photos.
        identifier: the rare token in the prompts, removed for CLIP-T.
        clip_model: CLIP spec, e.g. open_clip:ViT-B-32/openai or builtin:tiny-clip.
        dino_model: DINO spec, e.g. facebook/dino-vits16 or builtin:tiny-dino.
        output: a .jsonl file for the rows (one JSON object per line); not written when omitted.
        batch_size: images embedded at once.
        device: where the feature extractors run; cuda when available, else cpu, when omitted.
    """
    from sdft.evaluation.folders import evaluate_folders

    evaluate_folders(generated, subjects, identifier, clip_model, dino_model, output, batch_size, device)


def evaluate_run(run_dir: Path, clip_model: str | None = None, dino_model: str | None = None) -> None:
    """Re-score the base model and every checkpoint of a finished run with its evaluator's probes.

    Writes evaluation/posthoc.jsonl and evaluation/posthoc_selection.json and prints the table.

    Args:
        run_dir: a run folder made by `sdft fit` (config.yaml and checkpoints/).
        clip_model: CLIP spec overriding the run's evaluator (e.g. open_clip:ViT-L-14/openai).
        dino_model: DINO spec overriding the run's evaluator.
    """
    from sdft.evaluation.posthoc import score_run

    score_run(run_dir, clip_model, dino_model)


def compare(
    entries: list[Path],
    run: Path | None = None,
    output: Path | None = None,
    scale: float = 1.0,
    clip_model: str | None = None,
    dino_model: str | None = None,
    device: str = "cpu",
) -> None:
    """Score run folders, checkpoints, export folders or LoRA files of any tool on one run's probes, beside the base
    model: the run's chosen step against a LoRA trained elsewhere on the same subject.

    Args:
        entries: run folders (their chosen step), .ckpt files, export folders or adapter .safetensors files.
        run: the run whose probes, subject photos, base model and rule are used; default the first run in entries.
        output: destination folder; default <run>/compare.
        scale: the strength every adapter is loaded at.
        clip_model: CLIP spec overriding the run's evaluator.
        dino_model: DINO spec overriding the run's evaluator.
        device: where to sample and score (cpu, cuda).
    """
    from sdft.evaluation.compare import compare as score_entries

    print(score_entries(entries, run, output, scale, clip_model, dino_model, device))


TOOLS: dict[str, Callable[..., object] | type] = {
    "compare": compare,
    "evaluate": evaluate,
    "evaluate-run": evaluate_run,
    "export": export,
    "report": report,
    "generate": generate,
    "merge": Merge,
    "extract": extract,
    "prepare": prepare,
    "convert": convert,
    "tiny-model": tiny_model,
}


def usage() -> str:
    """The top-level help: Lightning's subcommands, then the tools."""
    lines = ["usage: sdft <command> [options]   (sdft <command> --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<13}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<13}{tool.__doc__.splitlines()[0]}" for name, tool in TOOLS.items()]
    lines.append(f"  {'plan':<13}Plan a fit's memory per device from its config, before loading any weights.")
    return "\n".join(lines)


def run(argv: list[str]) -> None:
    """Run one ``sdft`` command line (without the program name)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
    elif argv[0] == "plan":
        from sdft.tools.plan import plan_command

        plan_command(argv[1:])
    elif argv[0] in TOOLS:
        tool = TOOLS[argv[0]]
        from sdft.tools.arguments import as_parsed

        auto_cli(tool, args=as_parsed(tool, argv[1:]), prog=f"sdft {argv[0]}")
    else:
        run_lightning_command(argv)


def run_lightning_command(argv: list[str]) -> None:
    """Run a LightningCLI command. Its help, its printed config and the mistakes in its config are answered from
    the schema of its options (:mod:`sdft.config`) before torch, Lightning and diffusers are imported; the real
    parser then parses the line again."""
    if argv[0] in LIGHTNING_COMMANDS:
        from sdft.config.preflight import preflight

        answer = preflight(argv)
        if answer is not None:
            print(answer, end="")
            raise SystemExit(0)
    from sdft.lightning_cli import run_lightning

    run_lightning(argv)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``sdft`` console script.

    Args:
        args: command-line arguments without the program name; ``sys.argv[1:]`` when None.
    """
    try:
        run(sys.argv[1:] if args is None else args)
    except Exception as error:
        from sdft.downloads import download_error

        mistake = user_error_in(error) or download_error(error)
        if mistake is None or os.environ.get("SDFT_DEBUG"):
            raise
        print(f"sdft: error: {mistake}", file=sys.stderr)
        sys.exit(2)


def user_error_in(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error``, which may wrap it (as the config parser does for a class whose
    arguments are refused), or None when ``error`` is no user's mistake."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
