"""Small layers shared by every FCN: the bilinear kernel, in-network upsampling, and cropping.

Upsampling in an FCN is "backwards strided convolution" (paper, section 3.3): a transposed
convolution with stride ``f`` whose kernel starts as bilinear interpolation. The reference keeps
these kernels fixed; the paper notes they can be learned. Both are a flag here.
"""

from __future__ import annotations

import torch
from torch import nn


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
