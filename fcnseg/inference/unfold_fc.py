"""The convolutionalized fc6 of VGG16 and AlexNet as one matrix multiply on the CPU (``UnfoldConv2d``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.inference.swap import conv_sharing_parameters, replace_modules


class UnfoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed on the CPU as unfold + matrix multiply: same parameters, state dict and output.

    For the convolutionalized ``fc6`` (a 7x7 or 6x6 kernel, 4096 outputs, a few hundred output cells), oneDNN's
    direct convolution runs at about a third of the speed of the same product as im2col + GEMM on this project's
    CPU (VGG16's fc6 at 360x480: 368 ms against 138 ms; docs/performance.md), in float32 and bf16 alike.
    Falls back to the convolution on other devices, under tracing (exports keep a plain ``Conv``), for grouped or
    non-zero padding, and when the unfolded input would exceed ``MAX_UNFOLDED`` elements.
    """

    MAX_UNFOLDED = 64 * 2**20  # elements of the (N, C k k, L) matrix: 256 MiB in float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        kernel_h, kernel_w = self.kernel_size
        if (x.device.type != "cpu" or self.groups != 1 or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(x)
        out_h = (height + 2 * self.padding[0] - self.dilation[0] * (kernel_h - 1) - 1) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.dilation[1] * (kernel_w - 1) - 1) // self.stride[1] + 1
        if out_h < 1 or out_w < 1 or n * self.in_channels * kernel_h * kernel_w * out_h * out_w > self.MAX_UNFOLDED:
            return super().forward(x)
        columns = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        weight = self.weight  # (out_channels, C, k, k)
        if not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
            # Stored (out_channels, k, k, C): use that order as is (reshaping would copy the whole weight each
            # call) and reorder the much smaller columns to match.
            weight = weight.permute(0, 2, 3, 1)
            cells = columns.shape[-1]
            columns = columns.reshape(n, self.in_channels, kernel_h * kernel_w, cells).transpose(1, 2)
            columns = columns.reshape(n, -1, cells)  # (N, k k C, L)
        columns = columns.transpose(0, 1).reshape(weight[0].numel(), -1)  # (C k k, N L): one GEMM for the batch
        weight = weight.reshape(self.out_channels, -1)  # (out_channels, C k k) in the columns' order
        if self.bias is None:
            out = torch.mm(weight, columns)
        else:
            out = torch.addmm(self.bias.reshape(-1, 1), weight, columns)  # (out_channels, N L)
        return out.reshape(self.out_channels, n, out_h, out_w).transpose(0, 1)  # (N, out_channels, out_h, out_w)


def unfold_large_convolutions(model: nn.Module, *, min_kernel_area: int = 25, min_depth: int = 4096) -> int:
    """Swap, in place, every plain ``nn.Conv2d`` like a convolutionalized fc layer (stride 1, no groups, at least
    ``min_kernel_area`` taps and ``in_channels * taps >= min_depth``: the fc6 of VGG16 and AlexNet) for an
    ``UnfoldConv2d`` that shares its parameters, so optimizers and state dicts are unaffected. Returns how many
    were swapped. The models themselves keep ``nn.Conv2d``, whose outputs are bit-identical to the reference
    port's; ``inference_model`` and training call this."""

    def replacement(parent: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
        if type(child) is not nn.Conv2d or child.groups != 1 or child.stride != (1, 1):
            return None
        taps = child.kernel_size[0] * child.kernel_size[1]
        if taps < min_kernel_area or child.in_channels * taps < min_depth:
            return None
        return conv_sharing_parameters(UnfoldConv2d, child)

    return replace_modules(model, replacement)
