"""What ``fcnseg eval --report DIR`` writes: pictures and numbers that show where a model fails.

- ``confusion.png``: the confusion matrix normalized by row (row i: how the pixels of true class i were
  predicted, summing to 1), class names on both axes, the values (from .01) written in the cells when there are
  at most 20 classes;
- ``per_class_iu.png``: per-class IU as bars in the class colours, the mean IU as a dashed line;
- ``worst/NN_<image>.png``: the worst images, one picture each: photo | ground truth | prediction | errors
  (``error_map``), with a legend of the classes in the truth or the prediction;
- ``report.json``: the scores, per-class IU by name, the confusion counts and the worst images with their scores.

"Worst" is the lowest per-image mean IU: the IU of each class present in the image's ground truth or prediction
(ignored pixels left out), averaged, as the data set's mean IU is but over one image. It ranks an image that
misses a small class (a pedestrian, a sign) below one that is off by a few road pixels, which the pixel error
rate would not. Ties go to the earlier image; images without a labelled pixel are not ranked.
`PerImageScores` is the ``per_image`` callback of ``fcnseg.evaluate.evaluate``: it sums the confusion matrix
over the images it sees and keeps the label maps of only the ``keep`` worst (a heap), never all predictions.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fcnseg.data.base import read_image
from fcnseg.data.palettes import colorize
from fcnseg.legend import TEXT_COLOR, add_legend, legend_font

WRONG_COLOR = (255, 0, 0)
IGNORED_COLOR = (160, 160, 160)  # lighter than any dimmed photo pixel (at most 255 * RIGHT_DIMMING = 89)
RIGHT_DIMMING = 0.35  # right pixels show the photo at 35% brightness, so the red stands out
ANNOTATE_UP_TO = 20  # classes; a bigger matrix has cells too small for numbers


# ---------------------------------------------------------------- per-image scores


@dataclass(frozen=True)
class ScoredImage:
    """One evaluated image: its place in the data set, its scores and its label maps."""

    index: int
    mean_iu: float  # over the classes present in its ground truth or prediction
    pixel_error: float  # fraction of its labelled pixels predicted wrong
    truth: np.ndarray  # (H, W) class indices, the ignore index where void
    prediction: np.ndarray  # (H, W) class indices


def image_confusion(truth: np.ndarray, prediction: np.ndarray, *, num_classes: int,
                    ignore_index: int = 255) -> np.ndarray:
    """``(K, K)`` int64 counts of (true class, predicted class) pairs of one image, ignored pixels left out."""
    keep = truth != ignore_index
    flat = truth[keep].astype(np.int64) * num_classes + prediction[keep].astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iu_of(confusion: np.ndarray) -> float:
    """Mean IU over the classes present in the truth or prediction of ``confusion``; NaN when it counts nothing."""
    diag = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - diag
    present = union > 0
    return float((diag[present] / union[present]).mean()) if present.any() else float("nan")


class PerImageScores:
    """``per_image(index, prediction, truth)`` callback of ``evaluate``: the summed confusion matrix and the
    ``keep`` images of lowest mean IU, with their label maps (as ``uint8`` when the labels fit)."""

    def __init__(self, *, num_classes: int, ignore_index: int = 255, keep: int = 8) -> None:
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.keep = keep
        self.confusion = np.zeros((num_classes, num_classes), np.int64)  # (true, predicted)
        self.num_images = 0
        self._heap: list[tuple[float, int, ScoredImage]] = []  # (-mean IU, -index): the best kept image on top
        self._dtype = np.uint8 if max(num_classes, ignore_index + 1) <= 256 and ignore_index >= 0 else np.int64

    def __call__(self, index: int, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        prediction_labels = prediction.cpu().numpy()  # (H, W)
        truth_labels = truth.cpu().numpy()  # (H, W)
        confusion = image_confusion(truth_labels, prediction_labels, num_classes=self.num_classes,
                                    ignore_index=self.ignore_index)
        self.confusion += confusion
        self.num_images += 1
        mean_iu = mean_iu_of(confusion)
        if math.isnan(mean_iu) or self.keep == 0:
            return
        key = (-mean_iu, -index)
        if len(self._heap) == self.keep and key <= self._heap[0][:2]:
            return  # no worse than the best kept image
        labelled = int(confusion.sum())
        scored = ScoredImage(
            index=index, mean_iu=mean_iu, pixel_error=1 - float(np.trace(confusion)) / labelled,
            truth=truth_labels.astype(self._dtype), prediction=prediction_labels.astype(self._dtype),
        )
        if len(self._heap) == self.keep:
            heapq.heapreplace(self._heap, (*key, scored))
        else:
            heapq.heappush(self._heap, (*key, scored))

    def worst(self) -> list[ScoredImage]:
        """The kept images, worst (lowest mean IU) first; ties: the earlier image first."""
        return [scored for _, _, scored in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]


@dataclass(frozen=True)
class WorstImage:
    """A scored image with its photo, ready to draw."""

    scored: ScoredImage
    photo: np.ndarray  # (H, W, 3) uint8 RGB, as read from its file
    name: str  # the photo's file stem
    source: str  # the photo's path


def attach_photos(worst: Sequence[ScoredImage], *, dataset) -> list[WorstImage]:
    """Each image's photo re-read from its file, ``dataset.samples[index][0]``, as the data set reads it (upright,
    ``rgb_pixels``): exact pixels whatever normalization the model takes."""
    if not hasattr(dataset, "samples"):
        raise ValueError(f"a report needs the photos' files: {type(dataset).__name__} has no samples list "
                         "(fcnseg's data sets keep (image path, mask path, ...) in dataset.samples)")
    images = []
    for scored in worst:
        path = Path(dataset.samples[scored.index][0])
        photo = read_image(path).permute(1, 2, 0).numpy()  # (H, W, 3)
        if photo.shape[:2] != scored.truth.shape:
            raise ValueError(f"photo {path} is {photo.shape[0]}x{photo.shape[1]} but was scored at "
                             f"{scored.truth.shape[0]}x{scored.truth.shape[1]}: a report needs native-size eval")
        images.append(WorstImage(scored=scored, photo=photo, name=path.stem, source=str(path)))
    return images


# ---------------------------------------------------------------- pictures


def error_map(photo: np.ndarray, *, truth: np.ndarray, prediction: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``(H, W, 3)`` uint8: wrong pixels ``WRONG_COLOR`` (red), ignored ones ``IGNORED_COLOR`` (grey), right ones
    the photo dimmed to ``RIGHT_DIMMING`` (never red: at most 89 in every channel)."""
    ignored = truth == ignore_index
    wrong = (truth != prediction) & ~ignored
    picture = np.round(photo.astype(np.float64) * RIGHT_DIMMING).astype(np.uint8)  # (H, W, 3)
    picture[ignored] = IGNORED_COLOR
    picture[wrong] = WRONG_COLOR
    return picture


