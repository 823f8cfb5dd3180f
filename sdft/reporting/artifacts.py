"""What a run leaves to use, on its page: the exported folders with their files and how to load them (read from
each folder's model card), and the run's settings."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sdft.reporting.folders import RunRecords, flatten_settings
from sdft.reporting.gallery import inline_code

#: the settings listed on a run's page, as (label, dotted key), when its configuration has them
KEY_SETTINGS = (
    ("method", "model.class_path"),
    ("adapter", "model.init_args.adapter"),
    ("base model", "model.init_args.family.init_args.pretrained_model_name_or_path"),
    ("rank", "model.init_args.rank"),
    ("optimizer", "model.init_args.optimizer.class_path"),
    ("learning rate", "model.init_args.optimizer.init_args.lr"),
    ("steps", "trainer.max_steps"),
    ("batch size", "data.init_args.batch_size"),
    ("resolution", "data.init_args.resolution"),
    ("instance prompt", "data.init_args.instance_prompt"),
    ("seed", "seed_everything"),
)
CODE_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def href(path: Path, page_dir: Path) -> str:
    """A link to a file of the run, relative to the page.

    Args:
        path: the file or folder.
        page_dir: the folder holding the page.
    """
    return escape(quote(Path(os.path.relpath(path, page_dir)).as_posix()))


def file_size(path: Path) -> str:
    """E.g. ``232 kB``.

    Args:
        path: a file.
    """
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def card_sections(text: str) -> dict[str, str]:
    """A model card's ``## `` sections by heading, and its lead paragraph under ``""``.

    Args:
        text: the card's markdown (YAML front matter allowed).
    """
    body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)
    parts = re.split(r"^## +(.+)$", body, flags=re.MULTILINE)
    blocks = [block.strip() for block in parts[0].split("\n\n")]
    paragraphs = [block for block in blocks if block and not block.startswith("#")]
    sections = {"": paragraphs[0] if paragraphs else ""}
    sections.update({heading.strip(): content for heading, content in zip(parts[1::2], parts[2::2], strict=True)})
    return sections


def card_file_uses(files_section: str) -> dict[str, str]:
    """File name -> what it is for, from the card's ``| file | use |`` table.

    Args:
        files_section: the text of the card's Files section.
    """
    uses = {}
    for line in files_section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            uses[cells[0].strip("`")] = " | ".join(cells[1:])
    return uses


def export_html(folder: Path, title: str, page_dir: Path) -> str:
    """One exported folder: its card's lead, its files (size, use) and its card's loading code.

    Args:
        folder: the export folder.
        title: its heading text.
        page_dir: the folder holding the page.
    """
    card = folder / "README.md"
    sections = card_sections(card.read_text()) if card.is_file() else {}
    uses = card_file_uses(sections.get("Files", ""))
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    rows = "".join(
        f'<tr><td><a href="{href(path, page_dir)}"><code>{escape(path.name)}</code></a></td>'
        f'<td class="num">{file_size(path)}</td><td>{inline_code(uses.get(path.name, ""))}</td></tr>'
        for path in files
    )
    parts = [f"<h3>{title}</h3>"]
    if sections.get(""):
        parts.append(f"<p>{inline_code(sections[''])}</p>")
    parts.append(f'<table class="files"><thead><tr><th>file</th><th>size</th><th>use</th></tr></thead>{rows}</table>')
    for heading, content in sections.items():
        for language, code in CODE_BLOCK.findall(content) if heading.startswith("Use") else []:
            parts.append(f"<h4>{inline_code(heading)}</h4>")
            parts.append(f'<pre><code class="language-{escape(language)}">{escape(code.rstrip())}</code></pre>')
    if card.is_file():
        parts.append(f'<p><a href="{href(card, page_dir)}">The model card (README.md)</a></p>')
    return f'<article class="export">{"".join(parts)}</article>'


def exports_html(run: RunRecords, page_dir: Path) -> str:
    """The run's exported folders (``best/``, ``final/``, ``exports/*/``); empty when there are none.

    Args:
        run: the run's records.
        page_dir: the folder holding the page.
    """
    selection = run.evaluation.selection if run.evaluation else None
    found = [(run.run_dir / "best", "the chosen step" + (f" ({selection.step})" if selection else ""))]
    found.append((run.run_dir / "final", "the last step"))
    found += [(folder, "exported with sdft export") for folder in sorted(run.run_dir.glob("exports/*"))]
    articles = [
        export_html(
            folder, f"<code>{escape(folder.relative_to(run.run_dir).as_posix())}/</code> · {escape(what)}", page_dir
        )
        for folder, what in found
        if folder.is_dir()
    ]
    return "".join(articles)


def display(value: Any) -> str:
    """A setting's value as YAML writes it (``null``, ``true``), lists in brackets.

    Args:
        value: a scalar or a list of scalars.
    """
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return f"[{', '.join(display(item) for item in value)}]" if isinstance(value, list) else str(value)


def settings_html(run: RunRecords) -> str:
    """The key settings of a run as a list, and its whole ``config.yaml`` to unfold.

    Args:
        run: the run's records.
    """
    flat = flatten_settings(run.config)
    items = "".join(
        f"<dt>{escape(label)}</dt><dd><code>{escape(display(flat[key]))}</code></dd>"
        for label, key in KEY_SETTINGS
        if key in flat
    )
    listing = f'<dl class="settings">{items}</dl>' if items else ""
    if run.config_text is None:
        return listing + "<p>No <code>config.yaml</code> in the run folder.</p>"
    lines = run.config_text.count("\n") + 1
    return (
        f"{listing}<details><summary><code>config.yaml</code> ({lines} lines), the resolved configuration</summary>"
        f"<pre><code>{escape(run.config_text)}</code></pre></details>"
    )


def settings_diff_html(runs: Sequence[RunRecords]) -> str:
    """The settings whose values differ between runs, one column per run.

    Args:
        runs: the runs compared.
    """
    flats = [flatten_settings(run.config) for run in runs]
    keys = sorted({key for flat in flats for key in flat})
    missing = object()
    differing = [key for key in keys if len({repr(flat.get(key, missing)) for flat in flats}) > 1]
    if not differing:
        return "<p>The runs' configurations are the same.</p>"
    head = "".join(f'<th scope="col">{escape(run.label)}</th>' for run in runs)
    rows = "".join(
        f'<tr><th scope="row"><code>{escape(key)}</code></th>'
        + "".join(f"<td><code>{escape(display(flat[key])) if key in flat else '—'}</code></td>" for flat in flats)
        + "</tr>"
        for key in differing
    )
    table = f'<table class="diff"><thead><tr><th>setting</th>{head}</tr></thead>{rows}</table>'
    return f'<div class="table-wrap">{table}</div>'
