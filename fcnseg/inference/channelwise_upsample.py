"""Fixed bilinear upsampling as a grouped transposed convolution: the diagonal weight without its zero kernels."""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.inference.swap import replace_modules
from fcnseg.models.layers import BilinearUpsample


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

    def replacement(parent: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
        if not isinstance(child, BilinearUpsample):
            return None
        channels = torch.arange(child.in_channels)
        diagonal = child.weight.detach()[channels, channels]  # (C, k, k)
        off_diagonal = child.weight.detach().clone()
        off_diagonal[channels, channels] = 0
        if off_diagonal.any():
            return None
        grouped = ChannelwiseUpsample(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                      groups=child.in_channels, bias=False, device=child.weight.device)
        grouped.weight = nn.Parameter(diagonal.unsqueeze(1).clone(), requires_grad=False)  # (C, 1, k, k)
        return grouped

    return replace_modules(model, replacement)
