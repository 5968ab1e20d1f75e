"""Small layers and helpers shared by the FCNs, each defined once: the bilinear kernel, in-network upsampling,
cropping, zero-initialized score layers, padding to a size multiple, TensorFlow "same" padding, stochastic depth
and a per-channel input affine.

Upsampling in an FCN is "backwards strided convolution" (paper, section 3.3): a transposed
convolution with stride ``f`` whose kernel starts as bilinear interpolation. The reference keeps
these kernels fixed; the paper notes they can be learned. Both are a flag here.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# The reference's input padding (conv1_1 / conv1 ``pad: 100``): enough that fc6's window fits any input.
REFERENCE_INPUT_PAD = 100


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


def upsampling_layers(model: nn.Module) -> list[BilinearUpsample]:
    """Every ``BilinearUpsample`` inside ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, BilinearUpsample)]


def zero_init(conv: nn.Conv2d) -> None:
    """Score layers start at zero, as the reference's (Caffe's default constant filler)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of ``(N, C, H, W)`` so that H and W are multiples of ``multiple``.

    Under tracing (ONNX export) the sizes are graph values, and Python's ``-width % multiple`` would be baked in
    as a constant: there it pads by ``multiple - 1`` and slices to the rounded-up size, which traces symbolically.
    """
    height, width = x.shape[-2:]  # 0-dim tensors while the ONNX exporter traces, ints otherwise
    if torch.jit.is_tracing():
        padded = F.pad(x, [0, multiple - 1, 0, multiple - 1])
        return padded[..., : _round_up(height, multiple), : _round_up(width, multiple)]
    return F.pad(x, [0, -width % multiple, 0, -height % multiple])


def _round_up(size: int | torch.Tensor, multiple: int) -> int | torch.Tensor:
    if isinstance(size, torch.Tensor):  # ``//`` on a traced size is baked in; ``torch.div`` is recorded
        return torch.div(size + multiple - 1, multiple, rounding_mode="floor") * multiple
    return (size + multiple - 1) // multiple * multiple


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding ``(before, after)`` of one side: ``ceil(size / stride)`` outputs, the odd
    pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DropPath(nn.Module):
    """Stochastic depth on a residual branch, per sample (EfficientNet's ``drop_connect``): in training mode each
    sample's ``(N, C, H, W)`` branch is kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``; the
    identity in eval mode (``.eval()`` turns it off, as it does dropout)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate <= 0:
            return h
        keep = 1.0 - self.rate
        mask = torch.rand(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device) < keep  # (N, 1, 1, 1)
        return h * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ChannelAffine(nn.Module):
    """``x * scale + shift`` with one ``(1, C, 1, 1)`` scale and shift buffer each: an input conversion inside a
    model (GoogLeNet's ``transform_input``). Per channel, it moves no pixel (``fcnseg.stats`` treats it as such)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(1, channels, 1, 1))
        self.register_buffer("shift", torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift  # (N, C, H, W)
