"""One ``ModelSpec`` per model name: how to build it and what a checkpoint, the CLI or training must know of it.

An explicit dict (``MODEL_SPECS``), no registry decorators: grep a name and it is here. Adding a model is one
entry; adding a backbone is its class in ``backbones.py`` (with its ``BACKBONES`` entry) and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.backbone_fcn import BackboneFCN
from fcnseg.models.backbones import BACKBONES, build_backbone
from fcnseg.models.googlenet import FCNGoogLeNet
from fcnseg.models.multimodal import EarlyFusionFCN32s, LateFusionFCN32s
from fcnseg.models.multitask import SIFTFlowFCN8s, SIFTFlowFCN16s, SIFTFlowFCN32s, SIFTFlowScores
from fcnseg.models.transplant import transplant_alexnet, transplant_vgg16
from fcnseg.models.vgg import FCN8s, FCN8sAtOnce, FCN16s, FCN32s

if TYPE_CHECKING:  # for the annotation only: fcnseg.weights imports fcnseg.checkpoint, which imports this module
    from fcnseg.weights import Weights


@dataclass(frozen=True)
class ModelSpec:
    """What is known of one model name.

    ``builder(*, num_classes, learnable_upsampling, in_channels)`` builds it (backbone FCNs also take
    ``pretrained_backbone``); ``normalization`` is the input convention of its weights
    (``fcnseg.data.transforms``); ``in_channels`` its input channels (stacked modalities for NYUDv2);
    ``heads`` the fields of a multi-task model's named-tuple output (empty: one logits tensor);
    ``imagenet_transplant(model, weights)`` fills its trunk from a torchvision classifier, where one fits.
    """

    builder: Callable[..., nn.Module]
    description: str
    normalization: str
    in_channels: int = 3
    heads: tuple[str, ...] = ()
    has_pretrained_backbone: bool = False
    imagenet_transplant: Callable[[nn.Module, object], nn.Module] | None = None

    @property
    def standard(self) -> bool:
        """RGB in, one logits tensor out: the contract ``fcnseg models``, dense inference and export assume."""
        return self.in_channels == 3 and not self.heads


def _alexnet_torchvision(*, num_classes: int, learnable_upsampling: bool = False,
                         in_channels: int = 3) -> FCNAlexNet:
    return FCNAlexNet(
        num_classes=num_classes, layout="torchvision", learnable_upsampling=learnable_upsampling, in_channels=in_channels
    )


@dataclass(frozen=True)
class BackboneFCNBuilder:
    """Builds ``BackboneFCN`` on ``build_backbone(backbone)``."""

    backbone: str
    output_stride: int

    def __call__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 pretrained_backbone: bool = False) -> BackboneFCN:
        if in_channels != 3:
            raise ValueError(f"the {self.backbone} backbone takes 3-channel RGB input, got in_channels={in_channels}")
        return BackboneFCN(
            build_backbone(self.backbone, pretrained=pretrained_backbone),
            num_classes=num_classes,
            output_stride=self.output_stride,
            learnable_upsampling=learnable_upsampling,
        )


def _on_backbone(backbone: str, output_stride: int, description: str) -> ModelSpec:
    """FCN heads on an ImageNet backbone; ``pretrained_backbone=True`` loads the backbone's ImageNet weights."""
    return ModelSpec(builder=BackboneFCNBuilder(backbone=backbone, output_stride=output_stride),
                     description=description, normalization=BACKBONES[backbone].normalization,
                     has_pretrained_backbone=True)


SIFTFLOW_HEADS = SIFTFlowScores._fields  # ("semantic", "geometric")

