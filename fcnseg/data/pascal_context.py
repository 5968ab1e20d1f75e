"""PASCAL-Context (Mottaghi et al.) in the 59-class task, as pascalcontext_layers.py builds it.

  root/VOC2010/JPEGImages/<id>.jpg, root/VOC2010/ImageSets/Main/{train,val}.txt   (VOC 2010 images and lists)
  context_root/labels.txt          the full labelling's "<id>: <name>" lines (ids 1-459)
  context_root/trainval/<id>.mat   `LabelMap`: full-labelling ids, (H, W)

`context_root` defaults to `root` (unpack the PASCAL-Context annotations next to VOC2010). The 59 task classes
are looked up by name (spaces removed) in labels.txt and become labels 1-59; every other pixel is label 0,
"background", as in the reference: 60 outputs, and 255 stays the ignore index though no pixel carries it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.base import (
    DataError,
    DatasetInfo,
    PairTransform,
    SegmentationDataset,
    read_list,
    read_mat,
    require_dir,
    require_files,
)
from fcnseg.data.palettes import generated_palette
from fcnseg.data.voc import VOC_CLASSES

# Model output order (the reference's data/pascal-context/classes-59.txt), after 0 = background.
CONTEXT_CLASSES = VOC_CLASSES + (  # the 20 VOC classes first, then 39 more
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform",
    "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track", "tree", "truck",
    "wall", "water", "window", "wood",
)
# Task names spelled differently in the full labelling.
FULL_LABEL_NAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}

CONTEXT_INFO = DatasetInfo(
    name="pascal-context", class_names=CONTEXT_CLASSES, palette=generated_palette(len(CONTEXT_CLASSES))
)


def read_full_labels(path: Path) -> dict[str, int]:
    """labels.txt as {name without spaces: full-labelling id}."""
    ids = {}
    for line_number, line in enumerate(read_list(path), start=1):
        number, separator, name = line.partition(":")
        if not separator or not number.strip().isdigit():
            raise DataError(f"{path} line {line_number}: expected '<id>: <name>', got {line!r}")
        ids[name.strip().replace(" ", "")] = int(number)
    return ids


def context_table(labels_file: Path) -> np.ndarray:
    """Lookup table from full-labelling id to task label (0 = background)."""
    full_ids = read_full_labels(labels_file)
    task_ids = {}
    for task_label, name in enumerate(CONTEXT_CLASSES[1:], start=1):
        full_name = FULL_LABEL_NAMES.get(name, name).replace(" ", "")
        if full_name not in full_ids:
            raise DataError(f"{labels_file} has no class {full_name!r} of the 59-class task")
        task_ids[full_ids[full_name]] = task_label
    table = np.zeros(max(full_ids.values()) + 1, dtype=np.uint8)
    for full_id, task_label in task_ids.items():
        table[full_id] = task_label
    return table


class PascalContextDataset(SegmentationDataset):
    """PASCAL-Context 59: `(Image uint8 (3, H, W), Mask int64 (H, W))`, labels 0 (background) to 59."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transforms: PairTransform | None = None,
        context_root: str | Path | None = None,
    ) -> None:
        voc_dir = require_dir(Path(root) / "VOC2010", what="VOC2010")
        image_dir = require_dir(voc_dir / "JPEGImages", what="VOC2010 JPEGImages")
        context_root = require_dir(Path(root if context_root is None else context_root), what="PASCAL-Context")
        label_dir = require_dir(context_root / "trainval", what="PASCAL-Context trainval")
        labels_file = context_root / "labels.txt"
        if not labels_file.is_file():
            raise DataError(f"missing label list file: {labels_file}")
        list_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        ids = read_list(list_file)
        samples = [(image_dir / f"{image_id}.jpg", label_dir / f"{image_id}.mat") for image_id in ids]
        require_files((image for image, _ in samples), what="VOC2010 image")
        require_files((label for _, label in samples), what="PASCAL-Context label")
        super().__init__(samples=samples, info=CONTEXT_INFO, transforms=transforms, source=str(list_file))
        self.table = context_table(labels_file)

    def load_mask(self, path: Path) -> np.ndarray:
        full = np.asarray(read_mat(path, "LabelMap")).astype(np.int64)
        labels = np.zeros(full.shape, dtype=np.uint8)  # unknown ids stay background, as in the reference
        known = (full >= 0) & (full < len(self.table))
        labels[known] = self.table[full[known]]
        return labels


def build_pascal_context(
    root: str | Path, split: str, *, transforms: PairTransform | None = None
) -> PascalContextDataset:
    return PascalContextDataset(root, split, transforms=transforms)
