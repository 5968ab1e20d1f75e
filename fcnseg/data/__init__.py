"""Segmentation data sets (one module each), joint transforms and palettes.

`build_dataset("voc", root=..., split="train")` picks a builder from `DATASET_BUILDERS`; every builder is
`build(root, split, *, transforms=None) -> SegmentationDataset`. Data-set-specific options (VOC's `sbd_root`,
NYUDv2's `modalities`, the folder's `num_classes`, PASCAL-Context's `context_root`) are arguments of the
data set classes themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fcnseg.data.base import DataError, DatasetInfo, PairTransform, SegmentationDataset
from fcnseg.data.camvid import CamVidDataset, build_camvid
from fcnseg.data.cityscapes import CityscapesDataset, build_cityscapes
from fcnseg.data.folder import FolderDataset, build_folder
from fcnseg.data.nyud import NYUDDataset, build_nyud, normalize_nyud
from fcnseg.data.palettes import colorize, generated_palette, voc_palette
from fcnseg.data.pascal_context import PascalContextDataset, build_pascal_context
from fcnseg.data.siftflow import SIFTFlowDataset, build_siftflow
from fcnseg.data.transforms import JointTransform, denormalize, eval_transforms, normalize, train_transforms
from fcnseg.data.voc import SBDDataset, VOCDataset, build_sbd, build_voc, sbd_train_ids, seg11valid_ids

DatasetBuilder = Callable[..., SegmentationDataset]

DATASET_BUILDERS: dict[str, DatasetBuilder] = {
    "voc": build_voc,
    "sbd": build_sbd,
    "camvid": build_camvid,
    "cityscapes": build_cityscapes,
    "siftflow": build_siftflow,
    "nyud": build_nyud,
    "pascal-context": build_pascal_context,
    "folder": build_folder,
}


def build_dataset(
    name: str, *, root: str | Path, split: str, transforms: PairTransform | None = None
) -> SegmentationDataset:
    """The data set `name` (a key of DATASET_BUILDERS) at `root`, split `split`."""
    if name not in DATASET_BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASET_BUILDERS)}")
    return DATASET_BUILDERS[name](root, split, transforms=transforms)


__all__ = [
    "DATASET_BUILDERS",
    "CamVidDataset",
    "CityscapesDataset",
    "DataError",
    "DatasetInfo",
    "FolderDataset",
    "JointTransform",
    "NYUDDataset",
    "PascalContextDataset",
    "SBDDataset",
    "SIFTFlowDataset",
    "SegmentationDataset",
    "VOCDataset",
    "build_dataset",
    "colorize",
    "denormalize",
    "eval_transforms",
    "generated_palette",
    "normalize",
    "normalize_nyud",
    "sbd_train_ids",
    "seg11valid_ids",
    "train_transforms",
    "voc_palette",
]
