"""CamVid in SegNet's 360x480, 11-class layout.

  root/{split}/<name>.png        RGB frames
  root/{split}annot/<name>.png   grayscale labels 0-10, 11 = void (mapped to the ignore index 255)
  root/{split}.txt               optional; lines "IMAGE_PATH LABEL_PATH". SegNet's own lists hold absolute paths
                                 (/SegNet/CamVid/train/0001TP_006690.png ...), so files are found by base name in
                                 the split folders. Without the list, the split folder is listed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from fcnseg.data.base import (
    DataError,
    DatasetInfo,
    PairTransform,
    SegmentationDataset,
    read_label_png,
    read_list,
    require_dir,
    require_files,
)
from fcnseg.data.palettes import CAMVID_PALETTE

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
CAMVID_VOID = 11  # "Unlabelled" in the annotation PNGs
CAMVID_INFO = DatasetInfo(name="camvid", class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE)


def _base_name(path_text: str) -> str:
    return PurePosixPath(path_text.replace("\\", "/")).name


def camvid_samples(root: Path, split: str) -> tuple[list[tuple[Path, Path]], str]:
    """(image, label) paths of `split` and where the list came from."""
    image_dir = require_dir(root / split, what=f"CamVid {split}")
    mask_dir = require_dir(root / f"{split}annot", what=f"CamVid {split}annot")
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        images = sorted(image_dir.glob("*.png"))
        return [(image, mask_dir / image.name) for image in images], str(image_dir)
    samples = []
    for line_number, line in enumerate(read_list(list_file), start=1):
        fields = line.split()
        if len(fields) not in (1, 2):
            raise DataError(f"{list_file} line {line_number}: expected 'IMAGE_PATH LABEL_PATH', got {line!r}")
        image_name = _base_name(fields[0])
        mask_name = _base_name(fields[-1])
        samples.append((image_dir / image_name, mask_dir / mask_name))
    return samples, str(list_file)


class CamVidDataset(SegmentationDataset):
    """CamVid: `(Image uint8 (3, H, W), Mask int64 (H, W))`, labels 0-10 and 255 (void)."""

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        root = require_dir(Path(root), what="CamVid root")
        samples, source = camvid_samples(root, split)
        require_files((image for image, _ in samples), what="CamVid image")
        require_files((mask for _, mask in samples), what="CamVid label")
        super().__init__(samples=samples, info=CAMVID_INFO, transforms=transforms, source=source)

    def load_mask(self, path: Path) -> np.ndarray:
        labels = read_label_png(path)
        return np.where(labels == CAMVID_VOID, self.info.ignore_index, labels)


def build_camvid(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> CamVidDataset:
    return CamVidDataset(root, split, transforms=transforms)
