"""SIFT Flow (Liu et al.), with the reference's two labelings of every image (siftflow_layers.py).

  root/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
  root/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat   `S`: 0 void, 1-33 classes
  root/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat        `S`: -1 (or 0) void, 1-3
  root/{trainval,test}.txt   the reference's split lists (data/sift-flow), which leave out the unannotated images

Both labelings are shifted to start at 0, with void mapped to the ignore index 255. The reference's models
subtract their own mean, (114.578, 115.294, 108.353) BGR: normalization "caffe-siftflow".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torchvision import tv_tensors

from fcnseg.data.base import (
    DataError,
    DatasetInfo,
    PairTransform,
    SegmentationDataset,
    check_labels,
    check_size,
    read_image,
    read_list,
    read_mat,
    require_dir,
    require_files,
    to_mask,
)
from fcnseg.data.palettes import generated_palette

SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"

SEMANTIC_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand", "sea",
    "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
)
GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")
# Absent from the test set, so the paper leaves them out of the semantic scores.
SEMANTIC_CLASSES_NOT_IN_TEST = ("cow", "desert", "moon")

SIFTFLOW_INFO = DatasetInfo(
    name="siftflow", class_names=SEMANTIC_CLASSES, palette=generated_palette(len(SEMANTIC_CLASSES))
)
SIFTFLOW_GEOMETRIC_INFO = DatasetInfo(
    name="siftflow-geometric", class_names=GEOMETRIC_CLASSES, palette=generated_palette(len(GEOMETRIC_CLASSES))
)


def read_siftflow_labels(path: Path, *, ignore_index: int = 255) -> np.ndarray:
    """A SIFT Flow label .mat (`S`, 1-based, void <= 0) as 0-based labels with void -> `ignore_index`."""
    raw = np.asarray(read_mat(path, "S"))
    if raw.ndim != 2:
        raise DataError(f".mat file {path}: label map `S` should be (H, W), got shape {raw.shape}")
    raw = raw.astype(np.int64)
    return np.where(raw <= 0, ignore_index, raw - 1)


class SIFTFlowDataset(SegmentationDataset):
    """SIFT Flow: `(Image uint8 (3, H, W), (semantic Mask int64 (H, W), geometric Mask int64 (H, W)))`.

    Semantic labels 0-32, geometric 0-2 (sky, horizontal, vertical), void 255 in both. `info` describes the
    semantic labels, `geometric_info` the geometric ones. `transforms(image, (semantic, geometric))`.
    """

    geometric_info = SIFTFLOW_GEOMETRIC_INFO

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        root = require_dir(Path(root), what="SIFT Flow root")
        image_dir = require_dir(root / "Images" / SUBDIR, what="SIFT Flow Images")
        semantic_dir = require_dir(root / "SemanticLabels" / SUBDIR, what="SIFT Flow SemanticLabels")
        geometric_dir = require_dir(root / "GeoLabels" / SUBDIR, what="SIFT Flow GeoLabels")
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(
                f"missing list file: {list_file} (copy trainval.txt / test.txt from the reference's "
                "data/sift-flow folder)"
            )
        samples = [
            (image_dir / f"{image_id}.jpg", semantic_dir / f"{image_id}.mat", geometric_dir / f"{image_id}.mat")
            for image_id in read_list(list_file)
        ]
        require_files((sample[0] for sample in samples), what="SIFT Flow image")
        require_files((sample[1] for sample in samples), what="SIFT Flow semantic label")
        require_files((sample[2] for sample in samples), what="SIFT Flow geometric label")
        super().__init__(samples=samples, info=SIFTFLOW_INFO, transforms=transforms, source=str(list_file))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, semantic_path, geometric_path = self.samples[index]
        image = read_image(image_path)
        masks = []
        for path, info in ((semantic_path, self.info), (geometric_path, self.geometric_info)):
            labels = read_siftflow_labels(path, ignore_index=info.ignore_index)
            check_size(mask=labels, image_size=tuple(image.shape[-2:]), mask_path=path, image_path=image_path)
            check_labels(labels, info=info, path=path)
            masks.append(to_mask(labels))
        targets = (masks[0], masks[1])
        if self.transforms is not None:
            return self.transforms(tv_tensors.Image(image), targets)
        return tv_tensors.Image(image), targets


def build_siftflow(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> SIFTFlowDataset:
    return SIFTFlowDataset(root, split, transforms=transforms)
