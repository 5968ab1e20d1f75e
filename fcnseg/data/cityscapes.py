"""Cityscapes fine annotations, labelIds mapped to the 19 train ids of the benchmark.

  root/leftImg8bit/{split}/<city>/<stem>_leftImg8bit.png
  root/gtFine/{split}/<city>/<stem>_gtFine_labelIds.png   ids 0-33 (cityscapesScripts `labels.py`)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.base import (
    DataError,
    DatasetInfo,
    PairTransform,
    SegmentationDataset,
    read_label_png,
    require_dir,
    require_files,
)
from fcnseg.data.palettes import CITYSCAPES_PALETTE

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_INFO = DatasetInfo(name="cityscapes", class_names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE)

# labelId -> trainId for the 19 evaluated classes; every other id (void, ground, parking, rail track,
# guard rail, bridge, tunnel, polegroup, caravan, trailer, ...) is ignored.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34  # ids 0-33 appear in *_gtFine_labelIds.png


def train_id_table(*, ignore_index: int = 255) -> np.ndarray:
    """Lookup table (NUM_LABEL_IDS,) from labelId to trainId."""
    table = np.full(NUM_LABEL_IDS, ignore_index, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


def cityscapes_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    image_root = require_dir(root / "leftImg8bit" / split, what="Cityscapes leftImg8bit")
    mask_root = require_dir(root / "gtFine" / split, what="Cityscapes gtFine")
    samples = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        samples.append((image, mask_root / image.parent.name / f"{stem}_gtFine_labelIds.png"))
    return samples


class CityscapesDataset(SegmentationDataset):
    """Cityscapes: `(Image uint8 (3, H, W), Mask int64 (H, W))`, train ids 0-18 and 255 (ignore)."""

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        root = require_dir(Path(root), what="Cityscapes root")
        samples = cityscapes_samples(root, split)
        require_files((mask for _, mask in samples), what="Cityscapes gtFine labelIds")
        source = str(root / "leftImg8bit" / split)
        super().__init__(samples=samples, info=CITYSCAPES_INFO, transforms=transforms, source=source)
        self.table = train_id_table(ignore_index=self.info.ignore_index)

    def load_mask(self, path: Path) -> np.ndarray:
        label_ids = read_label_png(path)
        if label_ids.size and label_ids.max() >= NUM_LABEL_IDS:
            raise DataError(
                f"mask {path} holds label id {int(label_ids.max())}, outside the Cityscapes labelIds 0-"
                f"{NUM_LABEL_IDS - 1} (is it a *_labelTrainIds or *_color image?)"
            )
        return self.table[label_ids]


def build_cityscapes(
    root: str | Path, split: str, *, transforms: PairTransform | None = None
) -> CityscapesDataset:
    return CityscapesDataset(root, split, transforms=transforms)
