"""Model size, cost and the columns of the paper's Table 1, measured from the module rather than typed in.

``count_flops`` and ``model_table`` (``fcnseg models``): parameters and FLOPs (``torch.utils.flop_counter``) of
every model at an input size. Table 1:

Each function takes a package FCN (its stride-32 ``score_fr`` map, ``fcnseg.dense.coarse_scores``) or a plain
coarse network (``convolutionalize(...)``: its output):

  ``count_parameters``    learnable parameters (fixed bilinear upsampling weights are not counted, as the paper)
  ``conv_layers``         the longest chain of convolutions from the image to the score map: the paper's "conv.
                          layers" (layers with parameters along the depth; GoogLeNet's 22 counts an inception as 2)
  ``receptive_field``     side of the input window that one interior score cell depends on
  ``output_stride``       input pixels per score cell
  ``forward_seconds``     wall-clock time of ``model(x)`` on one image, median over repeats

The geometric ones run on a *geometry copy*: a one-channel linear stand-in with the same kernels, strides,
paddings and dilations (every convolution sums its input channels and averages with positive weights, max pools
become average pools, normalizations and activation modules the identity). Its gradient is positive exactly on
the theoretical receptive field, and it costs next to nothing, whatever the real model's width (VGG16's fc6 is
4096 x 512 x 7 x 7). Models built on the meta device work too: their weights are never read.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.dense import coarse_scores
from fcnseg.models.layers import ChannelAffine, DropPath
from fcnseg.models.registry import build_model, list_models, model_spec

# Elementwise or per-channel layers: the identity in the geometry copy (they change values, not the field).
TRANSPARENT_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm, nn.Dropout, nn.Identity, nn.ReLU,
                      nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh, ChannelAffine,
                      DropPath)
# Small and positive: functional activations (F.relu6 saturates at 6) stay in their linear range.
PROBE_VALUE = 1e-8
START_SIDE = 256
MAX_SIDE = 8192


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters: those with ``requires_grad`` (a fixed bilinear upsampling is not learnt)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _ChannelSum(nn.Module):
    """``layer`` (made one-channel) applied to the sum of its input's channels."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.sum(dim=1, keepdim=True))  # (N, 1, H, W)


def _one_channel_conv(conv: nn.Conv2d) -> _ChannelSum:
    """``conv`` (a deep copy; subclasses keep their own padding rules) with one averaging 1 -> 1 channel kernel."""
    kernel_height, kernel_width = conv.kernel_size
    conv.weight = nn.Parameter(torch.full((1, 1, kernel_height, kernel_width), 1.0 / (kernel_height * kernel_width),
                                          dtype=torch.float64), requires_grad=False)
    conv.register_parameter("bias", None)
    conv.in_channels = conv.out_channels = conv.groups = 1
    return _ChannelSum(conv)


def _average_pool(pool: nn.MaxPool2d) -> nn.AvgPool2d:
    if pool.dilation not in (1, (1, 1)):
        raise ValueError(f"cannot measure a dilated max pool ({pool}): average pools have no dilation")
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)


def geometry_copy(model: nn.Module) -> nn.Module:
    """The one-channel linear stand-in for ``model`` (module docstring); ``model`` is untouched."""
    # Parameters and buffers are not copied (placeholders): every layer that reads them is replaced below.
    memo = {id(t): torch.empty(0) for t in (*model.parameters(), *model.buffers())}
    geometry = copy.deepcopy(model, memo)
    for name, module in list(geometry.named_modules()):
        if isinstance(module, nn.Conv2d):
            replacement = _one_channel_conv(module)
        elif isinstance(module, nn.MaxPool2d):
            replacement = _average_pool(module)
        elif isinstance(module, TRANSPARENT_LAYERS):  # (ChannelAffine: GoogLeNet's shift may go negative)
            replacement = nn.Identity()
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(geometry.get_submodule(parent), child, replacement)
    return geometry.eval()


