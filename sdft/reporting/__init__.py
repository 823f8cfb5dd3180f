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
    <out>/<metric>.png                one plot per evaluated metric, ``/`` in the key replaced by ``_``
    <out>/curve_<tag>.png             one plot per TensorBoard scalar that is not an evaluated metric
"""

from __future__ import annotations

from pathlib import Path

from sdft.errors import UserError
from sdft.files import write_text_atomic
from sdft.reporting.markdown import curves_section, evaluation_sections, grids_section, report_header, samples_section
from sdft.reporting.plots import plot_title, rule_limit, tie_band
from sdft.reporting.records import (
    NOT_A_RUN,
    metric_names,
    read_curves,
    read_evaluation,
    read_metrics,
    read_samples,
    sample_prompts,
)

__all__ = ["plot_title", "read_curves", "read_evaluation", "read_metrics", "rule_limit", "tie_band", "write_report"]


def write_report(run_dir: Path, output_dir: Path | None = None) -> Path:
    """Write ``report.md`` and its plots for a run, from what its folder holds; return the report's path.

    Args:
        run_dir: the run folder (an evaluation, TensorBoard scalars or samples, at least one of them).
        output_dir: where to write the report and plots; default ``<run>/report``.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: {NOT_A_RUN}")
    output_dir = Path(output_dir).resolve() if output_dir is not None else run_dir / "report"
    evaluation = read_evaluation(run_dir) if (run_dir / "evaluation" / "metrics.jsonl").is_file() else None
    curves, samples = read_curves(run_dir), read_samples(run_dir)
    if evaluation is None and not curves and not samples:
        raise UserError(
            f"{run_dir} has nothing to report: no evaluation/metrics.jsonl, no TensorBoard scalars "
            f"(events.out.tfevents.*) and no samples/step_*/ images; {NOT_A_RUN}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = metric_names(evaluation.rows) if evaluation is not None else []
    lines = report_header(run_dir, output_dir, evaluation is not None)
    if evaluation is not None:
        lines += evaluation_sections(evaluation, run_dir, output_dir)
    lines += curves_section({tag: points for tag, points in curves.items() if tag not in metrics}, output_dir)
    if evaluation is not None:
        lines += grids_section(evaluation, run_dir, output_dir)
    lines += samples_section(samples, sample_prompts(run_dir), output_dir)
    path = output_dir / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    return path
