"""ImageNet backbones behind one small interface, for FCN heads on any of them (``fcnseg.models.backbone_fcn``).

A backbone is an ``nn.Module`` with

  ``forward((N, 3, H, W)) -> (f8, f16, f32)``  features at strides 8, 16 and 32 (H and W multiples of 32);
  ``feature_channels: tuple[int, int, int]``   their channels;
  ``cell_centres: tuple[float, float, float]`` geometry: cell ``i`` of the stride-``s`` map is centred on
                                                input pixel ``s * i + cell_centres[k]`` (receptive-field centre);
  ``normalization: str``                       input convention (``fcnseg.data.transforms.NORMALIZATIONS``).

Geometry. A layer with kernel ``k``, stride 2 and padding ``p`` before maps output ``i`` to input
``2 i + (k - 1) / 2 - p``. Symmetric padding (``p = (k - 1) / 2``: ResNet's convolutions and 3x3/2 max
pool) gives ``s * i``; VGG's 2x2/2 pools give ``s * i + (s - 1) / 2``; TensorFlow "same" padding on even sizes
(EfficientNet-Lite) gives ``s * i + s - 1``.

torchvision backbones keep torchvision's parameter names (less the classifier), so a torchvision state dict
loads as is: ``weights`` may be a local ``.pth`` path (offline), a state dict, or a torchvision weights enum
(downloads when online).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from fcnseg.models.efficientnet_lite import EfficientNetLite, load_pretrained_lite
from fcnseg.models.transplant import load_classifier_state_dict
from fcnseg.models.vgg import VGG16_STAGES


def _load_features(module: nn.Module, weights: Any, *, arch: str, skip: tuple[str, ...]) -> None:
    """Load a torchvision classifier state dict into ``module``, leaving out the ``skip``-prefixed keys."""
    state = load_classifier_state_dict(weights, arch=arch)
    module.load_state_dict({key: value for key, value in state.items() if not key.startswith(skip)}, strict=True)


class LiteBackbone(nn.Module):
    """EfficientNet-Lite: the ends of stages 3 and 5, and the 1280-channel head convolution (stride 32).

    The stride-32 features are what the ImageNet classifier reads (the counterpart of VGG's fc7).
    ``forward_stride4`` adds the end of stage 2 (stride 4) in front, for FCN-4s heads.
    """

    normalization = "lite"
    cell_centres = (7.0, 15.0, 31.0)
    stride4_centre = 3.0  # s * i + s - 1 at s = 4, as the others

    def __init__(self, *, variant: str = "lite0", pretrained: bool = False):
        super().__init__()
        self.net = load_pretrained_lite(variant) if pretrained else EfficientNetLite(variant=variant)
        self.net.drop_classifier()
        self.feature_channels: tuple[int, int, int] = self.net.feature_channels
        self.stride4_channels: int = self.net.stride4_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.forward_features(x)

    def forward_stride4(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f4, f8, f16, f32)``: ``forward``'s features and the stride-4 ones before them."""
        return self.net.forward_pyramid(x)

    def layers_to_stride(self, stride: int) -> list[nn.Module]:
        return self.net.layers_to_stride(stride)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50/101: layer2 (stride 8), layer3 (16), layer4 (32); ``fc`` dropped."""

    normalization = "imagenet"
    cell_centres = (0.0, 0.0, 0.0)
    feature_channels = (512, 1024, 2048)

    def __init__(self, *, depth: int = 50, weights: Any = None):
        super().__init__()
        builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
        resnet = builders[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        if weights is not None:
            _load_features(self, weights, arch=f"ResNet-{depth}", skip=("fc.",))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        f8 = self.layer2(self.layer1(h))  # (N, 512, H/8, W/8)
        f16 = self.layer3(f8)  # (N, 1024, H/16, W/16)
        f32 = self.layer4(f16)  # (N, 2048, H/32, W/32)
        return f8, f16, f32

    def layers_to_stride(self, stride: int) -> list[nn.Module]:
        """conv1 and bn1 (stride 2), then layer1 (4), layer2 (8), layer3 (16): Detectron2's ``FREEZE_AT`` 1-4."""
        layers = {2: [self.conv1, self.bn1], 4: [self.conv1, self.bn1, self.layer1]}
        layers[8] = layers[4] + [self.layer2]
        layers[16] = layers[8] + [self.layer3]
        if stride not in layers:
            raise ValueError(f"ResNet has layers to stride {sorted(layers)}, not {stride}")
        return layers[stride]


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (same indices, same init), without building its 120M-weight classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for _, count, out_channels in VGG16_STAGES:
        for _ in range(count):
            conv = nn.Conv2d(channels, out_channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = out_channels
        layers.append(nn.MaxPool2d(2, stride=2))
    return nn.Sequential(*layers)


class VGG16Backbone(nn.Module):
    """torchvision VGG16 ``features`` (3x3 convolutions padded by 1, no 100-pixel pad): pool3, pool4, pool5.

    Compact: without fc6/fc7, the stride-32 features are pool5 (512 channels).
    """

    normalization = "imagenet"
    cell_centres = (3.5, 7.5, 15.5)
    feature_channels = (256, 512, 512)
    POOL3, POOL4 = 16, 23  # indices of pool3 and pool4 in ``features``; pool5 is the last

    def __init__(self, *, weights: Any = None):
        super().__init__()
        self.features = vgg16_features()
        if weights is not None:
            _load_features(self, weights, arch="VGG16", skip=("classifier.",))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index == self.POOL3:
                f8 = h  # (N, 256, H/8, W/8)
            elif index == self.POOL4:
                f16 = h  # (N, 512, H/16, W/16)
        return f8, f16, h  # pool5: (N, 512, H/32, W/32)

    def layers_to_stride(self, stride: int) -> list[nn.Module]:
        """The convolutions up to pool1 (stride 2), pool2 (4), pool3 (8) or pool4 (16)."""
        pools = [index for index, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        ends = {2 ** (rank + 1): index for rank, index in enumerate(pools[:4])}
        if stride not in ends:
            raise ValueError(f"VGG16 has layers to stride {sorted(ends)}, not {stride}")
        return list(self.features[: ends[stride] + 1])


def _lite(variant: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> LiteBackbone:
        return LiteBackbone(variant=variant, pretrained=pretrained)

    return build


def _resnet50(pretrained: bool) -> ResNetBackbone:
    return ResNetBackbone(depth=50, weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)


def _resnet101(pretrained: bool) -> ResNetBackbone:
    weights = torchvision.models.ResNet101_Weights.IMAGENET1K_V1 if pretrained else None
    return ResNetBackbone(depth=101, weights=weights)


def _vgg16(pretrained: bool) -> VGG16Backbone:
    return VGG16Backbone(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1 if pretrained else None)


@dataclass(frozen=True)
class BackboneEntry:
    """How to build a backbone (``build(pretrained)``) and the input convention its weights expect."""

    build: Callable[[bool], nn.Module]
    normalization: str


# name -> entry: Lite weights come from their pip packages (offline), torchvision's download.
BACKBONES: dict[str, BackboneEntry] = {
    "lite0": BackboneEntry(_lite("lite0"), LiteBackbone.normalization),
    "lite1": BackboneEntry(_lite("lite1"), LiteBackbone.normalization),
    "lite2": BackboneEntry(_lite("lite2"), LiteBackbone.normalization),
    "resnet50": BackboneEntry(_resnet50, ResNetBackbone.normalization),
    "resnet101": BackboneEntry(_resnet101, ResNetBackbone.normalization),
    "vgg16-compact": BackboneEntry(_vgg16, VGG16Backbone.normalization),
}


def build_backbone(name: str, *, pretrained: bool = False) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name].build(pretrained)
