"""A markdown report of a run's evaluations, built only from the files the evaluator callback wrote.

Inputs (``<run>`` is a run folder)::

    <run>/evaluation/metrics.jsonl    one JSON object per evaluated step: {"step": 0, "val/dino": 0.35, "grid": ...}
    <run>/evaluation/reference.json   real-real ceilings of some metrics (optional)
    <run>/evaluation/selection.json   the chosen step, why, and why other steps were rejected (optional)
    <run>/config.yaml                 the resolved configuration (optional, only linked)

Output (``<out>`` defaults to ``<run>/report``)::

    <out>/report.md                   title, selection, metrics table, plots, sample grids
    <out>/<metric>.png                one plot per metric, ``/`` in the key replaced by ``_``
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sdft.files import write_atomic, write_text_atomic

Row = Mapping[str, Any]

CEILING_EXTRA_KEYS = frozenset({"num_reference_images"})
FIGURE_SIZE = (6.0, 3.5)
FIGURE_DPI = 100


@dataclass(frozen=True)
class RecordedSelection:
    """The contents of ``selection.json``: the chosen step, why, and the steps that were rejected and why."""

    step: int
    reason: str
    candidates: tuple[int, ...] = ()
    rejected: Mapping[int, str] = field(default_factory=dict)
    rule: Mapping[str, Any] | None = None
    export: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """A run's evaluation files, loaded: the metrics table, the real-real ceilings and the recorded selection."""

    rows: list[dict[str, Any]]
    ceilings: dict[str, float | None]
    num_reference_images: int | None
    selection: RecordedSelection | None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/evaluation/metrics.jsonl`` sorted by step; blank lines are skipped.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "evaluation" / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `sdft fit` with the `sdft.callbacks.SubjectEvaluator` callback to evaluate"
            " checkpoints"
        )
    rows = [_parse_row(line, path, number) for number, line in enumerate(path.read_text().splitlines(), 1)]
    return sorted((row for row in rows if row is not None), key=lambda row: row["step"])


def _parse_row(line: str, path: Path, number: int) -> dict[str, Any] | None:
    """One metrics line as a dict with an integer ``step``; None for a blank line.

    Args:
        line: the text of the line.
        path: the file, for error messages.
        number: the 1-based line number, for error messages.
    """
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {number} is not valid JSON ({error.msg}): {line[:80]!r}") from error
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        raise ValueError(f"{path} line {number} must be a JSON object with an integer 'step', got {line[:80]!r}")
    return row


def read_evaluation(run_dir: Path) -> Evaluation:
    """Load the metrics table and the optional ``reference.json`` and ``selection.json`` of a run.

    Args:
        run_dir: the run folder.
    """
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{Path(run_dir) / 'evaluation' / 'metrics.jsonl'} has no evaluations: nothing to report")
    reference = _read_optional_json(Path(run_dir) / "evaluation" / "reference.json") or {}
    ceilings = {
        key: None if value is None else float(value)
        for key, value in reference.items()
        if key not in CEILING_EXTRA_KEYS and (value is None or _is_number(value))
    }
    selection_path = Path(run_dir) / "evaluation" / "selection.json"
    selection = _read_optional_json(selection_path)
    recorded = None if selection is None else _parse_selection(selection, selection_path)
    return Evaluation(rows, ceilings, reference.get("num_reference_images"), recorded)


def _read_optional_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None if the file does not exist.

    Args:
        path: the JSON file.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _parse_selection(data: Mapping[str, Any], path: Path) -> RecordedSelection:
    """A ``selection.json`` object as a :class:`RecordedSelection`; JSON's string step keys become integers.

    Args:
        data: the parsed JSON object.
        path: the file, for error messages.
    """
    try:
        return RecordedSelection(
            step=int(data["step"]),
            reason=str(data.get("reason", "")),
            candidates=tuple(int(step) for step in data.get("candidates", ())),
            rejected={int(step): str(why) for step, why in data.get("rejected", {}).items()},
            rule=data.get("rule"),
            export=data.get("export"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} is malformed ({error!r}): expected integer 'step' and step-keyed 'rejected'"
        ) from error


def metric_names(rows: Sequence[Row]) -> list[str]:
    """The metric keys (``val/...``) of the table, in order of first appearance; timings are not plotted.

    Args:
        rows: the metrics table.
    """
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("val/") and _is_number(value):
                names.setdefault(key)
    return list(names)


