"""Batch norm folded into the convolution before it, for inference: ``bn(conv(x)) == conv'(x)``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fcnseg.models.interface import ConvBatchNormPairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every conv + batch norm pair its modules name (``conv_bn_pairs``, the
    ``ConvBatchNormPairs`` interface) folded, the norm replaced by ``nn.Identity``; ``(copy, number folded)``."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in model.modules():
        if not isinstance(module, ConvBatchNormPairs):
            continue
        for conv_name, bn_name in module.conv_bn_pairs():
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return model, folded
