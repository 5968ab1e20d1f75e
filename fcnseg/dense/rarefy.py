"""Filter rarefaction (paper, section 3.2): the coarse net in one pass at a finer stride, by dilation."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.dense.coarse import (
    NOT_RAREFIABLE,
    coarse_scores,
    dense_logits,
    dense_stride_of,
    score_centre,
    trace_strides,
)
from fcnseg.inference.swap import conv_sharing_parameters
from fcnseg.models.efficientnet_lite import SameConv2d
from fcnseg.models.interface import CoarseScoring
from fcnseg.models.layers import same_padding


class RarefiedFCN(nn.Module):
    """A package FCN rarefied by ``factor``: ``dense_scores`` is the dense map, ``forward`` full-size logits."""

    def __init__(self, net: nn.Module, *, factor: int, dense_stride: int, cell_centre: float):
        super().__init__()
        self.net = net
        self.factor = factor
        self.dense_stride = dense_stride
        self.output_stride = dense_stride
        self.cell_centre = cell_centre
        self.num_classes: int = net.num_classes

    def dense_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, K, ~f h, ~f w)``: ``shift_and_stitch``'s map in one pass (borders: module doc)."""
        return coarse_scores(self.net, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return dense_logits(self.dense_scores(x), dense_stride=self.dense_stride, cell_centre=self.cell_centre,
                            height=height, width=width)  # (N, K, H, W)


class EndPaddedMaxPool2d(nn.MaxPool2d):
    """Stride-1 dilated max pool after ``end_pad`` rows and columns of -inf at the bottom/right.

    The rarefied form of a ceil-mode pool with stride ``s`` at dilation ``d``: ``end_pad = d * (s - 1)`` gives
    every shifted phase the partial windows that ceil mode gives it.
    """

    def __init__(self, kernel_size: tuple[int, int], *, dilation: tuple[int, int], padding: tuple[int, int],
                 end_pad: tuple[int, int]):
        super().__init__(kernel_size, stride=1, padding=padding, dilation=dilation)
        self.end_pad = end_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.end_pad):
            x = F.pad(x, [0, self.end_pad[1], 0, self.end_pad[0]], value=float("-inf"))
        return super().forward(x)


class FixedPadConv2d(nn.Conv2d):
    """Convolution after a fixed zero padding ``pads`` (``[left, right, top, bottom]``), for rarefied TF "same".
    Built by ``fixed_pad_conv``."""

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, list(self.pads)))


def fixed_pad_conv(conv: nn.Conv2d, *, dilation: int, pads: tuple[int, int, int, int]) -> FixedPadConv2d:
    """``conv`` at stride 1 and ``dilation`` after the fixed ``pads``, with the same parameters (and state-dict
    keys) as the layer it replaces."""
    rarefied = conv_sharing_parameters(FixedPadConv2d, conv, stride=1, padding=0, dilation=dilation,
                                       padding_mode="zeros")
    rarefied.pads = pads
    return rarefied


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _rarefied_layer(module: nn.Module, *, dilation: int) -> nn.Module:
    """The layer at stride 1 with its taps (and padding) spread ``dilation`` times as far apart."""
    if isinstance(module, SameConv2d):  # TF "same" on even sides, recomputed for the dilated kernel
        pads = []
        for kernel, stride in zip(module.kernel_size[::-1], module.stride[::-1]):
            before, _ = same_padding(stride, kernel, stride)  # an even side: any multiple of the stride
            pads += [dilation * before, dilation * (kernel - 1 - before)]
        return fixed_pad_conv(module, dilation=dilation, pads=tuple(pads))
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"cannot rarefy a convolution with padding_mode={module.padding_mode!r}")
        module.stride = (1, 1)
        module.dilation = tuple(dilation * d for d in module.dilation)
        if not isinstance(module.padding, str):  # "same" and "valid" follow the dilation by themselves
            module.padding = tuple(dilation * p for p in module.padding)
        return module
    stride, padding = _pair(module.stride), _pair(module.padding)
    if module.ceil_mode and any(padding):
        raise ValueError("cannot rarefy a ceil-mode max pool with padding")
    return EndPaddedMaxPool2d(
        _pair(module.kernel_size),
        dilation=tuple(dilation * d for d in _pair(module.dilation)),
        padding=tuple(dilation * p for p in padding),
        end_pad=tuple(dilation * (s - 1) if module.ceil_mode else 0 for s in stride),
    )


def rarefy(model: nn.Module, factor: int) -> nn.Module:
    """A rarefied deep copy (the model is untouched) whose one pass gives ``shift_and_stitch``'s dense map.

    Every conv/pool layer whose input stride ``s_in`` is at least ``r = S / factor`` gets stride 1 and dilation
    ``s_in / r``; layers before stay as they are. Package FCNs come back as a ``RarefiedFCN`` (``forward``: logits
    at input size from the dense score_fr map; skip layers of FCN-16s/8s unused, with a warning); a plain coarse
    network comes back rarefied itself, its ``forward`` giving the dense map. Raises ``ValueError`` when a layer
    would have to keep part of its stride (AlexNet's stride-4 conv1 at factor 16) or cannot be dilated.
    """
    net = copy.deepcopy(model)
    coarse_stride, strides = trace_strides(net)
    dense_stride = dense_stride_of(coarse_stride, factor)
    for name, input_stride in strides.items():
        module = net.get_submodule(name)
        if input_stride * _pair(module.stride)[0] <= dense_stride:
            continue  # still subsamples down to the dense stride: unchanged
        if input_stride < dense_stride:
            raise ValueError(f"factor {factor}: layer {name!r} would go from stride {input_stride} past {dense_stride}")
        if isinstance(module, NOT_RAREFIABLE):
            raise ValueError(f"factor {factor}: cannot rarefy {type(module).__name__} layer {name!r}")
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, _rarefied_layer(module, dilation=input_stride // dense_stride))
    if not isinstance(model, CoarseScoring):
        return net
    if model.output_stride != coarse_stride:
        warnings.warn(f"rarefy: {type(model).__name__} fuses skips down to stride {model.output_stride}; the "
                      "rarefied model uses only its stride-32 score_fr path", stacklevel=2)
    return RarefiedFCN(net, factor=factor, dense_stride=dense_stride, cell_centre=score_centre(model))


