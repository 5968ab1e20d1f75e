"""PASCAL VOC 2011/2012 segmentation, the SBD extra annotations, and the paper's train/val split.

The reference (fcn.berkeleyvision.org, `data/pascal/README.md`) trains on the 8,498 images of SBD `train`
(`sbd_train_ids`, or `SBDDataset(sbd_root, "train")`) and validates on `seg11valid`: the 736 images of VOC2011
segmentation `val` that are not in SBD `train` (`seg11valid_ids`, or `VOCDataset(voc2011_root, "seg11valid",
sbd_root=sbd_root)`). VOC2011 `val` itself intersects SBD `train`, so scoring on it would score training images.

Layouts, as shipped:
  VOC: root/JPEGImages/<id>.jpg, root/SegmentationClass/<id>.png (palette PNG: 0-20, 255 = border/ignore),
       root/ImageSets/Segmentation/{train,val,trainval}.txt
  SBD (the `dataset` folder of benchmark.tgz): root/img/<id>.jpg, root/cls/<id>.mat
       (`GTcls.Segmentation`, uint8 0-20), root/{train,val}.txt
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
from fcnseg.data.palettes import voc_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

VOC_INFO = DatasetInfo(name="voc", class_names=VOC_CLASSES, palette=voc_palette(len(VOC_CLASSES)))
SBD_INFO = DatasetInfo(name="sbd", class_names=VOC_CLASSES, palette=voc_palette(len(VOC_CLASSES)))


def voc_split_file(voc_root: str | Path, split: str) -> Path:
    return Path(voc_root) / "ImageSets" / "Segmentation" / f"{split}.txt"


def sbd_train_ids(sbd_root: str | Path) -> list[str]:
    """The reference's training set: SBD `train` (8,498 images in the real data)."""
    return read_list(Path(sbd_root) / "train.txt")


def seg11valid_ids(voc_root: str | Path, sbd_root: str | Path) -> list[str]:
    """The paper's validation set: VOC2011 segmentation `val` minus SBD `train`, in VOC's order.

    `voc_root` is the VOC2011 folder (its `val.txt` has 1,111 ids; 736 remain for the real SBD).
    """
    sbd_train = set(sbd_train_ids(sbd_root))
    return [image_id for image_id in read_list(voc_split_file(voc_root, "val")) if image_id not in sbd_train]


def _voc_ids(root: Path, split: str, sbd_root: str | Path | None) -> tuple[list[str], str]:
    """Image ids of `split` and where they came from (for messages)."""
    list_file = voc_split_file(root, split)
    if split == "seg11valid" and sbd_root is not None:
        return seg11valid_ids(root, sbd_root), f"{voc_split_file(root, 'val')} minus {Path(sbd_root) / 'train.txt'}"
    if split == "seg11valid" and not list_file.is_file():
        raise DataError(
            f"missing list file: {list_file}; pass sbd_root= to compute seg11valid from VOC2011 val.txt and "
            "SBD train.txt, or copy seg11valid.txt from the reference's data/pascal folder there"
        )
    return read_list(list_file), str(list_file)


class VOCDataset(SegmentationDataset):
    """PASCAL VOC segmentation: `(Image uint8 (3, H, W), Mask int64 (H, W))`, labels 0-20 and 255 (ignore).

    `split` is a list in `ImageSets/Segmentation` (train, val, trainval, ...) or `"seg11valid"`, computed from
    `sbd_root` when given, else read from `ImageSets/Segmentation/seg11valid.txt`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transforms: PairTransform | None = None,
        sbd_root: str | Path | None = None,
    ) -> None:
        root = require_dir(Path(root), what="VOC root")
        image_dir = require_dir(root / "JPEGImages", what="VOC JPEGImages")
        mask_dir = require_dir(root / "SegmentationClass", what="VOC SegmentationClass")
        ids, source = _voc_ids(root, split, sbd_root)
        samples = [(image_dir / f"{image_id}.jpg", mask_dir / f"{image_id}.png") for image_id in ids]
        require_files((image for image, _ in samples), what="VOC image")
        require_files((mask for _, mask in samples), what="VOC mask")
        super().__init__(samples=samples, info=VOC_INFO, transforms=transforms, source=source)


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class label map of an SBD `cls/<id>.mat`: `GTcls.Segmentation`, (H, W) uint8."""
    gt = read_mat(path, "GTcls")
    try:
        labels = gt[0]["Segmentation"][0]
    except (IndexError, KeyError, ValueError, TypeError) as error:
        raise DataError(f".mat file {path} has no GTcls.Segmentation label map: {error}") from error
    return np.asarray(labels).astype(np.uint8)


class SBDDataset(SegmentationDataset):
    """SBD (Hariharan et al.) class labels of VOC images: `(Image uint8 (3, H, W), Mask int64 (H, W))`, 0-20."""

    def __init__(self, root: str | Path, split: str, *, transforms: PairTransform | None = None) -> None:
        root = require_dir(Path(root), what="SBD root")
        image_dir = require_dir(root / "img", what="SBD img")
        mask_dir = require_dir(root / "cls", what="SBD cls")
        list_file = root / f"{split}.txt"
        ids = read_list(list_file)
        samples = [(image_dir / f"{image_id}.jpg", mask_dir / f"{image_id}.mat") for image_id in ids]
        require_files((image for image, _ in samples), what="SBD image")
        require_files((mask for _, mask in samples), what="SBD label")
        super().__init__(samples=samples, info=SBD_INFO, transforms=transforms, source=str(list_file))

    def load_mask(self, path: Path) -> np.ndarray:
        return read_sbd_mat(path)


def build_voc(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> VOCDataset:
    return VOCDataset(root, split, transforms=transforms)


def build_sbd(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> SBDDataset:
    return SBDDataset(root, split, transforms=transforms)