MODEL_SPECS: dict[str, ModelSpec] = {
    "fcn32s": ModelSpec(FCN32s, "VGG16, stride-32 scores upsampled 32x (voc-fcn32s)", "caffe",
                        imagenet_transplant=transplant_vgg16),
    "fcn16s": ModelSpec(FCN16s, "VGG16, + pool4 skip, 16x (voc-fcn16s)", "caffe",
                        imagenet_transplant=transplant_vgg16),
    "fcn8s": ModelSpec(FCN8s, "VGG16, + pool4 and pool3 skips, 8x (voc-fcn8s)", "caffe",
                       imagenet_transplant=transplant_vgg16),
    "fcn8s-atonce": ModelSpec(FCN8sAtOnce, "VGG16 FCN-8s with scaled skips, trained in one stage (voc-fcn8s-atonce)",
                              "caffe", imagenet_transplant=transplant_vgg16),
    "fcn-alexnet": ModelSpec(FCNAlexNet, "CaffeNet layout (groups, LRN), 32x (voc-fcn-alexnet)", "caffe"),
    # torchvision's layout is for torchvision's ImageNet weights, which expect torchvision's normalization.
    "fcn-alexnet-tv": ModelSpec(_alexnet_torchvision, "torchvision AlexNet layout, 32x", "imagenet",
                                imagenet_transplant=transplant_alexnet),
    "fcn-googlenet": ModelSpec(FCNGoogLeNet, "torchvision GoogLeNet (no aux heads, avg pool dropped), score_fr on "
                               "inception5b, 32x", "imagenet"),
    "fcn32s-lite0": _on_backbone("lite0", 32, "EfficientNet-Lite0, score_fr on the 1280-ch head conv, 32x"),
    "fcn16s-lite0": _on_backbone("lite0", 16, "EfficientNet-Lite0, + stride-16 skip, 16x"),
    "fcn8s-lite0": _on_backbone("lite0", 8, "EfficientNet-Lite0, + stride-16 and stride-8 skips, 8x"),
    "fcn8s-lite1": _on_backbone("lite1", 8, "EfficientNet-Lite1 FCN-8s"),
    "fcn8s-lite2": _on_backbone("lite2", 8, "EfficientNet-Lite2 FCN-8s"),
    "fcn4s-lite1": _on_backbone("lite1", 4, "EfficientNet-Lite1, + stride-16, -8 and -4 skips, 4x (thin objects)"),
    "fcn8s-resnet50": _on_backbone("resnet50", 8, "torchvision ResNet-50 (layer2/3/4) FCN-8s"),
    "fcn8s-resnet101": _on_backbone("resnet101", 8, "torchvision ResNet-101 (layer2/3/4) FCN-8s"),
    "fcn8s-vgg16-compact": _on_backbone("vgg16-compact", 8,
                                        "torchvision VGG16 pool3/4/5, padding 1, no fc6/fc7, FCN-8s"),
    "fcn32s-siftflow": ModelSpec(SIFTFlowFCN32s, "VGG16, semantic (33) + geometric (3) heads, 32x each "
                                 "(siftflow-fcn32s)", "caffe-siftflow", heads=SIFTFLOW_HEADS,
                                 imagenet_transplant=transplant_vgg16),
    "fcn16s-siftflow": ModelSpec(SIFTFlowFCN16s, "VGG16, two heads with pool4 skips, 16x (siftflow-fcn16s)",
                                 "caffe-siftflow", heads=SIFTFLOW_HEADS,
                                 imagenet_transplant=transplant_vgg16),
    "fcn8s-siftflow": ModelSpec(SIFTFlowFCN8s, "VGG16, two heads with pool4 and pool3 skips, 8x (siftflow-fcn8s)",
                                "caffe-siftflow", heads=SIFTFLOW_HEADS,
                                 imagenet_transplant=transplant_vgg16),
    "fcn32s-nyud-rgbd": ModelSpec(EarlyFusionFCN32s, "VGG16 FCN-32s, early fusion: colour + depth as 4 input "
                                  "channels (nyud-fcn32s-color-d)", "caffe-nyud",
                                  in_channels=EarlyFusionFCN32s.default_in_channels,
                                  imagenet_transplant=transplant_vgg16),
    "fcn32s-nyud-rgbhha": ModelSpec(LateFusionFCN32s, "two VGG16 FCN-32s streams, colour and HHA, scores fused "
                                    "(nyud-fcn32s-color-hha)", "caffe-nyud",
                                    in_channels=LateFusionFCN32s.default_in_channels),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def list_models(*, standard_only: bool = False) -> list[str]:
    """Every model name; ``standard_only``: those with RGB in and one logits tensor out (``ModelSpec.standard``)."""
    return [name for name, spec in MODEL_SPECS.items() if spec.standard or not standard_only]


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    learnable_upsampling: bool = False,
    in_channels: int | None = None,
    pretrained_backbone: bool = False,
    weights: Weights | str | None = None,
) -> nn.Module:
    """``pretrained_backbone`` (backbone FCNs only) loads the backbone's ImageNet weights.

    ``in_channels=None`` is the model's own: 3 (RGB), or the stacked modalities of the multi-modal models.
    ``weights``: a ``fcnseg.weights.Weights`` record or a weights name (``fcnseg.weights.list_weights``) of this
    model; the model then comes with them loaded, on the CPU, in eval mode, and ``num_classes`` (which may be left
    out) and the other arguments are the weights' own (passing them is an error). ``None`` (the default): no weights
    beyond the backbone's; ``num_classes`` is then required.
    """
    spec = model_spec(name)
    if weights is not None:
        return _build_with_weights(name, weights=weights, num_classes=num_classes,
                                   learnable_upsampling=learnable_upsampling, in_channels=in_channels,
                                   pretrained_backbone=pretrained_backbone)
    if num_classes is None:
        raise TypeError(f"build_model({name!r}) needs num_classes (or weights, which fix it)")
    in_channels = spec.in_channels if in_channels is None else in_channels
    if spec.has_pretrained_backbone:
        return spec.builder(num_classes=num_classes, learnable_upsampling=learnable_upsampling,
                            in_channels=in_channels, pretrained_backbone=pretrained_backbone)
    if pretrained_backbone:
        raise ValueError(
            f"{name!r} has no pretrained_backbone option: start it from ImageNet weights with "
            "fcnseg.models.transplant_vgg16 (VGG16 models) or transplant_alexnet (fcn-alexnet-tv)"
        )
    return spec.builder(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels)


def _build_with_weights(name: str, *, weights: Weights | str, num_classes: int | None, learnable_upsampling: bool,
                        in_channels: int | None, pretrained_backbone: bool) -> nn.Module:
    # fcnseg.weights reads checkpoint files through fcnseg.checkpoint, which imports this module: imported here,
    # when weights are asked for, so that importing fcnseg.models imports nothing above it (and makes no cycle).
    from fcnseg.weights import resolve_weights

    record = resolve_weights(weights, model_name=name)
    if pretrained_backbone or learnable_upsampling or in_channels is not None:
        raise ValueError(f"with weights {record.name!r}, leave out pretrained_backbone, learnable_upsampling and "
                         "in_channels: the weights' file fixes the whole model")
    if num_classes is not None and num_classes != record.num_classes:
        raise ValueError(f"weights {record.name!r} score {record.num_classes} classes, not num_classes={num_classes}")
    return record.load_model()
