"""Class counts of the data sets, without reading their files where the data set fixes them."""

from __future__ import annotations

from pathlib import Path

FIXED_NUM_CLASSES = {
    "voc": 21, "sbd": 21, "camvid": 11, "cityscapes": 19, "siftflow": 33, "nyud": 40, "pascal-context": 60,
}


def num_classes_of(dataset: str, root: str | Path) -> int:
    """The number of classes a model for ``dataset`` needs (a folder data set reads its classes.txt)."""
    if dataset in FIXED_NUM_CLASSES:
        return FIXED_NUM_CLASSES[dataset]
    if dataset == "folder":
        from fcnseg.data.folder import folder_info

        return folder_info(Path(root), num_classes=None).num_classes
    raise ValueError(f"unknown dataset {dataset!r}")
