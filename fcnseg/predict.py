"""Segment images: files or folders in, label PNGs (with the data set's palette) and overlays out.

Output names mirror the inputs: a file ``x.jpg`` gives ``OUT/x_labels.png`` (and ``OUT/x_overlay.png``); a folder is
walked with its subfolders, and its ``sub/y.png`` gives ``OUT/sub/y_labels.png``. Two inputs that would write the
same name (``x.png`` and ``x.jpg``, or ``x.png`` in two input folders) are refused before anything runs, as are
missing inputs and an output folder that cannot be written. Images stream one at a time, so hundreds of inputs
never sit in memory together; an image that cannot be read is reported and skipped, and the rest are written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
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
from fcnseg.outputs import require_writable_dir
from fcnseg.tta import TTAConfig, TTAModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class PredictionPlan:
    """What a predict run reads and writes, checked before any model runs."""

    out_dir: Path
    jobs: tuple[tuple[Path, Path], ...]  # (input image, its outputs' stem: OUT/<relative folder>/<stem>)
    skipped: tuple[tuple[Path, str], ...]  # (path inside an input folder, why it is not read)


def output_path(stem: Path, kind: str) -> Path:
    """``OUT/sub/x`` -> ``OUT/sub/x_labels.png`` (``kind`` "labels") or ``..._overlay.png``."""
    return stem.with_name(f"{stem.name}_{kind}.png")


def walk_folder(folder: Path, *, out_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images under ``folder`` and its subfolders (sorted), and what is passed over with the reason: other
    files, hidden files and folders, links to folders (not followed), folders that cannot be listed and the output
    folder itself."""
    images, skipped = [], []
    out_resolved = out_dir.resolve()
    def unreadable(error: OSError) -> None:
        skipped.append((Path(error.filename), f"cannot list the folder: {error.strerror}"))

    for parent, folders, files in os.walk(folder, onerror=unreadable):
        parent = Path(parent)
        kept = []
        for name in sorted(folders):
            path = parent / name
            if name.startswith("."):
                skipped.append((path, "hidden folder"))
            elif path.is_symlink():
                skipped.append((path, "link to a folder, not followed"))
            elif path.resolve() == out_resolved:
                skipped.append((path, "the output folder"))
            else:
                kept.append(name)
        folders[:] = kept  # os.walk descends into these, in this order
        for name in sorted(files):
            path = parent / name
            if name.startswith("."):
                skipped.append((path, "hidden file"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, f"not an image file name ({', '.join(IMAGE_SUFFIXES)})"))
            else:
                images.append(path)
    return images, skipped


def plan_predictions(inputs: list[str | Path], out_dir: str | Path) -> PredictionPlan:
    """Every input image with its output stem; raises ``DataError`` for a missing input, a folder without images
    or two inputs with one output name, and ``OutputError`` when ``out_dir`` cannot be written."""
    out_dir = Path(out_dir)
    jobs: list[tuple[Path, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images, passed_over = walk_folder(path, out_dir=out_dir)
            if not images:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}), subfolders included")
            jobs += [(image, out_dir / image.relative_to(path).with_suffix("")) for image in images]
            skipped += passed_over
        elif path.is_file():
            jobs.append((path, out_dir / path.stem))
        else:
            raise DataError(f"{path}: no such file or folder")
    jobs = list(dict.fromkeys(jobs))  # the same file named twice is segmented once
    _refuse_shared_outputs(jobs)
    require_writable_dir(out_dir)
    return PredictionPlan(out_dir=out_dir, jobs=tuple(jobs), skipped=tuple(skipped))


def _refuse_shared_outputs(jobs: list[tuple[Path, Path]]) -> None:
    first: dict[Path, Path] = {}
    clashes = []
    for image, stem in jobs:
        if stem in first:
            clashes.append(f"{first[stem]} and {image} -> {output_path(stem, 'labels')}")
        else:
            first[stem] = image
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise DataError(
            f"{len(clashes)} output name(s) would hold two inputs' results: {'; '.join(clashes[:3])}{more}. "
            "Rename one of each pair, or predict them into separate --out folders"
        )


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
) -> list[dict]:
    """Segment every input image into ``out_dir`` now and return one result per image, as ``iter_predictions``
    yields them (the options are its own).

    The run is planned first (``plan_predictions``: inputs, output names, the folder's permissions); an image
    that cannot be read gets ``"error"`` in its result and the others are still written.
    """
    plan = plan_predictions(inputs, out_dir)
    return list(iter_predictions(model, meta, plan, device=device, overlay=overlay, alpha=alpha, dense=dense,
                                 bf16=bf16, tta=tta))


