"""The explicit name -> builder table behind ``fcnseg models`` and ``--model`` (no registry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.backbones import BACKBONE_NORMALIZATIONS, build_backbone
from fcnseg.models.googlenet import FCNGoogLeNet
from fcnseg.models.fusion import EarlyFusionFCN32s, LateFusionFCN32s
from fcnseg.models.heads import BackboneFCN
from fcnseg.models.multitask import SIFTFlowFCN8s, SIFTFlowFCN16s, SIFTFlowFCN32s
from fcnseg.models.vgg import FCN8s, FCN8sAtOnce, FCN16s, FCN32s


def _alexnet_torchvision(*, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3) -> FCNAlexNet:
    return FCNAlexNet(
        num_classes=num_classes, layout="torchvision", learnable_upsampling=learnable_upsampling, in_channels=in_channels
    )


@dataclass(frozen=True)
class BackboneFCNBuilder:
    """Builds ``BackboneFCN`` on ``build_backbone(backbone)``; ``normalization`` is the model's input convention."""

    backbone: str
    output_stride: int

    @property
    def normalization(self) -> str:
        return BACKBONE_NORMALIZATIONS[self.backbone]

    def __call__(
        self,
        *,
        num_classes: int,
        learnable_upsampling: bool = False,
        in_channels: int = 3,
        pretrained_backbone: bool = False,
    ) -> BackboneFCN:
        if in_channels != 3:
            raise ValueError(f"the {self.backbone} backbone takes 3-channel RGB input, got in_channels={in_channels}")
        return BackboneFCN(
            build_backbone(self.backbone, pretrained=pretrained_backbone),
            num_classes=num_classes,
            output_stride=self.output_stride,
            learnable_upsampling=learnable_upsampling,
        )


# FCN heads on ImageNet backbones; ``pretrained_backbone=True`` loads the backbone's ImageNet weights.
BACKBONE_FCN_BUILDERS: dict[str, BackboneFCNBuilder] = {
    "fcn32s-lite0": BackboneFCNBuilder(backbone="lite0", output_stride=32),
    "fcn16s-lite0": BackboneFCNBuilder(backbone="lite0", output_stride=16),
    "fcn8s-lite0": BackboneFCNBuilder(backbone="lite0", output_stride=8),
    "fcn8s-lite1": BackboneFCNBuilder(backbone="lite1", output_stride=8),
    "fcn8s-lite2": BackboneFCNBuilder(backbone="lite2", output_stride=8),
    "fcn8s-resnet50": BackboneFCNBuilder(backbone="resnet50", output_stride=8),
    "fcn8s-resnet101": BackboneFCNBuilder(backbone="resnet101", output_stride=8),
    "fcn8s-vgg16-compact": BackboneFCNBuilder(backbone="vgg16-compact", output_stride=8),
}

_alexnet_torchvision.normalization = "imagenet"  # read by checkpoints that do not record their normalization

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "fcn8s-atonce": FCN8sAtOnce,
    "fcn-alexnet": FCNAlexNet,
    "fcn-alexnet-tv": _alexnet_torchvision,
    "fcn-googlenet": FCNGoogLeNet,
    **BACKBONE_FCN_BUILDERS,
}

# Multi-task (named-tuple output) and multi-modal (stacked, in_channels != 3) models. They stand outside the
# contract of MODEL_BUILDERS (RGB in, one logits tensor out) that `fcnseg models`, dense inference and the model
# contract tests assume; build_model and checkpoints know both tables.
MULTI_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s-siftflow": SIFTFlowFCN32s,
    "fcn16s-siftflow": SIFTFlowFCN16s,
    "fcn8s-siftflow": SIFTFlowFCN8s,
    "fcn32s-nyud-rgbd": EarlyFusionFCN32s,
    "fcn32s-nyud-rgbhha": LateFusionFCN32s,
}

ALL_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {**MODEL_BUILDERS, **MULTI_MODEL_BUILDERS}

MODEL_DESCRIPTIONS: dict[str, str] = {
    "fcn32s": "VGG16, stride-32 scores upsampled 32x (voc-fcn32s)",
    "fcn16s": "VGG16, + pool4 skip, 16x (voc-fcn16s)",
    "fcn8s": "VGG16, + pool4 and pool3 skips, 8x (voc-fcn8s)",
    "fcn8s-atonce": "VGG16 FCN-8s with scaled skips, trained in one stage (voc-fcn8s-atonce)",
    "fcn-alexnet": "CaffeNet layout (groups, LRN), 32x (voc-fcn-alexnet)",
    "fcn-alexnet-tv": "torchvision AlexNet layout, 32x",
    "fcn-googlenet": "torchvision GoogLeNet (no aux heads, avg pool dropped), score_fr on inception5b, 32x",
    "fcn32s-lite0": "EfficientNet-Lite0, score_fr on the 1280-ch head conv, 32x",
    "fcn16s-lite0": "EfficientNet-Lite0, + stride-16 skip, 16x",
    "fcn8s-lite0": "EfficientNet-Lite0, + stride-16 and stride-8 skips, 8x",
    "fcn8s-lite1": "EfficientNet-Lite1 FCN-8s",
    "fcn8s-lite2": "EfficientNet-Lite2 FCN-8s",
    "fcn8s-resnet50": "torchvision ResNet-50 (layer2/3/4) FCN-8s",
    "fcn8s-resnet101": "torchvision ResNet-101 (layer2/3/4) FCN-8s",
    "fcn8s-vgg16-compact": "torchvision VGG16 pool3/4/5, padding 1, no fc6/fc7, FCN-8s",
    "fcn32s-siftflow": "VGG16, semantic (33) + geometric (3) heads, 32x each (siftflow-fcn32s)",
    "fcn16s-siftflow": "VGG16, two heads with pool4 skips, 16x (siftflow-fcn16s)",
    "fcn8s-siftflow": "VGG16, two heads with pool4 and pool3 skips, 8x (siftflow-fcn8s)",
    "fcn32s-nyud-rgbd": "VGG16 FCN-32s, early fusion: colour + depth as 4 input channels (nyud-fcn32s-color-d)",
    "fcn32s-nyud-rgbhha": "two VGG16 FCN-32s streams, colour and HHA, scores fused (nyud-fcn32s-color-hha)",
}


def build_model(
    name: str,
    *,
    num_classes: int,
    learnable_upsampling: bool = False,
    in_channels: int | None = None,
    pretrained_backbone: bool = False,
) -> nn.Module:
    """``pretrained_backbone`` (models in ``BACKBONE_FCN_BUILDERS`` only) loads the backbone's ImageNet weights.

    ``in_channels=None`` is the model's own: 3 (RGB), or the stacked modalities of the multi-modal models.
    """
    if name not in ALL_MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(ALL_MODEL_BUILDERS)}")
    if in_channels is None:
        in_channels = getattr(ALL_MODEL_BUILDERS[name], "default_in_channels", 3)
    if name in BACKBONE_FCN_BUILDERS:
        return BACKBONE_FCN_BUILDERS[name](
            num_classes=num_classes,
            learnable_upsampling=learnable_upsampling,
            in_channels=in_channels,
            pretrained_backbone=pretrained_backbone,
        )
    if pretrained_backbone:
        raise ValueError(
            f"{name!r} has no pretrained_backbone option: start it from ImageNet weights with "
            "fcnseg.models.transplant_vgg16 (VGG16 models) or transplant_alexnet (fcn-alexnet-tv)"
        )
    return ALL_MODEL_BUILDERS[name](
        num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels
    )
