"""Colour palettes of the supported data sets, and `colorize` to draw a label map with one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

Palette = tuple[tuple[int, int, int], ...]


def voc_palette(num_colors: int = 256) -> Palette:
    """The PASCAL VOC palette: colour i spreads the bits of i over R, G, B, from the most significant bit down.

    Entry 255 is (224, 224, 192), the cream of VOC's "void" borders. Also used as the generated palette of any
    data set without its own colours.
    """
    colors = []
    for index in range(num_colors):
        red = green = blue = 0
        code = index
        for shift in range(7, -1, -1):  # bit j of code -> bit 7 - j // 3 of R, G or B
            red |= ((code >> 0) & 1) << shift
            green |= ((code >> 1) & 1) << shift
            blue |= ((code >> 2) & 1) << shift
            code >>= 3
        colors.append((red, green, blue))
    return tuple(colors)


def generated_palette(num_classes: int) -> Palette:
    """A palette of `num_classes` distinct colours (the VOC bit-interleaving scheme)."""
    return voc_palette(num_classes)


# SegNet's CamVid colours: Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist.
CAMVID_PALETTE: Palette = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

# Cityscapes colours of the 19 train ids (cityscapesScripts `labels.py`), road .. bicycle.
CITYSCAPES_PALETTE: Palette = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def colorize(
    mask: torch.Tensor | np.ndarray,
    palette: Sequence[tuple[int, int, int]],
    *,
    ignore_index: int = 255,
    ignore_color: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Draw an (H, W) label map as a palette ("P" mode) PIL image.

    Label i gets `palette[i]`; `ignore_index` gets `ignore_color`; any other label past the palette is black.
    """
    labels = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if labels.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) label map, got shape {labels.shape}")
    if len(palette) > 256:
        raise ValueError(f"a PIL palette holds at most 256 colours, got {len(palette)}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"colorize expects labels in 0..255, got {labels.min()}..{labels.max()}")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if 0 <= ignore_index <= 255:
        flat[ignore_index] = ignore_color
    image = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette turns it into "P"
    image.putpalette(flat.reshape(-1).tolist())
    return image
