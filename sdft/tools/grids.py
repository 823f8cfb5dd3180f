"""Image grids: the labelled XY plot of a comparison, rows and columns named on the image, a title above; and
plain tilings of equally sized images (previews, probe sets)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
#: the settings line under the title
FAINT_INK = (90, 90, 90)


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes on a labelled grid, in pixels.

    Attributes:
        tile: (width, height) of every image.
        rows: number of image rows.
        columns: number of image columns.
        cell_width: the width of a column: the tile's, or more when its widest label needs it.
        left: the width of the row-label margin.
        top: the height of the title block and the column-label band together.
        font_size: the labels' font size.
        lines: the title's lines (the wrapped title, then the wrapped subtitle).
        title_lines: how many of ``lines`` belong to the title (the rest are the subtitle).
    """

    tile: tuple[int, int]
    rows: int
    columns: int
    cell_width: int
    left: int
    top: int
    font_size: int
    lines: tuple[str, ...]
    title_lines: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid."""
        return self.left + self.columns * self.cell_width, self.top + self.rows * self.tile[1]

    @property
    def padding(self) -> int:
        return self.font_size // 2

    @property
    def line_height(self) -> int:
        return sum(font(self.font_size).getmetrics())

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the image at ``row``, ``column``, centred in its cell."""
        width, height = self.tile
        x = self.left + column * self.cell_width + (self.cell_width - width) // 2
        y = self.top + row * height
        return x, y, x + width, y + height

    def column_label_box(self, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the band that holds column ``column``'s label."""
        x = self.left + column * self.cell_width
        return x, self.top - self.line_height - 2 * self.padding, x + self.cell_width, self.top

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the margin beside row ``row``."""
        y = self.top + row * self.tile[1]
        return 0, y, self.left, y + self.tile[1]


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels (its bitmap font where Pillow lacks FreeType)."""
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int) -> int:
    """The width of ``text`` in pixels at font size ``size``."""
    return math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font(size)))


def wrap(text: str, width: int, size: int) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels at word boundaries (a longer word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def grid_layout(
    tile: tuple[int, int], row_labels: list[str], column_labels: list[str], title: str, subtitle: str = ""
) -> GridLayout:
    """Lay out a grid of ``len(row_labels)`` x ``len(column_labels)`` tiles with its labels and title.

    The font grows with the tiles (1/24 of their height, at least 12 px); the row-label margin is as wide as the
    widest row label, and a column is as wide as its tile or its label, whichever is wider.

    Args:
        tile: (width, height) of every image.
        row_labels: one per row, drawn left of it.
        column_labels: one per column, drawn above it.
        title: drawn above everything, wrapped to the grid's width.
        subtitle: grey lines under the title (e.g. the settings every image shares); may be empty.
    """
    size = max(12, tile[1] // 24)
    padding = size // 2
    left = max(text_width(label, size) for label in row_labels) + 2 * padding
    cell_width = max(tile[0], *(text_width(label, size) + 2 * padding for label in column_labels))
    width = left + len(column_labels) * cell_width - 2 * padding
    title_lines = wrap(title, width, size)
    lines = title_lines + (wrap(subtitle, width, size) if subtitle else [])
    line_height = sum(font(size).getmetrics())
    top = padding + len(lines) * line_height + padding + line_height + 2 * padding
    return GridLayout(
        tile, len(row_labels), len(column_labels), cell_width, left, top, size, tuple(lines), len(title_lines)
    )


def labelled_grid(
    images: list[list[Image.Image]], row_labels: list[str], column_labels: list[str], title: str, subtitle: str = ""
) -> Image.Image:
    """Tile equally sized images in rows and columns on a white sheet, each row and column named, a title on top.

    Args:
        images: the rows of images, every row ``len(column_labels)`` long.
        row_labels: one per row (e.g. ``seed 3``).
        column_labels: one per column (e.g. ``step 400``).
        title: e.g. the prompt.
        subtitle: e.g. the settings the images share; may be empty.
    """
    layout = grid_layout(images[0][0].size, row_labels, column_labels, title, subtitle)
    return draw_grid(images, layout, row_labels, column_labels)


def draw_grid(
    images: list[list[Image.Image]], layout: GridLayout, row_labels: list[str], column_labels: list[str]
) -> Image.Image:
    """Draw a grid as :func:`grid_layout` laid it out (see :func:`labelled_grid`)."""
    grid = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    text_font, padding, line_height = font(layout.font_size), layout.padding, layout.line_height
    for index, line in enumerate(layout.lines):
        ink = INK if index < layout.title_lines else FAINT_INK
        draw.text((padding, padding + index * line_height), line, fill=ink, font=text_font)
    size = layout.font_size
    for column, label in enumerate(column_labels):  # centred over the column
        x0, y0, x1, _ = layout.column_label_box(column)
        draw.text(((x0 + x1 - text_width(label, size)) // 2, y0 + padding), label, fill=INK, font=text_font)
    for row, label in enumerate(row_labels):  # right-aligned, level with the row's middle
        _, y0, x1, y1 = layout.row_label_box(row)
        position = (x1 - padding - text_width(label, size), (y0 + y1 - line_height) // 2)
        draw.text(position, label, fill=INK, font=text_font)
        for column, image in enumerate(images[row]):
            grid.paste(image.convert("RGB"), layout.tile_box(row, column)[:2])
    return grid


def image_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized images row by row, ``columns`` per row."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
