"""Labelled image grids (one per Z value of a sweep) and contact sheets (explore), drawn with Pillow.

A grid has the X labels over its columns, the Y labels left of its rows, a title (the Z label) on top
and a note under every cell (its time). Small images (the 64 px demo model) are scaled up by a whole
factor with nearest-neighbour sampling, so they stay sharp and the labels stay readable; cells of
different sizes are centred in the largest one.
"""

from __future__ import annotations

import math

__all__ = ["cell_image", "contact_sheet", "labelled_grid"]

MIN_CELL_SIDE = 192  # cells smaller than this are scaled up by a whole factor
_PAD = 6
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_MUTED = (90, 90, 90)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a word longer than the width gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return bottom - top + 4


def cell_image(images: list):
    """One image, or the images of a batch as a near-square mini grid."""
    from PIL import Image

    if len(images) == 1:
        return images[0]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = max(i.width for i in images), max(i.height for i in images)
    sheet = Image.new("RGB", (columns * width, rows * height), _BACKGROUND)
    for n, image in enumerate(images):
        sheet.paste(image.convert("RGB"), ((n % columns) * width, (n // columns) * height))
    return sheet


def _scale(images: list) -> int:
    present = [i for i in images if i is not None]
    side = max((max(i.width, i.height) for i in present), default=MIN_CELL_SIDE)
    return max(1, MIN_CELL_SIDE // side)


def labelled_grid(cells: list[list], column_labels: list[str], row_labels: list[str], *,
                  notes: list[list[str]] | None = None, title: str = ""):
    """A grid image: `cells[row][column]` are PIL images (None: an empty cell), `notes[row][column]` the
    text under each cell."""
    from PIL import Image, ImageDraw

    flat = [image for row in cells for image in row]
    factor = _scale(flat)
    present = [i for i in flat if i is not None]
    cell_w = max(i.width for i in present) * factor if present else MIN_CELL_SIDE
    cell_h = max(i.height for i in present) * factor if present else MIN_CELL_SIDE
    font = _font(max(12, min(28, cell_w // 12)))
    small = _font(max(11, min(24, cell_w // 14)))
    line, small_line = _line_height(font), _line_height(small)

    column_lines = [_wrap(label, font, cell_w - 2 * _PAD) for label in column_labels]
    header_h = (max((len(lines) for lines in column_lines), default=0) * line + 2 * _PAD) if any(column_labels) else 0
    label_w = min(max(cell_w, 120), 2 * cell_w)
    row_lines = [_wrap(label, font, label_w - 2 * _PAD) for label in row_labels]
    left_w = label_w if any(row_labels) else 0
    columns = max(len(row) for row in cells)
    width = left_w + columns * cell_w
    title_lines = _wrap(title, font, width - 2 * _PAD) if title else []
    title_h = len(title_lines) * line + 2 * _PAD if title else 0
    note_h = small_line + _PAD if notes else 0
    height = title_h + header_h + len(cells) * (cell_h + note_h)

    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for n, text in enumerate(title_lines):
        draw.text((width / 2, _PAD + n * line), text, font=font, fill=_INK, anchor="ma")
    for c, lines in enumerate(column_lines):
        top = title_h + header_h - _PAD - len(lines) * line  # bottom-aligned, as A1111
        for n, text in enumerate(lines):
            draw.text((left_w + c * cell_w + cell_w / 2, top + n * line), text, font=font, fill=_INK, anchor="ma")
    for r, row in enumerate(cells):
        top = title_h + header_h + r * (cell_h + note_h)
        if r < len(row_lines):
            lines = row_lines[r]
            first = top + cell_h / 2 - len(lines) * line / 2
            for n, text in enumerate(lines):
                draw.text((left_w / 2, first + n * line), text, font=font, fill=_INK, anchor="ma")
        for c, image in enumerate(row):
            x = left_w + c * cell_w
            if image is not None:
                image = image.convert("RGB")
                if factor > 1:
                    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
                grid.paste(image, (x + (cell_w - image.width) // 2, top + (cell_h - image.height) // 2))
            if notes:
                draw.text((x + cell_w / 2, top + cell_h + 2), notes[r][c], font=small, fill=_MUTED, anchor="ma")
    return grid


def contact_sheet(images: list, labels: list[str], *, columns: int | None = None, title: str = ""):
    """Images in a near-square grid, each with its label (e.g. its seed) under it."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cells = [[images[r * columns + c] if r * columns + c < len(images) else None for c in range(columns)]
             for r in range(rows)]
    notes = [[labels[r * columns + c] if r * columns + c < len(labels) else "" for c in range(columns)]
             for r in range(rows)]
    return labelled_grid(cells, [""] * columns, [""] * rows, notes=notes, title=title)
