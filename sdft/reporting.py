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

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdft.errors import UserError
from sdft.files import write_atomic, write_text_atomic

Row = Mapping[str, Any]
Points = list[tuple[int, float]]

CEILING_EXTRA_KEYS = frozenset({"num_reference_images"})
FIGURE_SIZE = (6.0, 3.5)
FIGURE_DPI = 100
#: which direction is better, for the metrics sdft logs; other keys ending in ``loss`` are lower-is-better too
BETTER = {"val/clip_i": "higher", "val/clip_t": "higher", "val/dino": "higher", "val/pres": "lower"}
ARROWS = {"higher": "↑", "lower": "↓"}
#: the selection rule's limits: metric -> (its margin in the rule, the sign of the limit from base, its name)
RULE_LIMITS = {"val/clip_t": ("clip_t_margin", -1, "floor"), "val/pres": ("pres_margin", 1, "ceiling")}
SKIPPED_SCALARS = frozenset({"epoch"})  # Lightning's epoch counter: not a curve anyone reads
SAMPLE_FILE = re.compile(r"(\d+)_(\d+)\.png")
NOT_A_RUN = "pass a run folder made by `sdft fit` (runs/<name>/version_N)"


@dataclass(frozen=True)
class RecordedSelection:
    """The contents of ``selection.json``: the chosen step, why, and the steps that were rejected and why."""

    step: int
    reason: str
    candidates: tuple[int, ...] = ()
    rejected: Mapping[int, str] = field(default_factory=dict)
    rule: Mapping[str, Any] | None = None
    export: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """A run's evaluation files, loaded: the metrics table, the ceilings, the selection, the grid rows' probes."""

    rows: list[dict[str, Any]]
    ceilings: dict[str, float | None]
    num_reference_images: int | None
    selection: RecordedSelection | None
    grid_rows: list[str] = field(default_factory=list)


# -- reading the run folder -------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/evaluation/metrics.jsonl`` sorted by step; blank lines are skipped.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "evaluation" / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
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
        raise UserError(f"{path} line {number} is not valid JSON ({error.msg}): {line[:80]!r}") from error
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        raise UserError(f"{path} line {number} must be a JSON object with an integer 'step', got {line[:80]!r}")
    return row


def read_evaluation(run_dir: Path) -> Evaluation:
    """Load the metrics table and the optional ``reference.json``, ``selection.json`` and ``probes.json``.

    Args:
        run_dir: the run folder.
    """
    folder = Path(run_dir) / "evaluation"
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{folder / 'metrics.jsonl'} has no evaluations: nothing to report")
    reference = _read_optional_json(folder / "reference.json") or {}
    ceilings = {
        key: None if value is None else float(value)
        for key, value in reference.items()
        if key not in CEILING_EXTRA_KEYS and (value is None or _is_number(value))
    }
    selection = _read_optional_json(folder / "selection.json")
    recorded = None if selection is None else _parse_selection(selection, folder / "selection.json")
    grid_rows = read_grid_rows(folder / "probes.json")
    return Evaluation(rows, ceilings, reference.get("num_reference_images"), recorded, grid_rows)


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
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
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
            checkpoint=data.get("checkpoint"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{path} is malformed ({error!r}): expected integer 'step' and step-keyed 'rejected'"
        ) from error


def read_grid_rows(path: Path) -> list[str]:
    """Labels of the evaluation grids' rows, top to bottom, from ``probes.json``; empty when it is missing.

    Args:
        path: the ``probes.json`` file.
    """
    data = _read_optional_json(path)
    if data is None:
        return []
    try:
        columns, probes = int(data["columns"]), list(data["probes"])
        return [grid_row_label(probes[start : start + columns]) for start in range(0, len(probes), max(columns, 1))]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path} is malformed ({error!r}): expected 'columns' and a list of 'probes'") from error


