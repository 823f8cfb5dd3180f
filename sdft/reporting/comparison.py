"""The page of ``sdft compare``, ``report.html`` beside ``comparison.json``: which entry the rule prefers and why,
each entry's metrics with their standard errors, and the entries' probe grids under one slider.

It is built from the comparison folder alone (see :mod:`sdft.evaluation.compare` for its files), with the run
page's style and script.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from sdft.files import write_text_atomic
from sdft.reporting.gallery import ImageSource, Picture, gallery_html
from sdft.reporting.html import Section, page_html
from sdft.reporting.markdown import format_value, metric_label
from sdft.reporting.records import better, metric_names, read_grid_rows


def write_comparison_page(folder: Path, run: Path, embed_images: bool = False) -> Path:
    """Write ``report.html`` for the comparison in ``folder`` (its ``comparison.json`` and grids); return its path.

    Args:
        folder: the output folder of ``sdft compare``.
        run: the run whose probes were scored (its ``evaluation/probes.json`` labels the grids' rows).
        embed_images: embed the grids as data URIs instead of referencing their files.
    """
    comparison = json.loads((folder / "comparison.json").read_text())
    entries, choice = comparison["entries"], comparison["selection"]
    rows = read_grid_rows(run / "evaluation" / "probes.json")
    images = ImageSource(folder, embed_images)
    sections: list[Section] = [
        ("choice", "Preferred", choice_html(choice)),
        ("metrics", "Metrics", table_html(entries, choice)),
        ("images", "Probe images", grids_html(folder, entries, choice, rows, images)),
        ("entries", "Entries", sources_html(entries)),
    ]
    where = f"{len(entries) - 1} entries and the base model, scored on the probes of <code>{escape(str(run))}</code>"
    path = folder / "report.html"
    write_text_atomic(path, page_html(f"Comparison · {run.parent.name}/{run.name}", where, sections))
    return path


def choice_html(choice: Mapping[str, Any]) -> str:
    """The entry the rule prefers, why, and the entries it rejected with why."""
    parts = [f'<p class="badge chosen">★ {escape(choice["entry"])}</p><p class="reason">{escape(choice["reason"])}</p>']
    rejected = choice.get("rejected") or {}
    if rejected:
        items = "".join(f"<li><strong>{escape(name)}</strong>: {escape(why)}</li>" for name, why in rejected.items())
        parts.append(f'<h3>Rejected</h3><ul class="rejected-list">{items}</ul>')
    return "".join(parts)


def table_html(entries: Sequence[Mapping[str, Any]], choice: Mapping[str, Any]) -> str:
    """The entries x metrics table, each value with its standard error, the best value of each metric in bold."""
    metrics = metric_names(entries)
    best = {metric: best_value(entries, metric) for metric in metrics}
    head = "".join(f'<th scope="col">{escape(metric_label(metric))}</th>' for metric in metrics)
    lines = []
    for entry in entries:
        cells = []
        for metric in metrics:
            text = escape(format_value(entry.get(metric), (entry.get("se") or {}).get(metric)))
            cells.append(
                f'<td class="num">{f"<strong>{text}</strong>" if entry.get(metric) == best[metric] else text}</td>'
            )
        chosen = entry["name"] == choice["entry"]
        name = f"{escape(entry['name'])}{' ★' if chosen else ''}"
        lines.append(f'<tr class="{"chosen" if chosen else ""}"><th scope="row">{name}</th>{"".join(cells)}</tr>')
    note = "↑ higher is better, ↓ lower is better; the best value of each metric is in bold. ± is the standard error "
    note += "of the mean over the probe images. Every entry drew the same prompts and seeds."
    return (
        f'<div class="table-wrap"><table class="metrics"><thead><tr><th scope="col">entry</th>{head}</tr></thead>'
        f'<tbody>{"".join(lines)}</tbody></table></div><p class="note">{note}</p>'
    )


def best_value(entries: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """The best value of ``metric`` among the entries by its direction; None when the direction is unknown."""
    values = [entry[metric] for entry in entries if isinstance(entry.get(metric), (int, float))]
    direction = better(metric)
    if not values or direction is None:
        return None
    return max(values) if direction == "higher" else min(values)


def grids_html(
    folder: Path,
    entries: Sequence[Mapping[str, Any]],
    choice: Mapping[str, Any],
    rows: Sequence[str],
    images: ImageSource,
) -> str:
    """The entries' probe grids under one slider, the preferred one shown first."""
    pictures = [
        Picture(
            entry["name"],
            entry["name"],
            folder / entry["grid"],
            (("chosen", "preferred"),) if entry["name"] == choice["entry"] else (),
        )
        for entry in entries
        if (folder / entry["grid"]).is_file()
    ]
    intro = "<p>Each grid holds one row per prompt, the same seeds for every entry. Slide through the entries; "
    intro += "click a grid to enlarge it (← and → move between entries there).</p>"
    return intro + gallery_html("entry", pictures, rows, images, "entry")


def sources_html(entries: Sequence[Mapping[str, Any]]) -> str:
    """What each entry is and where it came from."""
    items = "".join(
        f"<li><strong>{escape(entry['name'])}</strong>: <code>{escape(str(entry['source']))}</code></li>"
        for entry in entries
    )
    note = "<p>Each entry was loaded on the base model as its users load it: diffusers' LoRA loader for LoRA and "
    note += "DoRA files, the LyCORIS formulas for LoKr and LoHa, diffusers' textual inversion loader for words.</p>"
    return f"<ul>{items}</ul>{note}"
