"""The explicit name -> builder table behind ``fcnseg models`` and ``--model`` (no registry)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.vgg import FCN8s, FCN8sAtOnce, FCN16s, FCN32s


def _alexnet_torchvision(*, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3) -> FCNAlexNet:
    return FCNAlexNet(
        num_classes=num_classes, layout="torchvision", learnable_upsampling=learnable_upsampling, in_channels=in_channels
    )


MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "fcn8s-atonce": FCN8sAtOnce,
    "fcn-alexnet": FCNAlexNet,
    "fcn-alexnet-tv": _alexnet_torchvision,
}

MODEL_DESCRIPTIONS: dict[str, str] = {
    "fcn32s": "VGG16, stride-32 scores upsampled 32x (voc-fcn32s)",
    "fcn16s": "VGG16, + pool4 skip, 16x (voc-fcn16s)",
    "fcn8s": "VGG16, + pool4 and pool3 skips, 8x (voc-fcn8s)",
    "fcn8s-atonce": "VGG16 FCN-8s with scaled skips, trained in one stage (voc-fcn8s-atonce)",
    "fcn-alexnet": "CaffeNet layout (groups, LRN), 32x (voc-fcn-alexnet)",
    "fcn-alexnet-tv": "torchvision AlexNet layout, 32x",
}


def build_model(name: str, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3) -> nn.Module:
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](
        num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels
    )