def worst_panel(image: WorstImage, *, class_names: Sequence[str], palette: Sequence[tuple[int, int, int]],
                ignore_index: int = 255) -> Image.Image:
    """photo | ground truth | prediction | errors, each titled, with a legend of the classes in truth or prediction."""
    truth, prediction = image.scored.truth, image.scored.prediction
    tiles = [  # (title, short title for a narrow tile, picture)
        ("photo", "photo", Image.fromarray(image.photo)),
        ("ground truth", "truth",
         colorize(truth, palette, ignore_index=ignore_index, ignore_color=(0, 0, 0)).convert("RGB")),
        ("prediction", "pred.", colorize(prediction, palette, ignore_index=ignore_index).convert("RGB")),
        (f"wrong in red (mean IU {100 * image.scored.mean_iu:.0f}%)", "wrong",
         Image.fromarray(error_map(image.photo, truth=truth, prediction=prediction, ignore_index=ignore_index))),
    ]
    height, width = truth.shape
    size = max(12, min(32, height // 24))
    title_height = size + size // 2
    panel = Image.new("RGB", (4 * width, title_height + height), (255, 255, 255))
    font = legend_font(size)
    for column, (title, short_title, tile) in enumerate(tiles):
        strip = Image.new("RGB", (width, title_height), (255, 255, 255))  # clips a title to its tile
        draw = ImageDraw.Draw(strip)
        fits = draw.textlength(title, font=font) <= width - 4
        draw.text((2, size // 4), title if fits else short_title, fill=TEXT_COLOR, font=font)
        panel.paste(strip, (column * width, 0))
        panel.paste(tile, (column * width, title_height))
    both = np.concatenate([truth, prediction], axis=1)  # (H, 2W): the classes of either
    return add_legend(panel, both, class_names=class_names, palette=palette, font_size=size)


def row_normalized(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """The confusion matrix with each row (a true class) divided by its sum; a row without pixels stays 0."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)  # (K, 1)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_heatmap(confusion: np.ndarray | torch.Tensor, *, class_names: Sequence[str],
                      out_path: str | Path) -> Path:
    """``row_normalized(confusion)`` as a heatmap PNG with a colour bar; values in the cells up to 20 classes."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state; PNGs go through Agg

    fractions = row_normalized(confusion)
    num_classes = len(class_names)
    side = min(3.5 + 0.5 * num_classes, 24)
    figure = Figure(figsize=(side + 1.2, side))
    axis = figure.subplots()
    image = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    ticks = range(num_classes)
    axis.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (each row sums to 1)")
    if num_classes <= ANNOTATE_UP_TO:
        for row in range(num_classes):
            for column in range(num_classes):
                value = fractions[row, column]
                if value < 0.005:  # blank, not ".00": the few real confusions stand out
                    continue
                axis.text(column, row, f"{value:.2f}".lstrip("0") if value < 1 else "1", ha="center", va="center",
                          fontsize=9, color="white" if value > 0.5 else "black")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    return Path(out_path)


def per_class_iu_chart(per_class_iu: Sequence[float], *, mean_iu: float, class_names: Sequence[str],
                       palette: Sequence[tuple[int, int, int]], out_path: str | Path) -> Path:
    """Per-class IU (percent) as bars in the class colours, "n/a" where a class is absent, the mean IU dashed."""
    from matplotlib.figure import Figure

    values = [100 * iu if not math.isnan(iu) else 0.0 for iu in per_class_iu]
    colors = [tuple(channel / 255 for channel in palette[i]) for i in range(len(values))]
    figure = Figure(figsize=(min(3 + 0.6 * len(values), 30), 4.5))
    axis = figure.subplots()
    positions = range(len(values))
    axis.bar(positions, values, color=colors, edgecolor="black", linewidth=0.6)
    for position, iu in zip(positions, per_class_iu):
        axis.text(position, (100 * iu if not math.isnan(iu) else 0) + 1, "n/a" if math.isnan(iu) else f"{100 * iu:.0f}",
                  ha="center", va="bottom", fontsize=8)
    if not math.isnan(mean_iu):
        axis.axhline(100 * mean_iu, color="black", linestyle="--", linewidth=1, label=f"mean IU {100 * mean_iu:.1f}")
        axis.legend(loc="lower right")
    axis.set_xticks(positions, class_names, rotation=45, ha="right", rotation_mode="anchor")
    axis.set(ylim=(0, 105), ylabel="IU (%)", title="per-class IU")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    return Path(out_path)


# ---------------------------------------------------------------- the report folder


def write_report(out_dir: str | Path, *, confusion: np.ndarray | torch.Tensor, class_names: Sequence[str],
                 palette: Sequence[tuple[int, int, int]], worst: Sequence[WorstImage], scores: dict,
                 ignore_index: int = 255) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (made if missing); returns ``{"confusion", "per_class_iu",
    "report", "worst"}`` paths. ``scores`` is ``evaluate``'s result, ``worst`` worst first."""
    out_dir = Path(out_dir)
    worst_dir = out_dir / "worst"
    worst_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "confusion": confusion_heatmap(confusion, class_names=class_names, out_path=out_dir / "confusion.png"),
        "per_class_iu": per_class_iu_chart(scores["per_class_iu"], mean_iu=scores["mean_iu"], class_names=class_names,
                                           palette=palette, out_path=out_dir / "per_class_iu.png"),
        "worst": worst_dir,
    }
    listed = []
    for rank, image in enumerate(worst, start=1):
        file_name = f"{rank:02d}_{image.name}.png"
        worst_panel(image, class_names=class_names, palette=palette, ignore_index=ignore_index).save(
            worst_dir / file_name)
        listed.append({"rank": rank, "file": f"worst/{file_name}", "image": image.source, "index": image.scored.index,
                       "mean_iu": image.scored.mean_iu, "pixel_error": image.scored.pixel_error})
    report = {
        "scores": scores,
        "class_names": list(class_names),
        "per_class_iu": [{"class": name, "iu": iu} for name, iu in zip(class_names, scores["per_class_iu"])],
        "confusion": np.asarray(confusion).tolist(),  # counts: rows true classes, columns predicted
        "worst_by": "per-image mean IU over the classes in its ground truth or prediction, lowest first",
        "worst": listed,
    }
    paths["report"] = out_dir / "report.json"
    paths["report"].write_text(json.dumps(_without_nan(report), indent=2) + "\n")
    return paths


def _without_nan(value):
    """``value`` with every NaN float as ``None``: strict JSON (``NaN`` is not JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value
