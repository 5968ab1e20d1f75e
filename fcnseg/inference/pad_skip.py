"""The reference VGG16 FCNs without computing their 100-pixel pad: same outputs, about a quarter fewer FLOPs.

The reference pads the input by 100 zero pixels (conv1_1 ``pad: 100``) so that fc6's 7x7 window fits any
input. At 360x480 that pad is 55% of every stage-1 map, and most of it is *constant*: far from the image, each
layer sees only the constant the layer before produced there, so it produces a constant too (per channel):

    c_0 = 0 (the pad),   c_l = relu(b_l + sum_{k,i} W_l[:, i, k] c_{l-1}[i]),   max pooling keeps c.

Two kinds of cells differ from ``c_l``: the image's zone of influence (the image grown by one cell per 3x3
convolution), and a thin *ring* along the map's outer border, where each convolution's own 1-pixel zero padding
enters (the ring does reach the output, so it cannot be dropped). The ring does not depend on the image.

So, while the image's zone and the ring stay apart (through pool3 at 360x480), each layer is computed only on
the image's zone, in *shifted* form ``x~ = x - c`` whose background is exactly zero: a convolution with zero
padding 2 on the zone (it grows by one cell a side, as the zone does) and a bias ``b + W c_in - c_out`` gives
``x~_out = max(conv, -c_out) = relu(.) - c_out`` with no extra pass over memory; max pooling commutes with the
shift. Before each pool the zone is widened to even coordinates, so the 2x2 windows are the reference's.
After the last such stage the zone is written into the *background* map, the reference's own activations on an
all-zero input (ring included), computed once per input size and cached, and the reference's layers run on.

Exact up to float summation order (checked against the plain model in tests/inference/test_pad_skip.py).
Inference only: the background cache holds activations of the current weights (``PadSkipper.clear()`` after
changing them). ``pad_skipping(model)`` wraps the model (``PadSkippingFCN``); the model class knows nothing of it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.layers import REFERENCE_INPUT_PAD
from fcnseg.models.vgg import VGG16_STAGES, VGG16FCN

# (block, number of 3x3 convolutions) of VGG16's stages.
STAGES: tuple[tuple[int, int], ...] = tuple((block, count) for block, count, _ in VGG16_STAGES)
CACHED_SIZES = 4  # background maps kept, most recently used first


@dataclass(frozen=True)
class Span:
    """Cells ``[start, stop)`` of one axis of a map."""

    start: int
    stop: int


@dataclass(frozen=True)
class AxisStep:
    """One VGG stage on one axis: the zeros added before (and after) the zone at the stage's input so that its
    pool windows are the reference's, and the zone after the pool (in the pooled map's cells)."""

    before: int
    after: int
    zone: Span


def plan_axis(length: int) -> list[AxisStep]:
    """For an image axis of ``length`` pixels, the leading VGG stages that can skip the pad: those whose image
    zone, widened to even cells, never reads a cell of the border ring. Stops at the first that cannot."""
    size = length + 2 * REFERENCE_INPUT_PAD - 2  # cells of conv1_1's output, the stage-1 map
    zone = Span(REFERENCE_INPUT_PAD - 1, REFERENCE_INPUT_PAD - 1 + length)  # image pixel p is centred on cell p + 99
    ring_top, ring_bottom = 0, size  # border-ring cells: [0, ring_top) and [ring_bottom, size)
    steps = []
    for block, num_convs in STAGES:
        start, stop = zone.start - num_convs, zone.stop + num_convs  # each 3x3 conv grows the zone by one a side
        before, after = start % 2, stop % 2  # widen to even cells: 2x2 pool windows start at even cells
        start, stop = start - before, stop + after
        # conv1_1 reads the pad itself (the background): no ring. Every other 3x3 conv adds one ring cell a side.
        ring_convs = num_convs - 1 if block == 1 else num_convs
        # The stage's last conv reads one cell beyond [start, stop) of the map its previous conv wrote.
        top_before_last, bottom_before_last = ring_top + ring_convs - 1, ring_bottom - (ring_convs - 1)
        if start - 1 < top_before_last or stop + 1 > bottom_before_last:
            break
        ring_top, ring_bottom = ring_top + ring_convs, ring_bottom - ring_convs
        zone = Span(start // 2, stop // 2)
        steps.append(AxisStep(before=before, after=after, zone=zone))
        size = (size + 1) // 2  # Caffe's ceil-mode pool
        ring_top, ring_bottom = (ring_top + 1) // 2, ring_bottom // 2
    return steps


class PadSkipper:
    """``features(x) -> (pool3, pool4, drop7)`` of a reference-layout ``VGG16FCN`` in eval mode, skipping
    the constant part of the pad; equal to ``model.features(x)``."""

    def __init__(self, model: nn.Module):
        if getattr(model, "layout", None) != "reference":
            raise ValueError("pad skipping applies to the reference layout (its 100-pixel pad) only")
        self.model = model
        self.backgrounds: OrderedDict[tuple, dict[int, torch.Tensor]] = OrderedDict()
        self.shifted: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        """Forget cached backgrounds and shifted biases (call after changing the weights)."""
        self.backgrounds.clear()
        self.shifted.clear()

    @torch.no_grad()
    def _shifted_layers(self, device: torch.device, dtype: torch.dtype) -> dict:
        """Per conv: ``(weight, bias b + W c_in - c_out, -c_out as (1, C, 1, 1))``."""
        key = f"{device}-{dtype}"
        if key not in self.shifted:
            layers = {}
            background = torch.zeros(self.model.in_channels, device=device, dtype=torch.float64)
            for block, num_convs in STAGES:
                for i in range(1, num_convs + 1):
                    conv = getattr(self.model, f"conv{block}_{i}")
                    weight, bias = conv.weight.double(), conv.bias.double()
                    pre = bias + weight.sum((2, 3)) @ background  # the conv's output on the background
                    out_background = pre.clamp_min(0)
                    shifted_bias = (pre - out_background).to(dtype)
                    floor = -out_background.to(dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
                    layers[f"conv{block}_{i}"] = (conv.weight, shifted_bias, floor)
                    background = out_background
            self.shifted[key] = layers
        return self.shifted[key]

    @torch.no_grad()
    def _background(self, x: torch.Tensor, num_blocks: int) -> dict[int, torch.Tensor]:
        """The reference's pool maps on an all-zero image of ``x``'s size: ``{block: (1, C, h, w)}``."""
        autocast = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        key = (tuple(x.shape[1:]), x.device, x.dtype, autocast, num_blocks)
        if key in self.backgrounds:
            self.backgrounds.move_to_end(key)
            return self.backgrounds[key]
        pools = self.model.stages(torch.zeros((1, *x.shape[1:]), device=x.device, dtype=x.dtype), last=num_blocks)
        self.backgrounds[key] = pools
        while len(self.backgrounds) > CACHED_SIZES:
            self.backgrounds.popitem(last=False)
        return pools

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, C, H, W) -> (pool3, pool4, drop7)``, as ``VGG16FCN.features``."""
        model = self.model
        rows, cols = plan_axis(x.shape[-2]), plan_axis(x.shape[-1])
        num_skipping = min(len(rows), len(cols))
        if num_skipping == 0:
            return model.features(x)
        layers = self._shifted_layers(x.device, x.dtype)
        background = self._background(x, num_skipping)
        pools = {}
        h = x  # the image; its background (the pad) is zero, shifted or not
        for (block, num_convs), row, col in zip(STAGES[:num_skipping], rows, cols):
            if row.before or row.after or col.before or col.after:
                h = F.pad(h, [col.before, col.after, row.before, row.after])  # zeros: background in shifted form
            for i in range(1, num_convs + 1):
                weight, bias, floor = layers[f"conv{block}_{i}"]
                h = F.conv2d(h, weight, bias, padding=2)  # the zone grows by one cell a side
                h = h.clamp_(min=floor.to(h.dtype))  # relu(conv) - c_out (h is bf16 under autocast)
            h = F.max_pool2d(h, 2, 2)  # (N, C, zone rows, zone cols), shifted by -c_out
            if block >= 3 or block == num_skipping:  # a skip's input or the handover: the reference's full map
                full = background[block].expand(h.shape[0], -1, -1, -1).clone()  # (N, C, h, w)
                full[..., row.zone.start : row.zone.stop, col.zone.start : col.zone.stop] = h - floor
                pools[block] = full
        pools.update(model.stages(pools[num_skipping], first=num_skipping + 1))  # the rest, as the reference
        return pools[3], pools[4], model.fully_connected(pools[5])


class PadSkippingFCN(nn.Module):
    """A reference-layout VGG16 FCN (``model``) that skips its constant pad in eval mode: ``forward`` is
    ``model.forward_head(PadSkipper.features(x), H, W)``, equal to ``model(x)``; in train mode it is ``model(x)``.
    The model itself is left as it is (``.model``)."""

    def __init__(self, model: VGG16FCN):
        super().__init__()
        self.model = model
        self.skipper = PadSkipper(model)

    def forward(self, x: torch.Tensor):
        if self.model.training:
            return self.model(x)
        height, width = x.shape[-2:]
        return self.model.forward_head(self.skipper.features(x), height, width)


def pad_skipping(model: nn.Module) -> PadSkippingFCN | None:
    """``model`` wrapped to skip its constant pad, when it is a reference-layout VGG16 FCN with a head; else
    ``None`` (other models and layouts gain nothing)."""
    if not isinstance(model, VGG16FCN) or model.layout != "reference":
        return None
    if type(model).forward_head is VGG16FCN.forward_head:  # a bare trunk (a late-fusion stream)
        return None
    return PadSkippingFCN(model)
