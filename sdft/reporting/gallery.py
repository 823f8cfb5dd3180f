"""The run page's pictures: a gallery of grids with a slider (one grid per step or per LoRA scale, each row labelled
with its prompt), the prompts x steps overview cut from the same files, and the SamplePreview images.

Without script every grid of a gallery is listed one below the other; the page's script turns the list into one
grid at a time with a slider, and opens a clicked image enlarged. Images are referenced by their path relative to
the page (the run folder is what a user keeps and copies), or embedded as data URIs when asked.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from PIL import Image

#: tiles smaller than this many pixels are enlarged as crisp blocks rather than blurred
PIXELATED_BELOW = 128


@dataclass(frozen=True)
class ImageSource:
    """How the page points at an image file: a path relative to the page, or the file's bytes as a data URI.

    Attributes:
        page_dir: the folder the page is written into.
        embed: embed the files' bytes instead of referencing them.
    """

    page_dir: Path
    embed: bool = False

    def url(self, path: Path) -> str:
        """The ``src`` of ``path``, for an attribute (escape it there).

        Args:
            path: the image file.
        """
        if self.embed:
            kind = "png" if path.suffix.lower() == ".png" else "jpeg"
            return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
        return quote(Path(os.path.relpath(path, self.page_dir)).as_posix())


@dataclass(frozen=True)
class Picture:
    """One grid of a gallery.

    Attributes:
        key: what the slider shows it at (``150`` for a step, ``1.25`` for a scale).
        title: its heading, e.g. ``Step 150``.
        path: the image file.
        marks: (kind, text) labels: ``chosen``, ``base`` or ``rejected`` with their text.
    """

    key: str
    title: str
    path: Path
    marks: Sequence[tuple[str, str]] = ()

    @property
    def kinds(self) -> str:
        """The kinds of its marks, as CSS classes."""
        return " ".join(kind for kind, _ in self.marks)

    @property
    def chosen(self) -> bool:
        return any(kind == "chosen" for kind, _ in self.marks)


def inline_code(text: str) -> str:
    """Text whose backticked parts (prompts, in the readers' labels) become ``<code>``, all of it escaped.

    Args:
        text: e.g. ``\\`a sks dog\\` (seeds 0, 1)``.
    """
    parts = text.split("`")
    return "".join(f"<code>{escape(part)}</code>" if index % 2 else escape(part) for index, part in enumerate(parts))


def marks_html(marks: Sequence[tuple[str, str]]) -> str:
    """The marks of a step or scale as small labels, e.g. ``★ chosen``.

    Args:
        marks: (kind, text) pairs.
    """
    return "".join(f' <span class="mark {kind}">{escape(text)}</span>' for kind, text in marks)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header.

    Args:
        path: the image file.
    """
    with Image.open(path) as image:
        return image.size


def frame_html(anchor: str, picture: Picture, rows: Sequence[str], images: ImageSource) -> str:
    """One grid with its heading and, beside each of its rows, that row's prompt label.

    Args:
        anchor: the element id of this grid.
        picture: the grid.
        rows: the labels of the grid's rows, top to bottom (empty when unknown).
        images: how images are referenced.
    """
    width, height = image_size(picture.path)
    crisp = " pixelated" if rows and height / len(rows) < PIXELATED_BELOW else ""
    source = escape(images.url(picture.path))
    alt = escape(f"{picture.title}: the probe images, one row per prompt")
    image = f'<img class="zoom{crisp}" src="{source}" alt="{alt}" width="{width}" height="{height}">'
    if not images.embed:
        image = f'<a href="{source}">{image}</a>'
    labels = "".join(f"<li><span>{inline_code(label)}</span></li>" for label in rows)
    body = f'<ol class="row-labels">{labels}</ol>{image}' if rows else image
    title = f'<h4 class="frame-title">{escape(picture.title)}{marks_html(picture.marks)}</h4>'
    return (
        f'<div class="frame {picture.kinds}" id="{anchor}" data-key="{escape(picture.key)}">{title}'
        f'<div class="{"labelled" if rows else "unlabelled"}" style="--rows:{max(len(rows), 1)}">{body}</div></div>'
    )


def gallery_html(name: str, pictures: Sequence[Picture], rows: Sequence[str], images: ImageSource, what: str) -> str:
    """A gallery: a slider over the grids (shown by the page's script), links to each, and every grid.

    Args:
        name: a prefix for the element ids, unique on the page (``run0-step``).
        pictures: the grids, in slider order.
        rows: the labels of the grids' rows, top to bottom.
        images: how images are referenced.
        what: the slider's quantity, e.g. ``step`` or ``scale``.
    """
    if not pictures:
        return ""
    start = next((index for index, picture in enumerate(pictures) if picture.chosen), 0)
    chips = "".join(
        f'<a href="#{name}-{index}" class="{picture.kinds}" '
        f'title="{escape(picture.title + "".join(f" · {text}" for _, text in picture.marks))}">'
        f"{escape(picture.key)}{'★' if picture.chosen else ''}</a>"
        for index, picture in enumerate(pictures)
    )
    controls = (
        f'<div class="controls" hidden><label for="{name}-slider">{escape(what)}</label>'
        f'<input type="range" id="{name}-slider" min="0" max="{len(pictures) - 1}" step="1" value="{start}">'
        f'<output for="{name}-slider"></output></div>'
    )
    frames = "".join(frame_html(f"{name}-{index}", picture, rows, images) for index, picture in enumerate(pictures))
    return (
        f'<div class="gallery" data-name="{name}">{controls}<nav class="steps" aria-label="{escape(what)}s">'
        f"{chips}</nav>{frames}</div>"
    )


def overview_html(name: str, pictures: Sequence[Picture], rows: Sequence[str], images: ImageSource) -> str:
    """Every grid's rows side by side: one line per step, one column per prompt, each cell that prompt's images
    cut from the step's grid by CSS (the file is referenced once per step); a cell links to its step's grid.

    Args:
        name: the id prefix of the gallery the cells link to.
        pictures: the grids, one line each.
        rows: the labels of the grids' rows (the columns here); nothing is drawn without them.
        images: how images are referenced.
    """
    if not pictures or not rows:
        return ""
    width, height = image_size(pictures[0].path)
    crisp = " pixelated" if height / len(rows) < PIXELATED_BELOW else ""
    head = "".join(f'<th scope="col">{inline_code(label)}</th>' for label in rows)
    lines = []
    for index, picture in enumerate(pictures):
        url = escape(images.url(picture.path))
        cells = "".join(
            f'<td><a class="cell" href="#{name}-{index}" title="{escape(picture.title)}, row {row + 1}" '
            f'style="background-position:0 {100 * row / max(len(rows) - 1, 1):.3f}%"></a></td>'
            for row in range(len(rows))
        )
        label = f"{escape(picture.key)}{'★' if picture.chosen else ''}"
        style = f"--grid:url(&quot;{url}&quot;)"
        lines.append(f'<tr class="{picture.kinds}" style="{style}"><th scope="row">{label}</th>{cells}</tr>')
    style = f"--rows:{len(rows)};--cell:{width} / {height / len(rows):.3f}"
    return (
        f'<div class="overview-wrap"><table class="overview{crisp}" style="{style}"><thead><tr><th></th>{head}'
        f"</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"
    )


def samples_html(
    samples: Sequence[tuple[int, Sequence[tuple[int, int, Path]]]], prompts: Sequence[str], images: ImageSource
) -> str:
    """The SamplePreview images as a table: one line per step, one column per (prompt, seed).

    Args:
        samples: (step, [(prompt index, seed, file), ...]) from ``read_samples``.
        prompts: SamplePreview's prompts by index (empty when unknown).
        images: how images are referenced.
    """
    if not samples:
        return ""
    columns = sorted({(index, seed) for _, found in samples for index, seed, _ in found})
    names = [prompts[index] if index < len(prompts) else f"prompt {index}" for index, _ in columns]
    head = "".join(
        f'<th scope="col">{escape(name)}<br><small>seed {seed}</small></th>'
        for name, (_, seed) in zip(names, columns, strict=True)
    )
    crisp = " pixelated" if image_size(samples[0][1][0][2])[0] < PIXELATED_BELOW else ""
    lines = []
    for step, found in samples:
        files = {(index, seed): path for index, seed, path in found}
        cells = "".join(
            f'<td><img class="zoom" src="{escape(images.url(files[column]))}" alt="step {step}, '
            f'{escape(name)}, seed {column[1]}"></td>'
            if column in files
            else "<td></td>"
            for name, column in zip(names, columns, strict=True)
        )
        lines.append(f'<tr><th scope="row">{step}</th>{cells}</tr>')
    return (
        f'<div class="overview-wrap"><table class="samples{crisp}"><thead><tr><th>step</th>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div>"
    )
