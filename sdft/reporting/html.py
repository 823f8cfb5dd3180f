"""The run page, ``report.html``: one HTML file that a browser opens from the report folder, with no network.

One run: the chosen step and why, the metric curves with each step's standard error (inline SVG), the metrics
table, the evaluation grids (a step slider and a prompts x steps overview), the LoRA strength measurement when
``selection.json`` has one, the training curves, the samples, the exports and how to load them, and the settings.
Several runs: their curves on shared axes (one colour per run), their chosen steps side by side, the settings that
differ, and each run's own sections to unfold.

Everything essential is plain HTML and SVG; the embedded script only adds the slider and the enlarged view. Images
are referenced relative to the page, so the page works wherever the run folder is opened or copied to (a report
written outside the run folder needs the run folders beside it), or embedded as data URIs on request.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from importlib.resources import files
from pathlib import Path

from sdft.files import write_text_atomic
from sdft.reporting.artifacts import exports_html, settings_diff_html, settings_html
from sdft.reporting.choice import choice_html, chosen_row, images_html, metric_series, metrics_html
from sdft.reporting.folders import RunRecords, metric_value
from sdft.reporting.gallery import ImageSource, samples_html
from sdft.reporting.markdown import format_value, metric_label
from sdft.reporting.plots import plot_title
from sdft.reporting.records import Points, better, metric_names, sample_prompts
from sdft.reporting.strength import strength_html
from sdft.reporting.svg import PALETTE, Series, line_chart

#: curves with more points than this are drawn pale with a smoothed line over them
SMOOTH_ABOVE = 30
#: the weight of TensorBoard's exponential moving average, as its slider's default
SMOOTHING = 0.8

Section = tuple[str, str, str]  # (element id, heading, contents)


def write_page(runs: Sequence[RunRecords], output_dir: Path, embed_images: bool = False) -> Path:
    """Write ``report.html`` for one run or several into ``output_dir``; return its path.

    Args:
        runs: the runs' records (one: the run page; several: their comparison).
        output_dir: the report folder.
        embed_images: embed the images as data URIs instead of referencing the run folders' files.
    """
    path = Path(output_dir) / "report.html"
    write_text_atomic(path, render_page(runs, ImageSource(Path(output_dir), embed_images)))
    return path


def render_page(runs: Sequence[RunRecords], images: ImageSource) -> str:
    """The whole page.

    Args:
        runs: the runs' records.
        images: how images are referenced.
    """
    if len(runs) == 1:
        title, where = f"Run report · {runs[0].label}", f"Run folder <code>{escape(str(runs[0].run_dir))}</code>"
        sections = run_sections(runs[0], images, "")
    else:
        title, where = f"Comparison of {len(runs)} runs", run_legend(runs)
        sections = comparison_sections(runs, images)
    return page_html(title, where, sections)


def page_html(title: str, where: str, sections: Sequence[Section]) -> str:
    """A whole page: the title, a line saying what it shows (HTML), a menu of the sections and the sections, with
    the page's style and script inlined.

    Args:
        title: the page's title (text).
        where: the line under it (HTML).
        sections: (element id, heading, contents as HTML) of each section.
    """
    nav = "".join(f'<a href="#{anchor}">{escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{anchor}"><h2>{escape(heading)}</h2>{content}</section>' for anchor, heading, content in sections
    )
    assets = files("sdft.reporting")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark"><meta name="generator" content="sdft report">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f"<style>{assets.joinpath('page.css').read_text()}</style></head><body>"
        f'<header class="top"><div class="wrap"><h1>{escape(title)}</h1><nav>{nav}</nav></div></header>'
        f'<main class="wrap"><p class="where">{where}</p>{body}</main>'
        '<dialog class="lightbox" aria-label="enlarged image"><figure><figcaption></figcaption>'
        "</figure></dialog>"
        f"<script>{assets.joinpath('page.js').read_text()}</script></body></html>\n"
    )


def run_colour(index: int) -> str:
    """The colour of the ``index``-th run.

    Args:
        index: the run's position.
    """
    return PALETTE[index % len(PALETTE)]


def run_legend(runs: Sequence[RunRecords]) -> str:
    """The runs compared, each with its colour and folder.

    Args:
        runs: the runs' records.
    """
    items = "".join(
        f'<li><span class="swatch-dot" style="--run:{run_colour(index)}"></span><strong>{escape(run.label)}</strong> '
        f"<code>{escape(str(run.run_dir))}</code></li>"
        for index, run in enumerate(runs)
    )
    return f'<ul class="runs">{items}</ul>'


# -- one run ----------------------------------------------------------------------------------------------------


def run_sections(run: RunRecords, images: ImageSource, prefix: str) -> list[Section]:
    """The sections of one run's page that have something to show.

    Args:
        run: the run's records.
        images: how images are referenced.
        prefix: prepended to the element ids (unique per run on a comparison page).
    """
    evaluation, sections = run.evaluation, []
    if evaluation is not None:
        sections.append((f"{prefix}choice", "Chosen step", choice_html(run, images)))
        sections.append((f"{prefix}metrics", "Metrics", metrics_html(evaluation)))
        sections.append((f"{prefix}images", "Evaluation images", images_html(run, images, f"{prefix}step")))
    else:
        note = "<p>No subject evaluation in this run: no <code>evaluation/metrics.jsonl</code> (the "
        note += "<code>sdft.callbacks.SubjectEvaluator</code> callback scores the checkpoints and picks one).</p>"
        sections.append((f"{prefix}choice", "Chosen step", note))
    if run.strength is not None:
        sections.append((f"{prefix}strength", "LoRA strength", strength_html(run, images, prefix)))
    sections.append((f"{prefix}training", "Training", training_html([run])))
    if run.samples:
        samples = samples_html(run.samples, sample_prompts(run.run_dir), images)
        sections.append((f"{prefix}samples", "Samples", samples))
    sections.append((f"{prefix}exports", "Exports", exports_html(run, images.page_dir) or "<p>No exports.</p>"))
    sections.append((f"{prefix}settings", "Settings", settings_html(run)))
    return [section for section in sections if section[2]]


# -- training curves --------------------------------------------------------------------------------------------


def smoothed(points: Points, weight: float = SMOOTHING) -> list[tuple[float, float, None]]:
    """The exponential moving average of a curve, debiased at its start as TensorBoard draws it.

    Args:
        points: (step, value) pairs.
        weight: the weight of the past (0: no smoothing).
    """
    average, result = 0.0, []
    for count, (step, value) in enumerate(points, 1):
        average = weight * average + (1 - weight) * value
        result.append((step, average / (1 - weight**count), None))
    return result


def curve_series(points: Points, tag: str, label: str, colour: str) -> list[Series]:
    """A TensorBoard scalar as curves: as logged, or, for a long loss curve, pale with its moving average over it.

    Args:
        points: (step, value) pairs.
        tag: the TensorBoard tag.
        label: the legend text.
        colour: the colour.
    """
    raw = [(step, value, None) for step, value in points]
    if len(points) <= SMOOTH_ABOVE or better(tag) != "lower":
        return [Series(label, raw, colour)]
    return [Series(label, raw, colour, faint=True), Series(label, smoothed(points), colour)]


def training_html(runs: Sequence[RunRecords]) -> str:
    """One chart per TensorBoard scalar that is not an evaluated metric, every run on the same axes.

    Args:
        runs: the runs' records.
    """
    evaluated = {metric for run in runs if run.evaluation for metric in metric_names(run.evaluation.rows)}
    tags = dict.fromkeys(tag for run in runs for tag in run.curves if tag not in evaluated)
    charts = []
    for tag in tags:
        series = [
            line
            for index, run in enumerate(runs)
            if tag in run.curves
            for line in curve_series(run.curves[tag], tag, run.label if len(runs) > 1 else tag, run_colour(index))
        ]
        charts.append(line_chart(plot_title(tag), series))
    if not charts:
        return ""
    note = (
        f"From the TensorBoard event files. Losses of more than {SMOOTH_ABOVE} values are drawn pale as logged, "
        f"with their moving average (weight {SMOOTHING}, as TensorBoard smooths) over them."
    )
    return f'<p class="note">{note}</p><div class="charts">{"".join(charts)}</div>'


# -- several runs -----------------------------------------------------------------------------------------------


def side_by_side_html(runs: Sequence[RunRecords], images: ImageSource) -> str:
    """Each run's chosen step, why, its metrics and its grid, in cards side by side.

    Args:
        runs: the runs' records.
        images: how images are referenced.
    """
    cards = []
    for index, run in enumerate(runs):
        evaluation = run.evaluation
        selection = evaluation.selection if evaluation else None
        parts = [f'<h3><span class="swatch-dot"></span>{escape(run.label)}</h3>']
        if selection is None:
            parts.append("<p>No selection recorded.</p>")
        else:
            parts.append(f'<p class="badge chosen">★ Step {selection.step}</p>')
            parts.append(f'<p class="reason">{escape(selection.reason)}</p>')
            row = chosen_row(evaluation) or {}
            values = "".join(
                f"<dt>{escape(metric_label(metric))}</dt><dd>{escape(format_value(*metric_value(row, metric)))}</dd>"
                for metric in metric_names(evaluation.rows)
                if metric_value(row, metric) is not None
            )
            parts.append(f'<dl class="values">{values}</dl>')
            grid = run.run_dir / row["grid"] if isinstance(row.get("grid"), str) else None
            if grid is not None and grid.is_file():
                alt = escape(f"{run.label}, step {selection.step}: the probe images")
                parts.append(f'<img class="zoom" src="{escape(images.url(grid))}" alt="{alt}">')
        cards.append(f'<article class="run-card" style="--run:{run_colour(index)}">{"".join(parts)}</article>')
    return f'<div class="cards">{"".join(cards)}</div>'


def shared_metrics_html(runs: Sequence[RunRecords]) -> str:
    """One chart per metric with every run's curve on the same axes, each run's chosen step starred.

    Args:
        runs: the runs' records.
    """
    evaluated = [(index, run) for index, run in enumerate(runs) if run.evaluation is not None]
    metrics = dict.fromkeys(metric for _, run in evaluated for metric in metric_names(run.evaluation.rows))
    charts = [
        line_chart(
            plot_title(metric),
            [
                metric_series(run.evaluation.rows, metric, run.label, run_colour(index), run.evaluation.selection)
                for index, run in evaluated
            ],
        )
        for metric in metrics
    ]
    return f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def comparison_sections(runs: Sequence[RunRecords], images: ImageSource) -> list[Section]:
    """The sections of a comparison page: chosen steps, shared curves, differing settings, each run unfolded.

    Args:
        runs: the runs' records.
        images: how images are referenced.
    """
    details = []
    for index, run in enumerate(runs):
        inner = "".join(
            f'<section id="{anchor}"><h3>{escape(heading)}</h3>{content}</section>'
            for anchor, heading, content in run_sections(run, images, f"run{index}-")
        )
        selection = run.evaluation.selection if run.evaluation else None
        chosen = f" · ★ step {selection.step}" if selection else ""
        summary = f'<span class="swatch-dot"></span>{escape(run.label)}{chosen}'
        details.append(
            f'<details class="run" style="--run:{run_colour(index)}"><summary>{summary}</summary>{inner}</details>'
        )
    sections = [
        ("chosen", "Chosen steps side by side", side_by_side_html(runs, images)),
        ("metrics", "Metrics", shared_metrics_html(runs)),
        ("training", "Training", training_html(runs)),
        ("settings", "Settings that differ", settings_diff_html(runs)),
        ("runs", "Each run", "".join(details)),
    ]
    return [section for section in sections if section[2]]
