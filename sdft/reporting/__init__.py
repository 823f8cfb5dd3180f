"""A markdown report of a run, built only from the files in its folder: it states what exists and nothing else.

Inputs (``<run>`` is a run folder; every one is optional, but a run needs an evaluation, curves or samples)::

    <run>/evaluation/metrics.jsonl    one JSON object per evaluated step: {"step": 0, "val/dino": 0.35, "grid": ...}
    <run>/evaluation/reference.json   real-real ceilings of some metrics (null: unavailable, a single photo)
    <run>/evaluation/selection.json   the chosen step, why, the rule, and why other steps were rejected
    <run>/evaluation/probes.json      the probes of the evaluation grids, in grid order (``columns`` per row)
    <run>/events.out.tfevents.*       TensorBoard scalars: train/loss, val/loss, learning rates, ...
    <run>/samples/step_N/I_S.png      SamplePreview images: prompt index I, seed S (prompts from config.yaml)
    <run>/config.yaml                 the resolved configuration (linked; SamplePreview's prompts are read)

Output (``<out>`` defaults to ``<run>/report``)::

    <out>/report.md                   selection, metrics table, plots, training curves, grids, samples
    <out>/report.html                 the same as one page for a browser (``sdft.reporting.html``): SVG curves with
                                      standard errors, a step slider over the grids, exports, settings
    <out>/<metric>.png                one plot per evaluated metric, ``/`` in the key replaced by ``_``
    <out>/curve_<tag>.png             one plot per TensorBoard scalar that is not an evaluated metric

Several runs compared (:func:`write_comparison`) give one ``report.html`` with their curves on shared axes, in
``<first run>/report/compare-<the other runs>/`` unless told otherwise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from sdft.errors import UserError
from sdft.files import make_folder, write_text_atomic
from sdft.reporting.folders import read_run, run_labels
from sdft.reporting.html import write_page
from sdft.reporting.markdown import curves_section, evaluation_sections, grids_section, report_header, samples_section
from sdft.reporting.plots import plot_title, rule_limit, tie_band
from sdft.reporting.records import metric_names, read_curves, read_evaluation, read_metrics, sample_prompts

__all__ = [
    "comparison_folder",
    "plot_title",
    "read_curves",
    "read_evaluation",
    "read_metrics",
    "rule_limit",
    "tie_band",
    "write_comparison",
    "write_report",
]


def write_report(run_dir: Path, output_dir: Path | None = None, embed_images: bool = False) -> Path:
    """Write ``report.md`` with its plots and ``report.html`` for a run, from what its folder holds; return the
    markdown report's path.

    Args:
        run_dir: the run folder (an evaluation, TensorBoard scalars or samples, at least one of them).
        output_dir: where to write the reports and plots; default ``<run>/report``.
        embed_images: embed the images in ``report.html`` instead of referencing the run folder's files.
    """
    run = read_run(run_dir)
    run_dir, evaluation = run.run_dir, run.evaluation
    output_dir = Path(output_dir).resolve() if output_dir is not None else run_dir / "report"
    make_folder(output_dir)
    metrics = metric_names(evaluation.rows) if evaluation is not None else []
    lines = report_header(run_dir, output_dir, evaluation is not None)
    if evaluation is not None:
        lines += evaluation_sections(evaluation, run_dir, output_dir)
    lines += curves_section({tag: points for tag, points in run.curves.items() if tag not in metrics}, output_dir)
    if evaluation is not None:
        lines += grids_section(evaluation, run_dir, output_dir)
    lines += samples_section(run.samples, sample_prompts(run_dir), output_dir)
    path = output_dir / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    write_page([run], output_dir, embed_images)
    return path


def write_comparison(run_dirs: Sequence[Path], output_dir: Path | None = None, embed_images: bool = False) -> Path:
    """Write one ``report.html`` comparing several runs (curves on shared axes, chosen steps side by side); return
    its path.

    Args:
        run_dirs: the run folders, two or more.
        output_dir: where to write the page; default :func:`comparison_folder`.
        embed_images: embed the images instead of referencing the run folders' files.
    """
    resolved = [Path(run_dir).resolve() for run_dir in run_dirs]
    if len(resolved) < 2:
        raise UserError(f"a comparison needs two runs or more, got {len(resolved)}: pass one run to report it alone")
    runs = [read_run(run_dir, label) for run_dir, label in zip(resolved, run_labels(resolved), strict=True)]
    output_dir = Path(output_dir).resolve() if output_dir is not None else comparison_folder(resolved)
    make_folder(output_dir)
    return write_page(runs, output_dir, embed_images)


def comparison_folder(run_dirs: Sequence[Path]) -> Path:
    """Where a comparison goes by default: ``<first run>/report/compare-<the other runs>``, each other run named
    by its path below the folder holding them all (``compare-version_1``), ``/`` as ``_``; a name of more than 80
    characters is shortened to the number of runs and a hash.

    Args:
        run_dirs: the run folders, resolved, the first one first.
    """
    others = run_labels(list(run_dirs))[1:]
    name = "compare-" + "-".join(re.sub(r"[^A-Za-z0-9._=-]+", "_", label) for label in others)
    if len(name) > 80:
        digest = hashlib.sha1("\n".join(str(path) for path in run_dirs).encode()).hexdigest()[:8]
        name = f"compare-{len(others)}-runs-{digest}"
    return run_dirs[0] / "report" / name
