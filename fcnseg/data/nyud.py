"""NYUDv2 with the 40-class task of Gupta et al., in the layout of their data.tgz (nyud_layers.py).

  root/data/images/img_<id>.png   colour
  root/data/depth/img_<id>.png    depth, 16-bit (millimetres)
  root/data/hha/img_<id>.png      HHA encoding of depth (Gupta et al. ECCV14), 3 channels
  root/segmentation/img_<id>.mat  `segmentation`: 0 void, 1-40 classes
  root/{train,val,trainval,test}.txt   the reference's split lists (data/nyud), ids like 5449

Labels are shifted to 0-39 with void mapped to the ignore index 255. `normalize_nyud` is the reference's
input convention for all three modalities; use it as the `normalization` of `fcnseg.data.transforms`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from fcnseg.data.base import (
    PIL_ERRORS,
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
from fcnseg.data.transforms import normalize

NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
    "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
    "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
NYUD_INFO = DatasetInfo(name="nyud", class_names=NYUD_CLASSES, palette=generated_palette(len(NYUD_CLASSES)))

MODALITIES = ("color", "depth", "hha")
MODALITY_FOLDERS = {"color": "images", "depth": "depth", "hha": "hha"}

# The reference's means: colour in BGR order, HHA in file order, log depth.
HHA_MEAN = (132.431, 94.076, 118.477)
LOG_DEPTH_MEAN = 7.844


def read_depth(path: Path) -> torch.Tensor:
    """A single-channel depth PNG as float32 (1, H, W), in the file's units."""
    try:
        with Image.open(path) as image:
            depth = np.array(ImageOps.exif_transpose(image), dtype=np.float32)  # upright, as read_image
    except PIL_ERRORS as error:
        raise DataError(f"cannot read depth image {path}: {error}") from error
    if depth.ndim != 2:
        raise DataError(f"depth image {path} should have one channel, got shape {depth.shape}")
    return torch.from_numpy(depth)[None]  # (1, H, W)


def read_nyud_labels(path: Path, *, ignore_index: int = 255) -> np.ndarray:
    raw = np.asarray(read_mat(path, "segmentation")).astype(np.int64)
    return np.where(raw <= 0, ignore_index, raw - 1)


def normalize_nyud(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's input convention: colour BGR minus its mean, HHA minus its mean, log(depth) minus its mean."""
    out = {}
    if "color" in inputs:
        out["color"] = normalize(inputs["color"], "caffe-nyud")
    if "hha" in inputs:
        hha = inputs["hha"].as_subclass(torch.Tensor).to(torch.float32)
        out["hha"] = hha - torch.tensor(HHA_MEAN, device=hha.device).view(3, 1, 1)
    if "depth" in inputs:
        depth = inputs["depth"].as_subclass(torch.Tensor).to(torch.float32)
        out["depth"] = depth.clamp(min=1.0).log() - LOG_DEPTH_MEAN  # clamp: padding and holes are 0
    return out


class NYUDDataset(SegmentationDataset):
    """NYUDv2: `(inputs, Mask int64 (H, W))`, labels 0-39 and 255 (void).

    `inputs` holds the chosen `modalities`: "color" Image uint8 (3, H, W), "depth" Image float32 (1, H, W),
    "hha" Image uint8 (3, H, W). Each sample is (color, depth, hha, label) paths.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transforms: PairTransform | None = None,
        modalities: tuple[str, ...] = ("color",),
    ) -> None:
        unknown = [name for name in modalities if name not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        root = require_dir(Path(root), what="NYUDv2 root")
        label_dir = require_dir(root / "segmentation", what="NYUDv2 segmentation")
        folders = {
            name: require_dir(root / "data" / MODALITY_FOLDERS[name], what=f"NYUDv2 {name}") for name in modalities
        }
        list_file = root / f"{split}.txt"
        ids = read_list(list_file)
        samples = [
            tuple(root / "data" / MODALITY_FOLDERS[name] / f"img_{image_id}.png" for name in MODALITIES)
            + (label_dir / f"img_{image_id}.mat",)
            for image_id in ids
        ]
        for name in folders:
            require_files((sample[MODALITIES.index(name)] for sample in samples), what=f"NYUDv2 {name}")
        require_files((sample[-1] for sample in samples), what="NYUDv2 label")
        super().__init__(samples=samples, info=NYUD_INFO, transforms=transforms, source=str(list_file))
        self.modalities = tuple(modalities)

    def load_inputs(self, index: int) -> dict[str, tv_tensors.Image]:
        sample = self.samples[index]
        inputs = {}
        for name in self.modalities:
            path = sample[MODALITIES.index(name)]
            inputs[name] = tv_tensors.Image(read_depth(path) if name == "depth" else read_image(path))
        return inputs

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        inputs = self.load_inputs(index)
        label_path = self.samples[index][-1]
        labels = read_nyud_labels(label_path, ignore_index=self.info.ignore_index)
        for name, tensor in inputs.items():
            image_path = self.samples[index][MODALITIES.index(name)]
            check_size(mask=labels, image_size=tuple(tensor.shape[-2:]), mask_path=label_path, image_path=image_path)
        check_labels(labels, info=self.info, path=label_path)
        if self.transforms is not None:
            return self.transforms(inputs, to_mask(labels))
        return inputs, to_mask(labels)


def build_nyud(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> NYUDDataset:
    return NYUDDataset(root, split, transforms=transforms)
