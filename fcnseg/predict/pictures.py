"""What predict writes for one image: the label PNG (the data set's palette), an overlay with a legend, and the
result record (class shares) that goes to the manifest. Each file is written atomically (a temporary file, then
a rename), the overlay before the label PNG, so an existing label PNG means the image is finished."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.checkpoint import ModelMeta
from fcnseg.data.palettes import colorize
from fcnseg.legend import add_legend
from fcnseg.outputs import write_atomically
from fcnseg.predict.plan import output_path

OVERLAYS = ("blend", "side-by-side", "none")
LEGENDS = ("classes", "shares", "none")
OVERLAY_COMPRESS_LEVEL = 1  # overlays are for looking at: fast to write matters more than 8% of file size


def blend_overlay(image: torch.Tensor, labels: torch.Tensor, palette, *, alpha: float = 0.5) -> Image.Image:
    """The photo with the label colours blended over it at opacity ``alpha``."""
    photo = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    colours = colorize(labels, palette).convert("RGB")
    return Image.blend(photo, colours, alpha)


def side_by_side(*images: Image.Image) -> Image.Image:
    width = sum(im.width for im in images)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas


def overlay_picture(image: torch.Tensor, labels: torch.Tensor, meta: ModelMeta, *, overlay: str, alpha: float,
                    legend: str) -> Image.Image:
    """``"blend"``: the colours over the photo; ``"side-by-side"``: photo | colours | blend. ``legend``
    ``"classes"`` lists the classes present with their colours, ``"shares"`` adds their share of the pixels."""
    picture = blend_overlay(image, labels, meta.palette, alpha=alpha)
    if overlay == "side-by-side":
        photo = Image.fromarray(image.permute(1, 2, 0).numpy())
        picture = side_by_side(photo, colorize(labels, meta.palette), picture)
    if legend != "none":
        picture = add_legend(picture, labels, class_names=meta.class_names, palette=meta.palette,
                             shares=legend == "shares")
    return picture


def class_shares(labels: torch.Tensor | np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """``{class name: share of the pixels}`` for the classes present, in class order, rounded to 4 digits."""
    values = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    values = values.reshape(-1).astype(np.int64)
    values = values[(values >= 0) & (values < len(class_names))]
    counts = np.bincount(values, minlength=len(class_names))
    total = max(int(np.asarray(labels).size), 1)
    return {class_names[i]: round(float(counts[i]) / total, 4) for i in np.nonzero(counts)[0]}


def save_atomically(picture: Image.Image, path: Path, *, compress_level: int = 6) -> None:
    """Save a PNG under a temporary name beside ``path``, then rename: a reader never sees half a file.
    ``compress_level``: zlib's, 0-9 (Pillow's default 6)."""
    write_atomically(path, lambda stream: picture.save(stream, format="PNG", compress_level=compress_level))


def write_outputs(image: torch.Tensor, labels: torch.Tensor, meta: ModelMeta, *, path: Path, stem: Path,
                  overlay: str, alpha: float, legend: str, ms: float | None) -> dict:
    """Write one image's outputs and return its result record (as the manifest stores it)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    result = {"input": str(path), "labels": None, "overlay": None, "height": int(labels.shape[0]),
              "width": int(labels.shape[1]), "classes": class_shares(labels, meta.class_names),
              "ms": None if ms is None else round(ms, 2), "error": None}
    if overlay != "none":
        overlay_file = output_path(stem, "overlay")
        picture = overlay_picture(image, labels, meta, overlay=overlay, alpha=alpha, legend=legend)
        # zlib level 1: a 360x480 overlay encodes in 14 ms instead of 55 ms (level 6) for an 8% larger file
        save_atomically(picture, overlay_file, compress_level=OVERLAY_COMPRESS_LEVEL)
        result["overlay"] = str(overlay_file)
    label_file = output_path(stem, "labels")
    save_atomically(colorize(labels, meta.palette), label_file)  # last: it marks the image as done
    result["labels"] = str(label_file)
    return result
