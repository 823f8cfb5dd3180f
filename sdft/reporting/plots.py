"""The report's figures: metric plots with the base, the ceiling, the selection rule's limit and tie band."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sdft.files import write_atomic
from sdft.reporting.records import Evaluation, _is_number, better

FIGURE_SIZE = (6.0, 3.5)
FIGURE_DPI = 100
#: the selection rule's limits: metric -> (its margin in the rule, the sign of the limit from base, its name)
RULE_LIMITS = {"val/clip_t": ("clip_t_margin", -1, "floor"), "val/pres": ("pres_margin", 1, "ceiling")}


# -- the selection rule on the plots ----------------------------------------------------------------------------


def rule_limit(evaluation: Evaluation, metric: str) -> tuple[str, float] | None:
    """The selection rule's limit on ``metric`` (CLIP-T floor, PRES ceiling) from the base value, with its label.

    Args:
        evaluation: the loaded evaluation files (the rule is in ``selection.json``).
        metric: the metric key.
    """
    rule = evaluation.selection.rule if evaluation.selection else None
    base = evaluation.rows[0].get(metric)
    if not rule or metric not in RULE_LIMITS or not _is_number(base):
        return None
    key, sign, name = RULE_LIMITS[metric]
    margin = rule.get(key)
    if not _is_number(margin):
        return None
    return f"rule {name} {base + sign * margin:.3f} (base {base:.3f} {'+' if sign > 0 else '-'} {margin})", (
        base + sign * margin
    )


def tie_band(evaluation: Evaluation, metric: str) -> tuple[float, float, float] | None:
    """The values of the fidelity metric tied with the best competing step: (low, best, tolerance), or None.

    The steps that compete are the candidates (all trained steps when none met the constraints).

    Args:
        evaluation: the loaded evaluation files.
        metric: the metric key; only the rule's fidelity metric has a band.
    """
    selection = evaluation.selection
    rule = selection.rule if selection else None
    if not rule or rule.get("fidelity") != metric or not _is_number(rule.get("tie_tolerance")):
        return None
    competing = set(selection.candidates) or {row["step"] for row in evaluation.rows[1:]}
    values = [row[metric] for row in evaluation.rows if row["step"] in competing and _is_number(row.get(metric))]
    if not values:
        return None
    return max(values) - rule["tie_tolerance"], max(values), rule["tie_tolerance"]


# -- figures ----------------------------------------------------------------------------------------------------


def new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    """A report-sized figure with one set of axes, steps on x.

    Args:
        title: the plot title.
        ylabel: the y-axis label.
    """
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return figure, axes


def save_figure(figure: Figure, axes: Axes, path: Path) -> None:
    """Add the legend and write the figure as a PNG, atomically.

    Args:
        figure: the figure.
        axes: its axes.
        path: the PNG file.
    """
    axes.legend(fontsize=7, loc="best")
    write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=FIGURE_DPI))


def plot_title(metric: str) -> str:
    """E.g. ``val/pres vs step (lower is better)``.

    Args:
        metric: a metric key or TensorBoard tag.
    """
    direction = better(metric)
    return f"{metric} vs step" + (f" ({direction} is better)" if direction else "")


def plot_filename(metric: str) -> str:
    """The PNG file name of a metric's plot, e.g. ``val/dino`` -> ``val_dino.png``.

    Args:
        metric: the metric key.
    """
    return metric.replace("/", "_").replace("\\", "_") + ".png"


def plot_metric(evaluation: Evaluation, metric: str, path: Path) -> None:
    """Save a plot of ``metric`` vs step with the base value, the ceiling, the rule's limit or tie band, and the
    chosen step marked.

    Args:
        evaluation: the loaded evaluation files.
        metric: the metric key to plot.
        path: the PNG file to write.
    """
    rows = [row for row in evaluation.rows if _is_number(row.get(metric))]
    figure, axes = new_axes(plot_title(metric), metric)
    steps, values = [row["step"] for row in rows], [row[metric] for row in rows]
    errors = [(row.get("se") or {}).get(metric) for row in rows]
    if all(_is_number(error) for error in errors):
        axes.errorbar(steps, values, yerr=errors, marker="o", capsize=3, label=f"{metric} ± standard error")
    else:
        axes.plot(steps, values, marker="o", label=metric)
    base = evaluation.rows[0].get(metric)
    if _is_number(base):
        axes.axhline(base, linestyle="--", color="tab:gray", label=f"base model ({base:.3f})")
    if evaluation.ceilings.get(metric) is not None:
        ceiling = evaluation.ceilings[metric]
        axes.axhline(ceiling, linestyle=":", color="tab:green", label=f"real-real ceiling ({ceiling:.3f})")
    limit, band = rule_limit(evaluation, metric), tie_band(evaluation, metric)
    if limit is not None:
        axes.axhline(limit[1], linestyle="-.", color="tab:orange", label=limit[0])
    if band is not None:
        axes.axhspan(band[0], band[1], color="tab:purple", alpha=0.15, label=f"tie band (within {band[2]} of best)")
    if evaluation.selection is not None:
        step = evaluation.selection.step
        axes.axvline(step, color="tab:red", alpha=0.6, label=f"chosen step {step}")
    save_figure(figure, axes, path)
