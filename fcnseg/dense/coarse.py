"""The coarse score map of an FCN and its geometry, measured or stated (``fcnseg.models.interface``)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.interface import CoarseScoring
from fcnseg.models.layers import bilinear_kernel, crop_like

TRACE_SIDES = (256, 512)  # two input sides for measuring each layer's input stride (on meta tensors)
RAREFIABLE = (nn.Conv2d, nn.MaxPool2d)
NOT_RAREFIABLE = (nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ConvTranspose2d,
                  nn.Upsample, nn.FractionalMaxPool2d)


def prepare_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own input padding before its trunk (``BackboneFCN``: bottom/right to a multiple of 32)."""
    return model.prepare_input(x) if isinstance(model, CoarseScoring) else x


def coarse_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, K, h, w)``: the ``score_fr`` map of a package FCN, or ``model(x)`` for a plain net."""
    return model.coarse_scores(x) if isinstance(model, CoarseScoring) else model(x)


def score_centre(model: nn.Module) -> float:
    """Input pixel on which score_fr cell 0 is centred (cell ``i`` on ``32 i + centre``), for the upsampling."""
    if isinstance(model, CoarseScoring):
        return float(model.score_cell_centre)
    raise ValueError(f"no score_fr geometry for {type(model).__name__}; pass cell_centre to dense_logits yourself")


def dense_logits(dense: torch.Tensor, *, dense_stride: int, cell_centre: float, height: int,
                 width: int) -> torch.Tensor:
    """``(N, K, T, U)`` cells centred on ``dense_stride * t + cell_centre`` -> ``(N, K, height, width)`` logits.

    Bilinear interpolation by a transposed convolution, as the models upsample: kernel ``2 r`` (half-pixel
    centres) or ``2 r - 1``; zero cells (no contribution, as past a model's last cell) pad what the crop needs.
    """
    kernel = 2 * dense_stride if (dense_stride - 0.5 - cell_centre) % 1 == 0 else 2 * dense_stride - 1
    offset = (kernel - 1) / 2 - cell_centre  # of image pixel 0 in the upsampled map
    if offset % 1:
        raise ValueError(f"cell centre {cell_centre} is not on the half-pixel grid")
    before = max(0, math.ceil(-offset / dense_stride))
    offset = int(offset) + before * dense_stride
    pads = []
    for cells, size in ((dense.shape[-1], width), (dense.shape[-2], height)):
        needed = max(0, math.ceil((offset + size - kernel) / dense_stride) + 1)  # cells the crop needs
        pads += [before, max(0, needed - before - cells)]
    channels = dense.shape[1]
    weight = bilinear_kernel(kernel).to(dense).expand(channels, 1, kernel, kernel)
    upscored = F.conv_transpose2d(F.pad(dense, pads), weight, stride=dense_stride, groups=channels)
    return crop_like(upscored, offset, height, width)  # (N, K, height, width)


class CoarsePath(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return coarse_scores(self.model, x)


def trace_strides(model: nn.Module) -> tuple[int, dict[str, int]]:
    """``(S, {layer name: input stride})`` of the conv and pool layers on the coarse path; ``S`` its output stride.

    Measured on meta tensors (no compute): a layer's input stride is the growth of the input side over the growth
    of the layer's input side. Layers outside the coarse path (skips, upsampling) are left out.
    """
    path = CoarsePath(model)
    tensors = {name: t.to("meta") for name, t in itertools.chain(path.named_parameters(), path.named_buffers())}
    names = {module: name for name, module in model.named_modules()}
    sides: dict[str, list[int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sides.setdefault(names[module], []).append(args[0].shape[-2])

    traced = [m for m in model.modules() if isinstance(m, RAREFIABLE + NOT_RAREFIABLE)]
    if not traced:
        raise ValueError(f"{type(model).__name__} has no convolution or pooling layer")
    channels = next(m.in_channels for m in traced if isinstance(m, nn.Conv2d))
    hooks = [m.register_forward_pre_hook(record) for m in traced]
    try:
        outputs = [
            torch.func.functional_call(path, tensors, (torch.empty(1, channels, side, side, device="meta"),)).shape[-2]
            for side in TRACE_SIDES
        ]
    finally:
        for hook in hooks:
            hook.remove()
    growth = TRACE_SIDES[1] - TRACE_SIDES[0]
    strides = {}
    for name, seen in sides.items():
        if len(seen) != 2 or seen[1] <= seen[0] or growth % (seen[1] - seen[0]):
            raise ValueError(f"layer {name!r} is called more than once or not at a power-of-two stride")
        strides[name] = growth // (seen[1] - seen[0])
    return growth // (outputs[1] - outputs[0]), strides


def dense_stride_of(coarse_stride: int, factor: int) -> int:
    if not isinstance(factor, int) or factor < 1 or coarse_stride % factor:
        raise ValueError(f"factor must be a positive integer dividing the output stride {coarse_stride}, got {factor}")
    return coarse_stride // factor


