"""Small layers shared by every FCN: the bilinear kernel, in-network upsampling, and cropping.

Upsampling in an FCN is "backwards strided convolution" (paper, section 3.3): a transposed
convolution with stride ``f`` whose kernel starts as bilinear interpolation. The reference keeps
these kernels fixed; the paper notes they can be learned. Both are a flag here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """A (kernel_size, kernel_size) bilinear interpolation kernel, as the reference's ``upsample_filt``.

    For an upsampling factor ``f`` the reference uses ``kernel_size = 2 * f`` (or ``2 * f - 1`` for
    FCN-AlexNet); the kernel's centre sits at ``(kernel_size - 1) / 2``.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = torch.arange(kernel_size, dtype=torch.float64)
    profile = 1 - (taps - center).abs() / factor  # (kernel_size,)
    return torch.outer(profile, profile).float()


class BilinearUpsample(nn.ConvTranspose2d):
    """Transposed convolution ``(N, C, h, w) -> (N, C, (h - 1) * stride + k, (w - 1) * stride + k)``.

    Each channel is upsampled independently (the weight is diagonal over channels), exactly as
    the reference's ``surgery.interp`` initializes its ``Deconvolution`` layers. The weight keeps
    the full ``(C, C, k, k)`` shape so that reference state dicts load unchanged. With
    ``learnable=False`` (the reference's choice) the weight is frozen.
    """

    def __init__(self, channels: int, *, stride: int, kernel_size: int, learnable: bool = False):
        super().__init__(channels, channels, kernel_size, stride=stride, bias=False)
        self.reset_to_bilinear()
        self.weight.requires_grad_(learnable)

    @property
    def learnable(self) -> bool:
        return self.weight.requires_grad

    @torch.no_grad()
    def reset_to_bilinear(self) -> None:
        kernel = bilinear_kernel(self.kernel_size[0]).to(self.weight)
        self.weight.zero_()
        channels = torch.arange(self.in_channels)
        self.weight[channels, channels] = kernel


def crop_like(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """Crop ``x`` to ``(height, width)`` starting ``offset`` pixels in, as Caffe's ``Crop`` layer."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise ValueError(
            f"cannot crop {height}x{width} at offset {offset} from a {x.shape[-2]}x{x.shape[-1]} map"
        )
    return x[..., offset : offset + height, offset : offset + width]


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
    port's; ``inference_model`` and ``train`` call this."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Conv2d or child.groups != 1 or child.stride != (1, 1):
                continue
            taps = child.kernel_size[0] * child.kernel_size[1]
            if taps < min_kernel_area or child.in_channels * taps < min_depth:
                continue
            fast = UnfoldConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                padding=child.padding, dilation=child.dilation, bias=child.bias is not None,
                                padding_mode=child.padding_mode, device="meta")
            fast.weight, fast.bias = child.weight, child.bias  # shared Parameters, not copies
            fast.train(child.training)
            setattr(parent, name, fast)
            swapped += 1
    return swapped


class ChannelwiseUpsample(nn.ConvTranspose2d):
    """A ``BilinearUpsample`` with a diagonal weight, as a grouped transposed convolution (``groups=C``, weight
    ``(C, 1, k, k)``), always in the weight's dtype: oneDNN has no fast bf16 kernel for it, so under bf16
    autocast it would take ten times longer (and the upsampled logits are better kept in float32 anyway)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


def channelwise_upsampling(model: nn.Module) -> int:
    """Swap, in place, every ``BilinearUpsample`` whose weight is diagonal over channels (always, unless it was
    trained with ``learnable=True``) for a ``ChannelwiseUpsample``: the same output without multiplying by the
    ``C (C - 1)`` zero kernels. FCN-8s' final 8x upsampling of 21 classes at 360x480 takes 0.86 ms this way
    against 4.2 ms. Returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, BilinearUpsample):
                continue
            channels = torch.arange(child.in_channels)
            diagonal = child.weight.detach()[channels, channels]  # (C, k, k)
            off_diagonal = child.weight.detach().clone()
            off_diagonal[channels, channels] = 0
            if off_diagonal.any():
                continue
            grouped = ChannelwiseUpsample(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                         groups=child.in_channels, bias=False, device=child.weight.device)
            grouped.weight = nn.Parameter(diagonal.unsqueeze(1).clone(), requires_grad=False)  # (C, 1, k, k)
            setattr(parent, name, grouped)
            swapped += 1
    return swapped
