"""A picture that explains itself: `add_legend` draws a panel naming the classes a label map holds.

The panel sits to the right of the picture, one row a class present in the labels (largest share first): a colour
swatch and the class name, optionally its share ("Road 41%"). When the rows need more height than the picture
has, the canvas grows downwards (white below the picture), so a 32x32 thumbnail gets a legend as readable as a
360x480 photo's. The text is Pillow's default font (FreeType's Aileron at a size that follows the picture's
height, or the fixed bitmap font where FreeType is missing), black on white: every pixel the text and its
anti-aliasing make is a grey, so the only coloured pixels of the panel are the swatches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
SWATCH_OUTLINE = (96, 96, 96)  # a grey frame, so a white or very light class colour still shows its square


def legend_rows(labels: torch.Tensor | np.ndarray, *, num_classes: int,
                min_share: float = 0.0) -> list[tuple[int, float]]:
    """``[(class index, share), ...]`` of the classes present in ``labels``, largest share first (ties: lower index).

    ``share`` is the class's fraction of the labelled pixels, those in ``[0, num_classes)``; any other value (the
    ignore index 255, negative values) is left out of the count. Classes with a share below ``min_share`` are
    omitted.
    """
    values = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    values = values.reshape(-1).astype(np.int64)
    values = values[(values >= 0) & (values < num_classes)]
    if values.size == 0:
        return []
    counts = np.bincount(values, minlength=num_classes)  # (K,)
    shares = counts / values.size
    present = [int(i) for i in np.nonzero(counts)[0] if shares[i] >= min_share]
    present.sort(key=lambda i: (-counts[i], i))
    return [(i, float(shares[i])) for i in present]


def legend_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (Pillow >= 10.1 with FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def add_legend(
    picture: Image.Image,
    labels: torch.Tensor | np.ndarray,
    *,
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    shares: bool = False,
    min_share: float = 0.0,
    font_size: int | None = None,
) -> Image.Image:
    """A new RGB image: ``picture`` unchanged at the top left, a legend of the classes in ``labels`` to its right.

    ``labels`` is an ``(H, W)`` (or any shape) integer tensor or array of class indices into ``class_names`` and
    ``palette`` (``(r, g, b)`` per class); values outside ``[0, len(class_names))`` are ignored. Rows are ordered
    by share, largest first, and show the share in percent of the labelled pixels when ``shares`` is true; classes
    below ``min_share`` are left out. Without any labelled pixel the panel says "no classes". ``font_size``
    (pixels) defaults to the picture's height / 24, between 12 and 32.
    """
    if len(palette) < len(class_names):
        raise ValueError(f"the palette has {len(palette)} colours for {len(class_names)} classes")
    rows = legend_rows(labels, num_classes=len(class_names), min_share=min_share)
    size = font_size if font_size is not None else max(12, min(32, picture.height // 24))
    font = legend_font(size)
    texts = [f"{class_names[i]} {100 * share:.0f}%" if shares else class_names[i] for i, share in rows]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    padding, gap, row_height = size // 2 + 2, size // 2, size + size // 2
    if rows:
        text_width = max(measure.textlength(text, font=font) for text in texts)
        panel_width = int(2 * padding + size + gap + text_width + 1)
        panel_height = 2 * padding + len(rows) * row_height - (row_height - size)
    else:
        panel_width = int(2 * padding + measure.textlength("no classes", font=font) + 1)
        panel_height = 2 * padding + size
    canvas = Image.new("RGB", (picture.width + panel_width, max(picture.height, panel_height)), BACKGROUND)
    canvas.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = picture.width + padding
    if not rows:
        _draw_text(draw, (left, padding), "no classes", font=font, height=size)
    for row, ((index, _), text) in enumerate(zip(rows, texts)):
        top = padding + row * row_height
        color = tuple(int(c) for c in palette[index])
        draw.rectangle((left, top, left + size - 1, top + size - 1), fill=color, outline=SWATCH_OUTLINE)
        _draw_text(draw, (left + size + gap, top), text, font=font, height=size)
    return canvas


def _draw_text(draw: ImageDraw.ImageDraw, corner: tuple[int, int], text: str, *, font, height: int) -> None:
    """``text`` vertically centred in the ``height``-pixel row whose top left is ``corner``."""
    _, bbox_top, _, bbox_bottom = draw.textbbox((0, 0), "Hg", font=font)  # one reference: rows align alike
    offset = (height - (bbox_bottom - bbox_top)) // 2 - bbox_top
    draw.text((corner[0], corner[1] + offset), text, fill=TEXT_COLOR, font=font)