def iter_predictions(
    model: nn.Module,
    meta: ModelMeta,
    plan: PredictionPlan,
    *,
    device: torch.device | str = "cpu",
    overlay: str = "blend",
    alpha: float = 0.5,
    dense: int = 1,
    bf16: bool = False,
    tta: TTAConfig | None = None,
) -> Iterator[dict]:
    """Segment the plan's images one at a time; yields ``{"input", "labels", "overlay", "classes", "error"}``
    per image as it goes (``error`` is ``None``, or the message of an image that could not be read, whose
    ``labels`` and ``overlay`` are then ``None``).

    ``overlay`` is ``"blend"`` (colours over the photo), ``"side-by-side"`` (photo | colours | blend) or ``"none"``;
    ``alpha`` in [0, 1] is the colours' opacity. ``dense > 1`` scores with the model's stride-32 score_fr path made
    ``dense`` times denser by filter rarefaction (``fcnseg.dense.rarefy``: shift-and-stitch in one pass; skip layers
    unused). ``bf16``: bf16 autocast where the hardware has fast bf16 kernels (``fcnseg.inference_model``; ignored
    with ``dense``). ``tta``: test-time augmentation (``fcnseg.tta``), the arg-max of the class probabilities
    averaged over flipped and rescaled views, each view run by the fast module (or the rarefied one, with
    ``dense``); ``None``: one plain pass.
    """
    if overlay not in ("blend", "side-by-side", "none"):
        raise ValueError(f"overlay must be 'blend', 'side-by-side' or 'none', got {overlay!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the overlay's opacity) must be in [0, 1], got {alpha}")
    if dense < 1:
        raise ValueError(f"dense must be a positive integer (1: no rarefaction), got {dense}")
    model = model.to(device).eval()
    if dense > 1:
        model = rarefy(model, dense)
    else:  # batch norm folded, channels_last: checked against the plain model on a small example
        in_channels = getattr(model, "in_channels", 3)
        model = inference_model(model, torch.randn(1, in_channels, 64, 96, device=device), bf16=bf16)
    if tta is not None:
        model = TTAModel(model, flip=tta.flip, scales=tta.scales)
    for path, stem in plan.jobs:
        try:
            image = read_image(path)
        except DataError as error:
            yield {"input": str(path), "labels": None, "overlay": None, "classes": {}, "error": str(error)}
            continue
        labels = predict_labels(model, image, normalization=meta.normalization, device=device)
        yield _write_outputs(image, labels, meta, path=path, stem=stem, overlay=overlay, alpha=alpha)


def _write_outputs(image: torch.Tensor, labels: torch.Tensor, meta: ModelMeta, *, path: Path, stem: Path,
                   overlay: str, alpha: float) -> dict:
    stem.parent.mkdir(parents=True, exist_ok=True)
    label_path = output_path(stem, "labels")
    colorize(labels, meta.palette).save(label_path)
    result = {"input": str(path), "labels": str(label_path), "overlay": None, "error": None}
    if overlay != "none":
        blended = blend_overlay(image, labels, meta.palette, alpha=alpha)
        if overlay == "side-by-side":
            photo = Image.fromarray(image.permute(1, 2, 0).numpy())
            blended = side_by_side(photo, colorize(labels, meta.palette), blended)
        overlay_path = output_path(stem, "overlay")
        blended.save(overlay_path)
        result["overlay"] = str(overlay_path)
    counts = np.bincount(labels.reshape(-1).numpy(), minlength=meta.num_classes)
    result["classes"] = {
        meta.class_names[i]: round(float(counts[i]) / labels.numel(), 4) for i in np.nonzero(counts)[0]
    }
    return result