def grid_row_label(probes: Sequence[Mapping[str, Any]]) -> str:
    """E.g. ``a sks dog in the snow`` (seeds 0, 1): the prompts of one grid row with their seeds.

    Args:
        probes: the row's probes (``prompt``, ``seed``, ``class_prompt``), left to right.
    """
    parts = []
    for prompt in dict.fromkeys(str(probe["prompt"]) for probe in probes):
        same = [probe for probe in probes if probe["prompt"] == prompt]
        kind = "bare class prompt, " if any(probe.get("class_prompt") for probe in same) else ""
        seeds = ", ".join(str(probe["seed"]) for probe in same)
        parts.append(f"`{prompt}` ({kind}seed{'s' if len(same) > 1 else ''} {seeds})")
    return "; ".join(parts)


def read_curves(run_dir: Path) -> dict[str, Points]:
    """Every scalar of the run's TensorBoard event files (``epoch`` aside) as (step, value) points, in step order;
    a step logged twice (a resumed run) keeps its last value.

    Args:
        run_dir: the run folder (holds ``events.out.tfevents.*``).
    """
    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        return {}
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        if tag not in SKIPPED_SCALARS:
            curves[tag] = sorted({event.step: event.value for event in events.Scalars(tag)}.items())
    return curves


def read_samples(run_dir: Path) -> list[tuple[int, list[tuple[int, int, Path]]]]:
    """The SamplePreview images: (step, [(prompt index, seed, file), ...]) per ``samples/step_N/`` folder.

    Args:
        run_dir: the run folder.
    """
    found = []
    for folder in Path(run_dir).glob("samples/step_*"):
        step = folder.name.removeprefix("step_")
        matches = [(SAMPLE_FILE.fullmatch(path.name), path) for path in folder.iterdir()] if folder.is_dir() else []
        images = sorted((int(match[1]), int(match[2]), path) for match, path in matches if match)
        if step.isdigit() and images:
            found.append((int(step), images))
    return sorted(found)


def sample_prompts(run_dir: Path) -> list[str]:
    """The prompts of the run's SamplePreview callback, from its ``config.yaml``; empty when unknown.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return []
    trainer = config.get("trainer") if isinstance(config, dict) else None
    callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
    for callback in callbacks if isinstance(callbacks, list) else []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("SamplePreview"):
            prompts = (callback.get("init_args") or {}).get("prompts")
            return [str(prompt) for prompt in prompts] if isinstance(prompts, list) else []
    return []


# -- formatting -------------------------------------------------------------------------------------------------


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


def better(metric: str) -> str | None:
    """``higher`` or ``lower``: which values of ``metric`` are better; None when unknown.

    Args:
        metric: a metric key or TensorBoard tag.
    """
    return BETTER.get(metric) or ("lower" if metric.endswith("loss") else None)


def metric_label(metric: str) -> str:
    """The metric with its better direction, e.g. ``val/dino ↑``.

    Args:
        metric: a metric key or TensorBoard tag.
    """
    direction = better(metric)
    return f"{metric} {ARROWS[direction]}" if direction else metric


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


# -- the selection rule on the plots ------------------------------------------------------------------------------


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


# -- markdown sections --------------------------------------------------------------------------------------------


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
        cells = [str(row["step"])] + [format_value(row.get(metric)) for metric in metrics]
        if row["step"] == chosen:
            cells = [f"**{cell}**" for cell in cells]
        marks = _step_marks(row["step"], base_step, evaluation.selection)
        lines.append("| " + " | ".join(cells) + f" | {_escape_cell('; '.join(marks))} |")
    return [*lines, *ceiling_row(evaluation, metrics), "", "↑ higher is better, ↓ lower is better."]


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


def plot_metric(evaluation: Evaluation, metric: str, path: Path) -> None:
    """Save a plot of ``metric`` vs step with the base value, the ceiling, the rule's limit or tie band, and the
    chosen step marked.

    Args:
        evaluation: the loaded evaluation files.
        metric: the metric key to plot.
        path: the PNG file to write.
    """
    points = [(row["step"], row[metric]) for row in evaluation.rows if _is_number(row.get(metric))]
    figure, axes = new_axes(plot_title(metric), metric)
    axes.plot([step for step, _ in points], [value for _, value in points], marker="o", label=metric)
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
