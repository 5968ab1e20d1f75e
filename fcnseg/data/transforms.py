"""Joint image/mask transforms (torchvision.transforms.v2) and the two input normalizations.

Masks are `tv_tensors.Mask`, so v2 only ever resizes them with NEAREST and pads them with the ignore label.
A transform takes `(image, target)` as the datasets return them: image a uint8 `tv_tensors.Image` (3, H, W) or,
for NYUDv2, a dict of Images; target a `tv_tensors.Mask` (H, W) or, for SIFT Flow, a tuple of Masks. It returns
plain tensors: image float32 (3, H, W) (or a dict of them), target int64 (H, W) (or a tuple).

Normalizations (`NORMALIZATIONS`):
  "caffe"     the reference's convention (voc_layers.py): RGB -> BGR, float 0-255, minus the ILSVRC mean
              (104.00699, 116.66877, 122.67892) in BGR order; for weights converted from the reference models.
  "imagenet"  torchvision's: RGB, /255, minus (0.485, 0.456, 0.406), over (0.229, 0.224, 0.225).
  "caffe-siftflow", "caffe-nyud": the "caffe" convention with the means the reference uses for those sets.
  "lite"      EfficientNet-Lite's (TensorFlow's efficientnet_lite_builder): RGB, 0-255, (x - 127) / 128.
`normalization` may also be a callable applied to the image as is (see `fcnseg.data.nyud.normalize_nyud`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class Normalization:
    """x = (image[channels] / scale - mean) / std, with channels flipped to BGR when `bgr`."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    bgr: bool


CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS: dict[str, Normalization] = {
    "caffe": Normalization(mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0), scale=1.0, bgr=True),
    "imagenet": Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=255.0, bgr=False),
    "caffe-siftflow": Normalization(mean=(114.578, 115.294, 108.353), std=(1.0, 1.0, 1.0), scale=1.0, bgr=True),
    "caffe-nyud": Normalization(mean=(116.190, 97.203, 92.318), std=(1.0, 1.0, 1.0), scale=1.0, bgr=True),
    "lite": Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=1.0, bgr=False),
}

NormalizationArg = str | Callable[[Any], Any]


def get_normalization(name: str) -> Normalization:
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; expected one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


def _stats(spec: Normalization, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=like.device).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=like.device).view(3, 1, 1)
    return mean, std


def normalize(image: torch.Tensor, normalization: str) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> float32 (..., 3, H, W) model input."""
    spec = get_normalization(normalization)
    pixels = image.as_subclass(torch.Tensor).to(torch.float32)
    if spec.bgr:
        pixels = pixels.flip(-3)  # RGB -> BGR
    mean, std = _stats(spec, pixels)
    return (pixels / spec.scale - mean) / std


def denormalize(image: torch.Tensor, normalization: str) -> torch.Tensor:
    """Inverse of `normalize` for visualization: float32 (..., 3, H, W) -> uint8 RGB (..., 3, H, W)."""
    spec = get_normalization(normalization)
    mean, std = _stats(spec, image)
    pixels = (image.as_subclass(torch.Tensor).to(torch.float32) * std + mean) * spec.scale
    if spec.bgr:
        pixels = pixels.flip(-3)  # BGR -> RGB
    return pixels.round().clamp(0, 255).to(torch.uint8)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from `scale_range`: images bilinear (antialiased), masks NEAREST."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = torch.empty(()).uniform_(*self.scale_range).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=InterpolationMode.NEAREST)
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True
        )


def _as_tv_image(image: Any) -> Any:
    if isinstance(image, dict):
        return {key: _as_tv_image(value) for key, value in image.items()}
    return image if isinstance(image, tv_tensors.TVTensor) else tv_tensors.Image(image)


def _as_tv_target(target: Any) -> Any:
    if isinstance(target, (tuple, list)):
        return tuple(_as_tv_target(mask) for mask in target)
    return target if isinstance(target, tv_tensors.Mask) else tv_tensors.Mask(target)


def _to_plain_target(target: Any) -> Any:
    if isinstance(target, tuple):
        return tuple(_to_plain_target(mask) for mask in target)
    return target.as_subclass(torch.Tensor).to(torch.int64)  # (H, W)


@dataclass(frozen=True)
class JointTransform:
    """spatial (image and target together) -> photometric (colour image only) -> normalization (image only)."""

    spatial: v2.Transform | None
    photometric: v2.Transform | None
    normalization: NormalizationArg

    def __call__(self, image: Any, target: Any) -> tuple[Any, Any]:
        image, target = _as_tv_image(image), _as_tv_target(target)
        if self.spatial is not None:
            image, target = self.spatial(image, target)
        if self.photometric is not None:
            if isinstance(image, dict):
                if "color" in image:
                    image = {**image, "color": self.photometric(image["color"])}
            else:
                image = self.photometric(image)
        if callable(self.normalization):
            image = self.normalization(image)
        else:
            image = normalize(image, self.normalization)
        return image, _to_plain_target(target)


def _check_normalization(normalization: NormalizationArg) -> None:
    if not callable(normalization):
        get_normalization(normalization)


def train_transforms(
    *,
    crop_size: int | None,
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.0,
    hue_jitter: float = 0.0,
    normalization: NormalizationArg,
    ignore_index: int = 255,
) -> JointTransform:
    """Random scale, random crop (image padded with 0, mask with `ignore_index`), horizontal flip, colour jitter
    (brightness, contrast and saturation by up to `color_jitter`, hue by up to `hue_jitter` of a turn), then
    normalization.

    `crop_size=None` keeps whole images (the reference trains on whole images, batch size 1);
    `scale_range=None` keeps the native scale.
    """
    _check_normalization(normalization)
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))
    if crop_size is not None:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter < 0:
        raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
    if not 0 <= hue_jitter <= 0.5:
        raise ValueError(f"hue_jitter must be in [0, 0.5] (a fraction of the colour wheel), got {hue_jitter}")
    photometric = None
    if color_jitter > 0 or hue_jitter > 0:
        photometric = v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=hue_jitter)
    spatial = v2.Compose(steps) if steps else None
    return JointTransform(spatial=spatial, photometric=photometric, normalization=normalization)


def eval_transforms(*, normalization: NormalizationArg) -> JointTransform:
    """Whole image at its native size, only normalized (the reference scores whole images)."""
    _check_normalization(normalization)
    return JointTransform(spatial=None, photometric=None, normalization=normalization)