def _is_number(value: Any) -> bool:
    """True for ints and floats, False for booleans and everything else.

    Args:
        value: a JSON value.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """A metric value with 3 decimals, or an em dash when it is missing.

    Args:
        value: a number or None.
    """
    return f"{value:.3f}" if _is_number(value) else "—"


def plot_filename(metric: str) -> str:
    """The PNG file name of a metric's plot, e.g. ``val/dino`` -> ``val_dino.png``.

    Args:
        metric: the metric key.
    """
    return metric.replace("/", "_").replace("\\", "_") + ".png"


def _escape_cell(text: str) -> str:
    """Make text safe inside a markdown table cell.

    Args:
        text: the cell text.
    """
    return text.replace("|", "\\|").replace("\n", " ")


def _link_target(path: str) -> str:
    """A relative path as a markdown link target, angle-bracketed when it holds spaces or parentheses.

    Args:
        path: the relative path.
    """
    posix = Path(path).as_posix()
    return f"<{posix}>" if any(char in posix for char in " ()") else posix


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


def metrics_table(evaluation: Evaluation, metrics: Sequence[str]) -> list[str]:
    """Markdown lines of the steps x metrics table, chosen row in bold, with the real-real ceiling row when known.

    Args:
        evaluation: the loaded evaluation files.
        metrics: the metric columns, in order.
    """
    base_step = evaluation.rows[0]["step"]
    chosen = evaluation.selection.step if evaluation.selection else None
    lines = ["| step | " + " | ".join(metrics) + " | note |", "|---:|" + "---:|" * len(metrics) + ":---|"]
    for row in evaluation.rows:
        cells = [str(row["step"])] + [format_value(row.get(metric)) for metric in metrics]
        if row["step"] == chosen:
            cells = [f"**{cell}**" for cell in cells]
        marks = _step_marks(row["step"], base_step, evaluation.selection)
        lines.append("| " + " | ".join(cells) + f" | {_escape_cell('; '.join(marks))} |")
    return lines + ceiling_row(evaluation, metrics)


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


def selection_section(selection: RecordedSelection | None) -> list[str]:
    """Markdown lines naming the chosen step, its reason, the rule, the candidates and the rejected steps.

    Args:
        selection: the recorded selection, or None.
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
    if selection.export:
        lines += [f"Exported checkpoint: `{selection.export}`", ""]
    if selection.rejected:
        lines += ["Rejected steps:", ""] + [f"- step {step}: {why}" for step, why in sorted(selection.rejected.items())]
        lines.append("")
    return lines


def plot_metric(evaluation: Evaluation, metric: str, path: Path) -> None:
    """Save a plot of ``metric`` vs step with the base value, the ceiling and the chosen step marked.

    Args:
        evaluation: the loaded evaluation files.
        metric: the metric key to plot.
        path: the PNG file to write.
    """
    points = [(row["step"], row[metric]) for row in evaluation.rows if _is_number(row.get(metric))]
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([step for step, _ in points], [value for _, value in points], marker="o", label=metric)
    base = evaluation.rows[0].get(metric)
    if _is_number(base):
        axes.axhline(base, linestyle="--", color="tab:gray", label=f"base model ({base:.3f})")
    if evaluation.ceilings.get(metric) is not None:
        ceiling = evaluation.ceilings[metric]
        axes.axhline(ceiling, linestyle=":", color="tab:green", label=f"real-real ceiling ({ceiling:.3f})")
    if evaluation.selection is not None:
        axes.axvline(
            evaluation.selection.step, color="tab:red", alpha=0.6, label=f"chosen step {evaluation.selection.step}"
        )
    axes.set(xlabel="step", ylabel=metric, title=f"{metric} vs step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=FIGURE_DPI))


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
        lines += [f"### {metric}", "", f"![{metric} vs step]({_link_target(filename)})", ""]
    return lines


def grids_section(
    rows: Sequence[Row], run_dir: Path, output_dir: Path, selection: RecordedSelection | None
) -> list[str]:
    """Markdown lines embedding each step's sample grid that exists, linked relative to the report.

    Args:
        rows: the metrics table; ``grid`` paths are relative to the run folder.
        run_dir: the run folder.
        output_dir: the report folder.
        selection: the recorded selection (its steps are marked in the headings), or None.
    """
    lines = ["## Sample grids", ""]
    for row in rows:
        grid = row.get("grid")
        if not isinstance(grid, str) or not (run_dir / grid).is_file():
            continue
        marks = _step_marks(row["step"], rows[0]["step"], selection)
        heading = f"### Step {row['step']}" + (f" ({'; '.join(marks)})" if marks else "")
        target = _link_target(os.path.relpath(run_dir / grid, output_dir))
        lines += [heading, "", f"![samples at step {row['step']}]({target})", ""]
    if len(lines) == 2:
        lines += ["No sample grids were found.", ""]
    return lines


def write_report(run_dir: Path, output_dir: Path | None = None) -> Path:
    """Write ``report.md`` and one plot per metric for a run's evaluations; return the report's path.

    Args:
        run_dir: the run folder (holds ``evaluation/metrics.jsonl``).
        output_dir: where to write the report and plots; default ``<run>/report``.
    """
    run_dir = Path(run_dir).resolve()
    output_dir = Path(output_dir).resolve() if output_dir is not None else run_dir / "report"
    evaluation = read_evaluation(run_dir)
    metrics = metric_names(evaluation.rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: {run_dir.name}", "", f"Run folder: `{run_dir}`", ""]
    config = run_dir / "config.yaml"
    if config.is_file():
        lines += [f"Configuration: [`{config}`]({_link_target(os.path.relpath(config, output_dir))})", ""]
    lines += selection_section(evaluation.selection)
    lines += ["## Metrics", "", *metrics_table(evaluation, metrics), ""]
    lines += plots_section(evaluation, metrics, output_dir)
    lines += grids_section(evaluation.rows, run_dir, output_dir, evaluation.selection)
    path = output_dir / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    return path
