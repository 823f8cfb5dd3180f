"""The chosen step on the run page: the choice and why, the metrics behind it (curves with standard errors, the
table), and the grids it was made from."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from sdft.reporting.artifacts import display
from sdft.reporting.folders import RunRecords, metric_value
from sdft.reporting.gallery import ImageSource, Picture, gallery_html, marks_html, overview_html
from sdft.reporting.markdown import format_value, metric_label
from sdft.reporting.plots import plot_title, rule_limit, tie_band
from sdft.reporting.records import Evaluation, RecordedSelection, better, metric_names
from sdft.reporting.svg import PALETTE, Band, Level, Series, line_chart


def step_marks(step: int, base_step: int, selection: RecordedSelection | None) -> list[tuple[str, str]]:
    """(kind, text) labels of a step: the base model, chosen, rejected and why.

    Args:
        step: the step.
        base_step: the base model's step (the first evaluated).
        selection: the recorded selection, or None.
    """
    marks = [("base", "base model")] if step == base_step else []
    if selection is not None and step == selection.step:
        marks.append(("chosen", "★ chosen"))
    if selection is not None and step in selection.rejected:
        marks.append(("rejected", f"rejected: {selection.rejected[step]}"))
    return marks


def chosen_row(evaluation: Evaluation) -> dict[str, Any] | None:
    """The metrics row of the chosen step, or None without a selection.

    Args:
        evaluation: the evaluation files.
    """
    step = evaluation.selection.step if evaluation.selection else None
    return next((row for row in evaluation.rows if row["step"] == step), None)


def value_html(value: float, error: float | None) -> str:
    """A metric's value with 3 decimals, its standard error beside it in small type.

    Args:
        value: the value.
        error: its standard error, or None.
    """
    return f"{value:.3f}" + (f" <small>± {error:.3f}</small>" if error is not None else "")


def stats_html(evaluation: Evaluation) -> str:
    """One tile per metric: its value at the chosen step with the standard error, and its change from the base.

    Args:
        evaluation: the evaluation files.
    """
    row, base = chosen_row(evaluation), evaluation.rows[0]
    tiles = []
    for metric in metric_names(evaluation.rows) if row else []:
        value, base_value = metric_value(row, metric), metric_value(base, metric)
        if value is None:
            continue
        change = ""
        if base_value is not None:
            delta = value[0] - base_value[0]
            good = (delta > 0) == (better(metric) == "higher") if better(metric) and delta else None
            kind = {True: "good", False: "bad", None: ""}[good]
            change = f'<span class="delta {kind}">{delta:+.3f}</span> from the base model\'s {base_value[0]:.3f}'
        tiles.append(
            f'<div class="stat"><div class="stat-name">{escape(metric_label(metric))}</div>'
            f'<div class="stat-value">{value_html(*value)}</div><div class="stat-change">{change}</div></div>'
        )
    return f'<div class="stats">{"".join(tiles)}</div>' if tiles else ""


def fidelity_warning_html(evaluation: Evaluation) -> str:
    """A warning when the chosen step scores below the base model on the rule's fidelity metric.

    Args:
        evaluation: the evaluation files.
    """
    row, selection = chosen_row(evaluation), evaluation.selection
    fidelity = (selection.rule or {}).get("fidelity", "val/dino") if selection else "val/dino"
    value, base = (metric_value(row, fidelity) if row else None), metric_value(evaluation.rows[0], fidelity)
    if value is None or base is None or value[0] >= base[0]:
        return ""
    return (
        f'<p class="warning">The chosen step {selection.step} has {escape(fidelity)} {value[0]:.3f}, below the base '
        f"model's {base[0]:.3f}: training has not improved subject fidelity.</p>"
    )


def choice_html(run: RunRecords, images: ImageSource) -> str:
    """The chosen step, why, its metrics against the base model, the rule, and the rejected steps with why.

    Args:
        run: the run's records (with an evaluation).
        images: how images are referenced.
    """
    evaluation = run.evaluation
    selection = evaluation.selection
    if selection is None:
        return "<p>No selection was recorded (<code>evaluation/selection.json</code> is missing).</p>"
    parts = [f'<p class="badge chosen">★ Step {selection.step}</p><p class="reason">{escape(selection.reason)}</p>']
    parts += [fidelity_warning_html(evaluation), stats_html(evaluation)]
    if selection.rule:
        rule = "".join(f"<code>{escape(f'{key} = {display(value)}')}</code> " for key, value in selection.rule.items())
        parts.append(f'<p class="rule">Rule: {rule}</p>')
    if selection.candidates:
        parts.append(f"<p>Candidates (met the constraints): {', '.join(map(str, selection.candidates))}</p>")
    if selection.rejected:
        items = "".join(
            f"<li><strong>Step {step}</strong>: {escape(why)}</li>" for step, why in sorted(selection.rejected.items())
        )
        parts.append(f'<h3>Rejected steps</h3><ul class="rejected-list">{items}</ul>')
    if selection.export and (run.run_dir / selection.export).is_dir():
        parts.append(f"<p>Exported to <code>{escape(selection.export)}/</code> (see Exports below).</p>")
    row = chosen_row(evaluation)
    grid = run.run_dir / row["grid"] if row and isinstance(row.get("grid"), str) else None
    figure = ""
    if grid is not None and grid.is_file():
        alt = escape(f"Step {selection.step}, the chosen step: the probe images")
        figure = (
            f'<figure class="chosen-grid"><img class="zoom" src="{escape(images.url(grid))}" alt="{alt}">'
            f"<figcaption>The probe images at step {selection.step}</figcaption></figure>"
        )
    return f'<div class="choice"><div>{"".join(parts)}</div>{figure}</div>'


def metric_series(
    rows: Sequence[dict[str, Any]], metric: str, label: str, colour: str, selection: RecordedSelection | None
) -> Series:
    """A metric's curve over the evaluated steps with its standard errors, the chosen and rejected steps marked.

    Args:
        rows: the metrics table.
        metric: the metric key.
        label: the curve's legend text.
        colour: its colour.
        selection: the recorded selection, or None.
    """
    points = [(row["step"], *metric_value(row, metric)) for row in rows if metric_value(row, metric) is not None]
    chosen = selection.step if selection else None
    return Series(label, points, colour, chosen, dict(selection.rejected) if selection else {})


def metric_chart(evaluation: Evaluation, metric: str) -> str:
    """A metric's chart for one run, with the base model, the ceiling, the rule's limit and its tie band.

    Args:
        evaluation: the evaluation files.
        metric: the metric key.
    """
    series = metric_series(evaluation.rows, metric, metric, PALETTE[0], evaluation.selection)
    band = tie_band(evaluation, metric)
    bands = [Band(band[0], band[1], f"tie band (within {band[2]} of the best)")] if band else []
    return line_chart(plot_title(metric), [series], reference_levels(evaluation, metric), bands)


def reference_levels(evaluation: Evaluation, metric: str) -> list[Level]:
    """The horizontal lines a metric is read against: the base model, the real-real ceiling, the rule's limit.

    Args:
        evaluation: the evaluation files.
        metric: the metric key.
    """
    levels = []
    base = metric_value(evaluation.rows[0], metric)
    if base is not None:
        levels.append(Level(base[0], f"base model ({base[0]:.3f})", "base"))
    if evaluation.ceilings.get(metric) is not None:
        ceiling = evaluation.ceilings[metric]
        levels.append(Level(ceiling, f"real-real ceiling ({ceiling:.3f})", "ceiling"))
    limit = rule_limit(evaluation, metric)
    if limit is not None:
        levels.append(Level(limit[1], limit[0], "limit"))
    return levels


def metrics_table_html(evaluation: Evaluation) -> str:
    """The steps x metrics table: the chosen row marked, rejected rows with why, the real-real ceilings.

    Args:
        evaluation: the evaluation files.
    """
    metrics = metric_names(evaluation.rows)
    head = "".join(f'<th scope="col">{escape(metric_label(metric))}</th>' for metric in metrics)
    lines = []
    for row in evaluation.rows:
        marks = step_marks(row["step"], evaluation.rows[0]["step"], evaluation.selection)
        values = "".join(
            f'<td class="num">{escape(format_value(row.get(metric), (row.get("se") or {}).get(metric)))}</td>'
            for metric in metrics
        )
        kinds = " ".join(kind for kind, _ in marks)
        step = f"{row['step']}{' ★' if 'chosen' in kinds else ''}"
        lines.append(f'<tr class="{kinds}"><th scope="row">{step}</th>{values}<td>{marks_html(marks)}</td></tr>')
    if any(metric in evaluation.ceilings for metric in metrics):
        cells = "".join(f'<td class="num">{format_value(evaluation.ceilings.get(metric))}</td>' for metric in metrics)
        lines.append(f'<tr class="ceiling"><th scope="row">real-real ceiling</th>{cells}<td></td></tr>')
    note = "↑ higher is better, ↓ lower is better."
    if any(row.get("se") for row in evaluation.rows):
        note += " ± is the standard error of the mean over the probe images (over the prompts for val/div)."
    return (
        f'<div class="table-wrap"><table class="metrics"><thead><tr><th scope="col">step</th>{head}'
        f'<th scope="col">note</th></tr></thead><tbody>{"".join(lines)}</tbody></table></div>'
        f'<p class="note">{note}</p>'
    )


def metrics_html(evaluation: Evaluation) -> str:
    """One chart per metric, then the table.

    Args:
        evaluation: the evaluation files.
    """
    charts = "".join(metric_chart(evaluation, metric) for metric in metric_names(evaluation.rows))
    return f'<div class="charts">{charts}</div>{metrics_table_html(evaluation)}'


def images_html(run: RunRecords, images: ImageSource, name: str) -> str:
    """The evaluation grids: a slider over the steps, then every step's rows side by side.

    Args:
        run: the run's records (with an evaluation).
        images: how images are referenced.
        name: the id prefix of the gallery.
    """
    evaluation = run.evaluation
    rows = [row for row in evaluation.rows if isinstance(row.get("grid"), str)]
    pictures = [
        Picture(
            str(row["step"]),
            f"Step {row['step']}",
            run.run_dir / row["grid"],
            step_marks(row["step"], evaluation.rows[0]["step"], evaluation.selection),
        )
        for row in rows
        if (run.run_dir / row["grid"]).is_file()
    ]
    missing = [f"step {row['step']} ({row['grid']})" for row in rows if not (run.run_dir / row["grid"]).is_file()]
    parts = [
        "<p>Each grid holds one row per prompt, the same seeds at every step. Slide through the steps or pick "
        "one below; click a grid to enlarge it (← and → step through it there).</p>"
    ]
    parts.append(gallery_html(name, pictures, evaluation.grid_rows, images, "step"))
    overview = overview_html(name, pictures, evaluation.grid_rows, images)
    if overview:
        parts.append(f"<h3>All steps at a glance</h3><p>One line per step, one column per prompt.</p>{overview}")
    if not pictures:
        parts.append("<p>No evaluation grids were found.</p>")
    if missing:
        parts.append(f'<p class="note">Grid files not found, not shown: {escape(", ".join(missing))}.</p>')
    return "".join(parts)