def _probe(geometry: nn.Module, side: int, *, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, scores)``: a constant ``(1, channels, side, side)`` image needing grad, and its coarse map."""
    image = torch.full((1, channels, side, side), PROBE_VALUE, dtype=torch.float64, requires_grad=True)
    return image, coarse_scores(geometry, image)  # (1, 1, h, w)


def _in_channels(model: nn.Module) -> int:
    return next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def receptive_field_extent(model: nn.Module, *, side: int, cell: tuple[int, int] | None = None,
                           geometry: nn.Module | None = None) -> tuple[int, int, int, int]:
    """``(first_row, last_row, first_col, last_col)``: input pixels (of a ``side`` x ``side`` image) on which
    score ``cell`` (default: the central one) depends, from the gradient of the geometry copy."""
    geometry = geometry if geometry is not None else geometry_copy(model)
    image, scores = _probe(geometry, side, channels=_in_channels(model))
    row, col = cell if cell is not None else (scores.shape[-2] // 2, scores.shape[-1] // 2)
    (gradient,) = torch.autograd.grad(scores[0, 0, row, col], image)
    support = gradient[0].sum(0) > 0  # (side, side)
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


def receptive_field(model: nn.Module) -> int:
    """Side of the square receptive field of an interior score cell, in input pixels.

    Measured on images of growing side until the central cell's field lies strictly inside, clear of the border.
    """
    geometry = geometry_copy(model)
    side = START_SIDE
    while side <= MAX_SIDE:
        first_row, last_row, first_col, last_col = receptive_field_extent(model, side=side, geometry=geometry)
        if first_row > 0 and first_col > 0 and last_row < side - 1 and last_col < side - 1:
            height, width = last_row - first_row + 1, last_col - first_col + 1
            if height != width:
                raise ValueError(f"the receptive field is {height}x{width}, not square")
            return height
        side *= 2
    raise ValueError(f"the receptive field reaches the border of a {MAX_SIDE}-pixel image")


def output_stride(model: nn.Module) -> int:
    """Input pixels per score cell: the growth of the input side over the growth of the score map's side."""
    geometry = geometry_copy(model)
    channels = _in_channels(model)
    with torch.no_grad():
        small, large = (_probe(geometry, side, channels=channels)[1].shape[-2] for side in (START_SIDE, 2 * START_SIDE))
    return START_SIDE // (large - small)


def conv_layers(model: nn.Module, *, side: int = START_SIDE) -> int:
    """The most convolutions on one path from the image to the score map (walking the autograd graph)."""
    _, scores = _probe(geometry_copy(model), side, channels=_in_channels(model))
    depth: dict = {}  # autograd node -> most convolutions from it down to the image
    stack = [(scores.grad_fn, False)]
    while stack:  # iterative post-order: graphs of deep nets outgrow Python's recursion limit
        node, expanded = stack.pop()
        if node is None or (node in depth and not expanded):
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in depth)
            continue
        is_conv = type(node).__name__.startswith("ConvolutionBackward")
        depth[node] = int(is_conv) + max((depth[child] for child in children), default=0)
    return depth[scores.grad_fn]


def forward_seconds(model: nn.Module, *, height: int = 500, width: int = 500, repeats: int = 3,
                    warmup: int = 1) -> float:
    """Median seconds of ``model(x)`` on one ``(1, C, height, width)`` image (eval mode, no autograd)."""
    parameter = next(model.parameters())
    image = torch.randn(1, _in_channels(model), height, width, device=parameter.device, dtype=parameter.dtype)
    model.eval()
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            started = time.perf_counter()
            model(image)
            if parameter.device.type == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def model_stats(model: nn.Module, *, time_it: bool = True, height: int = 500, width: int = 500,
                repeats: int = 3) -> dict:
    """Table 1's columns for ``model``: ``{"params", "conv_layers", "receptive_field", "output_stride",
    "forward_seconds"}`` (``forward_seconds`` is ``None`` when not ``time_it``)."""
    return {
        "params": count_parameters(model),
        "conv_layers": conv_layers(model),
        "receptive_field": receptive_field(model),
        "output_stride": output_stride(model),
        "forward_seconds": forward_seconds(model, height=height, width=width, repeats=repeats) if time_it else None,
    }


def count_flops(model: nn.Module, *, height: int, width: int, in_channels: int = 3) -> int:
    """Forward FLOPs of ``model`` for one ``(1, C, height, width)`` input (multiply-add = 2 FLOPs).

    Runs on the meta device when the model is there, so no memory or time is spent on real tensors.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, in_channels, height, width, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(example)
    return counter.get_total_flops()


def model_table(*, num_classes: int, height: int, width: int) -> list[dict]:
    rows = []
    for name in list_models(standard_only=True):
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in model.parameters()),
                "gflops": count_flops(model, height=height, width=width) / 1e9,
                "description": model_spec(name).description,
            }
        )
    return rows
