"""The LoRA strength section of the run page: the chosen step's metrics at each scale (table and curves), the
recommended scale and why, and the grids by scale where their files exist."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from sdft.reporting.choice import reference_levels
from sdft.reporting.folders import RunRecords, Strength, metric_value
from sdft.reporting.gallery import ImageSource, Picture, gallery_html, marks_html
from sdft.reporting.markdown import format_value, metric_label
from sdft.reporting.records import Evaluation, better, metric_names
from sdft.reporting.svg import PALETTE, Series, line_chart


def scale_marks(scale: float, strength: Strength) -> list[tuple[str, str]]:
    """(kind, text) labels of a scale: recommended, rejected and why.

    Args:
        scale: the LoRA scale.
        strength: the strength measurement.
    """
    marks = [("chosen", "★ recommended")] if scale == strength.scale else []
    if scale in strength.rejected:
        marks.append(("rejected", f"rejected: {strength.rejected[scale]}"))
    return marks


def strength_table_html(strength: Strength, metrics: Sequence[str]) -> str:
    """The scales x metrics table, the recommended row marked, rejected rows with why.

    Args:
        strength: the strength measurement.
        metrics: the metric columns.
    """
    head = "".join(f'<th scope="col">{escape(metric_label(metric))}</th>' for metric in metrics)
    lines = []
    for row in strength.rows:
        scale = float(row["scale"])
        marks = scale_marks(scale, strength)
        cells = "".join(
            f'<td class="num">{escape(format_value(*(metric_value(row, metric) or (None, None))))}</td>'
            for metric in metrics
        )
        star = " ★" if scale == strength.scale else ""
        kinds = " ".join(kind for kind, _ in marks)
        lines.append(
            f'<tr class="{kinds}"><th scope="row">{scale:g}{star}</th>{cells}<td>{marks_html(marks)}</td></tr>'
        )
    return (
        f'<div class="table-wrap"><table class="metrics"><thead><tr><th scope="col">scale</th>{head}'
        f'<th scope="col">note</th></tr></thead><tbody>{"".join(lines)}</tbody></table></div>'
    )


def strength_charts_html(strength: Strength, metrics: Sequence[str], evaluation: Evaluation | None) -> str:
    """One chart per metric against the scale, the recommended scale starred, rejected scales crossed, with the
    base model, the ceiling and the rule's limit the scales are held to.

    Args:
        strength: the strength measurement.
        metrics: the metrics to draw.
        evaluation: the evaluation files (its base model and rule), or None.
    """
    charts = []
    for metric in metrics:
        points = [
            (float(row["scale"]), *metric_value(row, metric)) for row in strength.rows if metric_value(row, metric)
        ]
        series = Series(metric, points, PALETTE[0], strength.scale, dict(strength.rejected))
        direction = better(metric)
        title = f"{metric} vs LoRA scale" + (f" ({direction} is better)" if direction else "")
        levels = reference_levels(evaluation, metric) if evaluation else []
        charts.append(line_chart(title, [series], levels, x_label="LoRA scale", chosen="recommended"))
    return f'<div class="charts">{"".join(charts)}</div>'


def strength_html(run: RunRecords, images: ImageSource, prefix: str) -> str:
    """The strength section: the recommendation and why, the table, the curves and the grids by scale.

    Args:
        run: the run's records (with a strength measurement).
        images: how images are referenced.
        prefix: prepended to the element ids.
    """
    strength, grid_rows = run.strength, run.evaluation.grid_rows if run.evaluation else []
    metrics = metric_names(strength.rows)
    if strength.scale is None:
        parts = ['<p class="badge">No scale recommended</p>']
    else:
        parts = [f'<p class="badge chosen">★ Recommended LoRA scale {strength.scale:g}</p>']
    if strength.reason:
        parts.append(f'<p class="reason">{escape(strength.reason)}</p>')
    parts.append("<p>The chosen step scored again with its LoRA applied at each scale, on the same probes.</p>")
    parts += [strength_table_html(strength, metrics), strength_charts_html(strength, metrics, run.evaluation)]
    pictures = [
        Picture(
            f"{float(row['scale']):g}",
            f"Scale {float(row['scale']):g}",
            run.run_dir / row["grid"],
            scale_marks(float(row["scale"]), strength),
        )
        for row in strength.rows
        if isinstance(row.get("grid"), str) and (run.run_dir / row["grid"]).is_file()
    ]
    if pictures:
        parts.append("<h3>Grids by scale</h3>" + gallery_html(f"{prefix}scale", pictures, grid_rows, images, "scale"))
    return "".join(parts)
