"""Class weights for the cross-entropy, from the training masks' pixel counts, cached in the run folder.

Two rules, both over labelled pixels only (void, the ignore index, is left out of every count):

- ``median_frequency`` (SegNet, Badrinarayanan et al. 2017; Eigen and Fergus 2015): ``w_c = median(f) / f_c`` with
  ``f_c`` = pixels of class c / labelled pixels of the images in which class c appears; the median is over the
  classes that appear. A class that never appears gets weight 0 (it is never a target, so its weight never
  enters the loss).
- ``enet`` (ENet, Paszke et al. 2016): ``w_c = 1 / ln(1.02 + p_c)`` with ``p_c`` = the class's share of all
  labelled pixels; a class that never appears gets ``1 / ln(1.02)``, the largest weight (again never used).

``cached_class_weights`` computes them once and keeps them, with the counts and a key naming the data set, root,
splits and rule, in a small JSON file (``out/class_weights.json``): a run and its ``--resume`` use the same
weights, and a cache whose key differs is recomputed, never used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ClassStatistics:
    """Pixel counts over a set of label maps, per class (labelled pixels only)."""

    class_pixels: tuple[int, ...]  # pixels of class c
    image_pixels: tuple[int, ...]  # labelled pixels of the images in which class c appears
    num_images: int


def class_pixel_counts(labels: np.ndarray | torch.Tensor, *, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels of each class in one label map ``(H, W)``: ``(num_classes,)`` int64; ``ignore_index`` skipped."""
    labels = np.asarray(labels).ravel()
    labels = labels[labels != ignore_index]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}) and the ignore index {ignore_index}")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_statistics(per_image_counts: Iterable[np.ndarray], *, num_classes: int) -> ClassStatistics:
    """``ClassStatistics`` from each image's ``class_pixel_counts``."""
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    num_images = 0
    for counts in per_image_counts:
        counts = np.asarray(counts, np.int64)
        class_pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
        num_images += 1
    return ClassStatistics(tuple(class_pixels.tolist()), tuple(image_pixels.tolist()), num_images)


def median_frequency_weights(statistics: ClassStatistics) -> list[float]:
    """SegNet's median frequency balancing; 0 for classes that never appear."""
    pixels = np.asarray(statistics.class_pixels, np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("no labelled pixels in the training masks: no class weights")
    frequency = pixels[present] / np.asarray(statistics.image_pixels, np.float64)[present]
    weights = np.zeros_like(pixels)
    weights[present] = np.median(frequency) / frequency
    return weights.tolist()


def enet_weights(statistics: ClassStatistics, *, c: float = 1.02) -> list[float]:
    """ENet's ``1 / ln(c + p_class)``, ``p_class`` the class's share of the labelled pixels."""
    pixels = np.asarray(statistics.class_pixels, np.float64)
    if pixels.sum() == 0:
        raise ValueError("no labelled pixels in the training masks: no class weights")
    return [1.0 / math.log(c + share) for share in (pixels / pixels.sum()).tolist()]


RULES: dict[str, Callable[[ClassStatistics], list[float]]] = {
    "median_frequency": median_frequency_weights,
    "enet": enet_weights,
}


def cached_class_weights(
    *, path: Path, key: dict, rule: str, per_image_counts: Callable[[], Iterable[np.ndarray]], num_classes: int
) -> list[float]:
    """The weights of ``rule`` (a key of ``RULES``): read from ``path`` when its key equals ``key`` (which should
    name the data set, root, splits and rule), else computed from ``per_image_counts()`` and written there."""
    key = json.loads(json.dumps(dict(key, rule=rule, num_classes=num_classes)))  # as read back: lists, not tuples
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return [float(w) for w in cached["weights"]]
    statistics = class_statistics(per_image_counts(), num_classes=num_classes)
    weights = RULES[rule](statistics)
    record = {"key": key, "weights": weights, "class_pixels": list(statistics.class_pixels),
              "image_pixels": list(statistics.image_pixels), "num_images": statistics.num_images}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)  # atomically: a killed run never leaves half a cache
    return weights
