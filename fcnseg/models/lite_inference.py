"""EfficientNet-Lite rewritten for inference (``fcnseg.inference_model``): the same outputs in fewer passes.

Two changes to a batch-norm-folded ``EfficientNetLite`` (``fcnseg.fast.fold_batch_norms``):

1. On the CPU each convolution runs with its ReLU6, or with the residual add that ends an MBConv block, as one
   oneDNN call with packed weights (``fcnseg.models.fused``) instead of a convolution and a second pass over its
   output. Elsewhere (CUDA, autograd, tracing) the same module runs ``F.conv2d`` then ``F.relu6`` / ``+``.
2. Stride-2 "same" padding without a padded copy of the input. On an even side TensorFlow pads ``p`` before and
   ``p + 1`` after (kernel ``k = 2 p + 3``); PyTorch's convolutions pad symmetrically, so ``SameConv2d`` copies
   its input into a padded tensor, which for a depthwise layer costs more than the convolution itself. The same
   output comes from a ``k + 1`` kernel whose first row and column are zero, padded ``p + 1`` on every side:
   output ``i`` reads inputs ``2 i - p - 1 .. 2 i + p + 2``, and the zero taps drop the first of them, leaving
   TensorFlow's ``2 i - p .. 2 i + p + 2``. On this project's CPU a 96-channel depthwise layer at 192x240 takes
   0.69 ms this way against 2.0 ms padded (docs/performance.md). Only for inference: the backward pass of the
   larger depthwise kernel is slower than that of the copy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.efficientnet_lite import EfficientNetLite, MBConvBlock, run_blocks, same_padding
from fcnseg.models.fused import PackedWeightsOwner, onednn_applies, onednn_convolution


class FusedSameConv2d(PackedWeightsOwner):
    """A folded ``SameConv2d`` (weight and bias) with an optional ReLU6, and an optional residual added last.

    ``forward((N, C, H, W), residual=None) -> (N, C_out, ceil(H / s), ceil(W / s))``.

    On the CPU the weights are reordered into oneDNN's blocked layout once, at the first call, instead of at every
    call (for a 192 -> 1152 1x1 convolution at 12x15 that reordering is a quarter of the call); the buffers are
    not meant to be changed in place afterwards (``PackedWeightsOwner``).
    """

    def __init__(self, conv: nn.Conv2d, *, relu6: bool):
        super().__init__()
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise ValueError("FusedSameConv2d needs a square kernel and equal strides")
        weight = conv.weight.detach().clone()  # (C_out, C_in / groups, k, k)
        bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        # The zero-led (k + 1)-tap kernel for even sides at stride 2 (module docstring).
        self.register_buffer("even_weight", F.pad(weight, [1, 0, 1, 0]) if conv.stride[0] == 2 else None)
        self.kernel_size = conv.kernel_size[0]
        self.stride = conv.stride[0]
        self.groups = conv.groups
        self.relu6 = relu6

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        k, stride = self.kernel_size, self.stride
        pads = [same_padding(size, k, stride) for size in x.shape[-2:]]  # [(top, bottom), (left, right)]
        weight = self.weight
        if all(before == after for before, after in pads):  # stride 1, and odd sides at stride 2
            padding = pads[0][0], pads[1][0]
        elif self.even_weight is not None and all(after == before + 1 for before, after in pads):
            weight, padding = self.even_weight, (pads[0][1], pads[1][1])
        else:  # even and odd sides mixed: pad a copy, as SameConv2d does
            (top, bottom), (left, right) = pads
            x, padding = F.pad(x, [left, right, top, bottom]), (0, 0)
        return self._convolve(x, weight, padding, residual)

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
                  residual: torch.Tensor | None) -> torch.Tensor:
        geometry = dict(padding=list(padding), stride=[self.stride] * 2, dilation=[1, 1], groups=self.groups)
        if onednn_applies(x, weight):
            packed = self.packed.get_packed((weight is self.even_weight, x.dtype), weight, input_shape=x.shape,
                                            **geometry)
            return onednn_convolution(x, packed, self.bias, activation="relu6" if self.relu6 else None,
                                      residual=residual, **geometry)
        out = F.conv2d(x, weight.to(x.dtype), self.bias.to(x.dtype), **geometry)
        if self.relu6:
            out = F.relu6(out)
        return out if residual is None else out + residual


class FusedMBConv(nn.Module):
    """``MBConvBlock`` in eval mode: expand + ReLU6, depthwise + ReLU6, project (+ skip), three calls."""

    def __init__(self, block: MBConvBlock):
        super().__init__()
        self.expand = FusedSameConv2d(block._expand_conv, relu6=True) if hasattr(block, "_expand_conv") else None
        self.depthwise = FusedSameConv2d(block._depthwise_conv, relu6=True)
        self.project = FusedSameConv2d(block._project_conv, relu6=False)
        self.has_skip = block.has_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x  # (N, hidden, H, W)
        h = self.depthwise(h)  # (N, hidden, H / stride, W / stride)
        return self.project(h, residual=x if self.has_skip else None)  # (N, out, H / stride, W / stride)


def batch_norms_folded(net: EfficientNetLite) -> bool:
    """Whether every batch norm of ``net`` was folded away (``fold_batch_norms`` made it ``nn.Identity``)."""
    return not any(isinstance(module, nn.BatchNorm2d) for module in net.modules())


class FusedEfficientNetLite(nn.Module):
    """Inference-only ``EfficientNetLite`` built from a batch-norm-folded one: same ``forward_features`` and
    ``forward`` (and ``feature_channels``, ``stage_ends``), no parameters (buffers only).

    It computes in the dtype of its buffers: after ``.to(torch.bfloat16)`` the whole network runs in bf16 (the
    input is cast once, the features come out in bf16), without autocast's cast of every weight at every call.
    """

    def __init__(self, net: EfficientNetLite):
        super().__init__()
        if not batch_norms_folded(net):
            raise ValueError("fold the batch norms first (fcnseg.fast.fold_batch_norms)")
        self.stem = FusedSameConv2d(net._conv_stem, relu6=True)
        self.blocks = nn.ModuleList(FusedMBConv(block) for block in net._blocks)
        self.head = FusedSameConv2d(net._conv_head, relu6=True)
        self.fc = net._fc
        self.stage_ends = list(net.stage_ends)
        self.feature_channels = net.feature_channels
        self.variant = net.variant

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.stem(x.to(self.stem.weight.dtype))  # (N, 32, H/2, W/2)
        f8, f16, h = run_blocks(self.blocks, self.stage_ends, h)
        return f8, f16, self.head(h)  # f32: (N, 1280, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, f32 = self.forward_features(x)
        return self.fc(f32.mean(dim=(-2, -1)))  # (N, 1000), or (N, 1280) without the classifier


def fuse_lite_networks(model: nn.Module) -> int:
    """Swap, in place, every batch-norm-folded ``EfficientNetLite`` inside ``model`` (a child, as in
    ``LiteBackbone.net``) for a ``FusedEfficientNetLite``; returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EfficientNetLite) and batch_norms_folded(child):
                setattr(parent, name, FusedEfficientNetLite(child))
                swapped += 1
    return swapped
