"""Segment images: files or folders in, label PNGs (with the data set's palette) and overlays out.

Images stream one at a time, so hundreds of inputs never sit in memory together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fcnseg.checkpoint import ModelMeta
from fcnseg.data.base import DataError, read_image
from fcnseg.data.palettes import colorize
from fcnseg.data.transforms import normalize
from fcnseg.dense import rarefy
from fcnseg.inference import inference_model
from fcnseg.tta import TTAConfig, TTAModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def iter_image_paths(inputs: list[str | Path]) -> Iterator[Path]:
    """Each input file, and the images inside each input folder (sorted), in order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            yield from found
        elif path.is_file():
            yield path
        else:
            raise DataError(f"{path}: no such file or folder")


@torch.inference_mode()
def predict_labels(model: nn.Module, image: torch.Tensor, *, normalization: str,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB -> ``(H, W)`` int64 labels on the CPU: the arg-max of the model's scores."""
    x = normalize(image.to(device), normalization).unsqueeze(0)  # (1, 3, H, W)
    logits = model(x)[0]  # (K, H, W)
    return logits.argmax(0).cpu()  # (H, W)


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


def predict_paths(
    model: nn.Module,
    meta: ModelMeta,
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    overlay: str = "blend",
    alpha: float = 0.5,
    dense: int = 1,
    bf16: bool = False,
    tta: TTAConfig | None = None,
) -> Iterator[dict]:
    """Segment every input image; yields ``{"input", "labels", "overlay", "classes"}`` per image as it goes.

    ``overlay`` is ``"blend"`` (colours over the photo), ``"side-by-side"`` (photo | colours | blend) or ``"none"``.
    ``dense > 1`` scores with the model's stride-32 score_fr path made ``dense`` times denser by filter rarefaction
    (``fcnseg.dense.rarefy``: shift-and-stitch in one pass; skip layers unused). ``bf16``: bf16 autocast where the
    hardware has fast bf16 kernels (``fcnseg.inference_model``; ignored with ``dense``). ``tta``: test-time
    augmentation (``fcnseg.tta``), the arg-max of the class probabilities averaged over flipped and rescaled views,
    each view run by the fast module (or the rarefied one, with ``dense``); ``None``: one plain pass.
    """
    if overlay not in ("blend", "side-by-side", "none"):
        raise ValueError(f"overlay must be 'blend', 'side-by-side' or 'none', got {overlay!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    if dense > 1:
        model = rarefy(model, dense)
    else:  # batch norm folded, channels_last: checked against the plain model on a small example
        in_channels = getattr(model, "in_channels", 3)
        model = inference_model(model, torch.randn(1, in_channels, 64, 96, device=device), bf16=bf16)
    if tta is not None:
        model = TTAModel(model, flip=tta.flip, scales=tta.scales)
    for path in iter_image_paths(inputs):
        image = read_image(path)
        labels = predict_labels(model, image, normalization=meta.normalization, device=device)
        label_path = out_dir / f"{path.stem}_labels.png"
        colorize(labels, meta.palette).save(label_path)
        result = {"input": str(path), "labels": str(label_path), "overlay": None}
        if overlay != "none":
            blended = blend_overlay(image, labels, meta.palette, alpha=alpha)
            if overlay == "side-by-side":
                photo = Image.fromarray(image.permute(1, 2, 0).numpy())
                blended = side_by_side(photo, colorize(labels, meta.palette), blended)
            overlay_path = out_dir / f"{path.stem}_overlay.png"
            blended.save(overlay_path)
            result["overlay"] = str(overlay_path)
        counts = np.bincount(labels.reshape(-1).numpy(), minlength=meta.num_classes)
        result["classes"] = {
            meta.class_names[i]: round(float(counts[i]) / labels.numel(), 4) for i in np.nonzero(counts)[0]
        }
        yield result
