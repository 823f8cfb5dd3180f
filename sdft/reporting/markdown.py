"""The report's markdown: the header, the selection, the metrics table, and the sections embedding images."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdft.reporting.plots import new_axes, plot_filename, plot_metric, plot_title, rule_limit, save_figure, tie_band
from sdft.reporting.records import Evaluation, Points, RecordedSelection, _is_number, better, metric_names

ARROWS = {"higher": "↑", "lower": "↓"}


# -- formatting -------------------------------------------------------------------------------------------------


def format_value(value: Any, error: Any = None) -> str:
    """A metric value with 3 decimals (and its standard error, ``0.412 ± 0.031``), or an em dash when missing.

    Args:
        value: a number or None.
        error: its standard error, or None.
    """
    if not _is_number(value):
        return "—"
    return f"{value:.3f} ± {error:.3f}" if _is_number(error) else f"{value:.3f}"


def metric_label(metric: str) -> str:
    """The metric with its better direction, e.g. ``val/dino ↑``.

    Args:
        metric: a metric key or TensorBoard tag.
    """
    direction = better(metric)
    return f"{metric} {ARROWS[direction]}" if direction else metric


def _escape_cell(text: str) -> str:
    """Make text safe inside a markdown table cell.

    Args:
        text: the cell text.
    """
    return text.replace("|", "\\|").replace("\n", " ")


def _link_target(path: str | Path) -> str:
    """A relative path as a markdown link target, angle-bracketed when it holds spaces or parentheses.

    Args:
        path: the relative path.
    """
    posix = Path(path).as_posix()
    return f"<{posix}>" if any(char in posix for char in " ()") else posix


def _relative_link(path: Path, output_dir: Path) -> str:
    """The link target of a file in the run folder, relative to the report.

    Args:
        path: the file.
        output_dir: the report folder.
    """
    return _link_target(os.path.relpath(path, output_dir))


def _step_marks(step: int, base_step: int, selection: RecordedSelection | None) -> list[str]:
    """Labels of a step: base model, chosen, rejected and why.

    Args:
        step: the step.
        base_step: the base model's step (the lowest).
        selection: the recorded selection, or None.
    """
    marks = ["base model"] if step == base_step else []
    if selection is not None and step == selection.step:
        marks.append("★ chosen")
    if selection is not None and step in selection.rejected:
        marks.append(f"rejected: {selection.rejected[step]}")
    return marks


# -- markdown sections ------------------------------------------------------------------------------------------


def fidelity_warning(evaluation: Evaluation) -> list[str]:
    """A warning line when the chosen step scores below the base model on the rule's fidelity metric.

    Args:
        evaluation: the loaded evaluation files.
    """
    selection = evaluation.selection
    if selection is None:
        return []
    fidelity = (selection.rule or {}).get("fidelity", "val/dino")
    base = evaluation.rows[0]
    chosen = next((row for row in evaluation.rows if row["step"] == selection.step), {})
    if not (_is_number(chosen.get(fidelity)) and _is_number(base.get(fidelity))) or chosen[fidelity] >= base[fidelity]:
        return []
    return [
        f"**Warning:** the chosen step {selection.step} has {fidelity} {chosen[fidelity]:.3f}, below the base "
        f"model's {base[fidelity]:.3f} (step {base['step']}): training has not improved subject fidelity.",
        "",
    ]


def metrics_table(evaluation: Evaluation, metrics: Sequence[str]) -> list[str]:
    """Markdown lines of the steps x metrics table, chosen row in bold, with the real-real ceiling row when known.

    Args:
        evaluation: the loaded evaluation files.
        metrics: the metric columns, in order.
    """
    base_step = evaluation.rows[0]["step"]
    chosen = evaluation.selection.step if evaluation.selection else None
    header = " | ".join(metric_label(metric) for metric in metrics)
    lines = [f"| step | {header} | note |", "|---:|" + "---:|" * len(metrics) + ":---|"]
    for row in evaluation.rows:
        errors = row.get("se") or {}
        cells = [str(row["step"])] + [format_value(row.get(metric), errors.get(metric)) for metric in metrics]
        if row["step"] == chosen:
            cells = [f"**{cell}**" for cell in cells]
        marks = _step_marks(row["step"], base_step, evaluation.selection)
        lines.append("| " + " | ".join(cells) + f" | {_escape_cell('; '.join(marks))} |")
    legend = "↑ higher is better, ↓ lower is better."
    if any(row.get("se") for row in evaluation.rows):
        legend += " ± is the standard error of the mean over the probe images (over the prompts for val/div)."
    return [*lines, *ceiling_row(evaluation, metrics), "", legend]


def ceiling_row(evaluation: Evaluation, metrics: Sequence[str]) -> list[str]:
    """The table line of the real-real ceilings, if ``reference.json`` has any of ``metrics``; a single photo has
    no distinct pair, so its ceilings are unavailable.

    Args:
        evaluation: the loaded evaluation files.
        metrics: the metric columns, in order.
    """
    if not any(metric in evaluation.ceilings for metric in metrics):
        return []
    count = evaluation.num_reference_images
    photos = f" ({count} image{'' if count == 1 else 's'})" if count else ""
    known = any(evaluation.ceilings.get(metric) is not None for metric in metrics)
    note = "mean similarity between distinct reference photos" if known else "unavailable: needs 2+ photos"
    cells = [format_value(evaluation.ceilings.get(metric)) for metric in metrics]
    return ["| real-real ceiling | " + " | ".join(cells) + f" | {note}{photos} |"]


def selection_section(selection: RecordedSelection | None, run_dir: Path) -> list[str]:
    """Markdown lines naming the chosen step, its reason, the rule, the candidates, the export and the rejected
    steps; the export and the checkpoint are named only if they exist.

    Args:
        selection: the recorded selection, or None.
        run_dir: the run folder, where the export is looked for.
    """
    lines = ["## Selected checkpoint", ""]
    if selection is None:
        return lines + ["No selection was recorded (`evaluation/selection.json` is missing).", ""]
    lines += [f"**Chosen step: {selection.step}** ★", "", f"Reason: {selection.reason}", ""]
    if selection.rule:
        rule = ", ".join(f"{key} = `{value}`" for key, value in selection.rule.items())
        lines += [f"Rule: {rule}", ""]
    if selection.candidates:
        lines += ["Candidates (met the constraints): " + ", ".join(map(str, selection.candidates)), ""]
    if selection.export and (run_dir / selection.export).is_dir():
        lines += [f"Exported checkpoint: `{selection.export}`", ""]
    else:
        lines += ["No export of the chosen step (`best/` does not exist in the run folder).", ""]
    if selection.checkpoint and Path(selection.checkpoint).is_file():
        lines += [f"Checkpoint of the chosen step: `{selection.checkpoint}`", ""]
    if selection.rejected:
        lines += ["Rejected steps:", ""] + [f"- step {step}: {why}" for step, why in sorted(selection.rejected.items())]
        lines.append("")
    return lines


def plot_caption(evaluation: Evaluation, metric: str) -> list[str]:
    """The lines under a metric's plot that spell out the rule's limit and tie band drawn on it.

    Args:
        evaluation: the loaded evaluation files.
        metric: the metric key.
    """
    lines = []
    limit, band = rule_limit(evaluation, metric), tie_band(evaluation, metric)
    if limit is not None:
        lines.append(f"Dash-dotted line: the {limit[0]}; steps beyond it are rejected.")
    if band is not None:
        low, best, tolerance = band
        lines.append(f"Shaded: the tie band {low:.3f}-{best:.3f} (within {tolerance} of the best competing step).")
    return [" ".join(lines), ""] if lines else []


def plots_section(evaluation: Evaluation, metrics: Sequence[str], output_dir: Path) -> list[str]:
    """Write one plot per metric into ``output_dir``; return the markdown lines embedding them.

    Args:
        evaluation: the loaded evaluation files.
        metrics: the metrics to plot.
        output_dir: the report folder.
    """
    lines = ["## Metrics vs step", ""]
    for metric in metrics:
        filename = plot_filename(metric)
        plot_metric(evaluation, metric, output_dir / filename)
        lines += [f"### {metric_label(metric)}", "", f"![{metric} vs step]({_link_target(filename)})", ""]
        lines += plot_caption(evaluation, metric)
    return lines


def curves_section(curves: Mapping[str, Points], output_dir: Path) -> list[str]:
    """Write one plot per TensorBoard scalar into ``output_dir``; return the markdown lines embedding them.

    Args:
        curves: tag -> (step, value) points.
        output_dir: the report folder.
    """
    if not curves:
        return []
    lines = ["## Training curves", "", "From the run's TensorBoard event files.", ""]
    for tag, points in curves.items():
        filename = "curve_" + plot_filename(tag)
        figure, axes = new_axes(plot_title(tag), tag)
        axes.plot(
            [step for step, _ in points],
            [value for _, value in points],
            marker="." if len(points) < 50 else "",
            label=tag,
        )
        save_figure(figure, axes, output_dir / filename)
        lines += [f"### {metric_label(tag)}", "", f"![{tag} vs step]({_link_target(filename)})", ""]
    return lines


def grids_section(evaluation: Evaluation, run_dir: Path, output_dir: Path) -> list[str]:
    """Markdown lines embedding each evaluation's probe grid that exists, with the grid rows' prompts; grids that
    do not exist are listed in a note.

    Args:
        evaluation: the loaded evaluation files; ``grid`` paths are relative to the run folder.
        run_dir: the run folder.
        output_dir: the report folder.
    """
    lines = ["## Evaluation grids", ""]
    if evaluation.grid_rows:
        lines += ["Probe images of each evaluation, one row per line below (the same seeds at every step):", ""]
        lines += [f"{index}. {label}" for index, label in enumerate(evaluation.grid_rows, 1)] + [""]
    rows = [row for row in evaluation.rows if isinstance(row.get("grid"), str)]
    missing = [f"step {row['step']} ({row['grid']})" for row in rows if not (run_dir / row["grid"]).is_file()]
    for row in rows:
        if (run_dir / row["grid"]).is_file():
            marks = _step_marks(row["step"], evaluation.rows[0]["step"], evaluation.selection)
            heading = f"### Step {row['step']}" + (f" ({'; '.join(marks)})" if marks else "")
            target = _relative_link(run_dir / row["grid"], output_dir)
            lines += [heading, "", f"![probes at step {row['step']}]({target})", ""]
    if len(missing) == len(rows):
        lines += ["No evaluation grids were found.", ""]
    if missing:
        lines += ["Grid files not found, not shown: " + ", ".join(missing) + ".", ""]
    return lines


def samples_section(
    samples: list[tuple[int, list[tuple[int, int, Path]]]], prompts: list[str], output_dir: Path
) -> list[str]:
    """Markdown lines embedding the SamplePreview images, one line per prompt and step.

    Args:
        samples: (step, [(prompt index, seed, file), ...]) from :func:`read_samples`.
        prompts: SamplePreview's prompts, by index (empty when unknown).
        output_dir: the report folder.
    """
    if not samples:
        return []
    lines = ["## Samples", "", "Fixed-seed samples (`SamplePreview`): the same prompts and seeds at every step.", ""]
    for step, images in samples:
        lines += [f"### Samples at step {step}", ""]
        for index in dict.fromkeys(index for index, _, _ in images):
            prompt = f"`{prompts[index]}`" if index < len(prompts) else f"prompt {index}"
            same = [(seed, path) for other, seed, path in images if other == index]
            links = [
                f"![step {step}, prompt {index}, seed {seed}]({_relative_link(path, output_dir)})"
                for seed, path in same
            ]
            lines += [f"{prompt}, seeds {', '.join(str(seed) for seed, _ in same)}:", "", " ".join(links), ""]
    return lines


def evaluation_sections(evaluation: Evaluation, run_dir: Path, output_dir: Path) -> list[str]:
    """The selection, the below-base warning, the metrics table and the metric plots.

    Args:
        evaluation: the loaded evaluation files.
        run_dir: the run folder.
        output_dir: the report folder.
    """
    metrics = metric_names(evaluation.rows)
    lines = selection_section(evaluation.selection, run_dir) + fidelity_warning(evaluation)
    lines += ["## Metrics", "", *metrics_table(evaluation, metrics), ""]
    return lines + plots_section(evaluation, metrics, output_dir)


def report_header(run_dir: Path, output_dir: Path, evaluated: bool) -> list[str]:
    """The title, the run folder, the configuration link and, without an evaluation, a line saying so.

    Args:
        run_dir: the run folder.
        output_dir: the report folder.
        evaluated: whether the run has an evaluation table.
    """
    lines = [f"# Run report: {run_dir.name}", "", f"Run folder: `{run_dir}`", ""]
    config = run_dir / "config.yaml"
    if config.is_file():
        lines += [f"Configuration: [`{config}`]({_relative_link(config, output_dir)})", ""]
    if not evaluated:
        lines += [
            "No subject evaluation in this run (no `evaluation/metrics.jsonl`; the `sdft.callbacks.SubjectEvaluator`"
            " callback scores the checkpoints and picks one).",
            "",
        ]
    return lines
