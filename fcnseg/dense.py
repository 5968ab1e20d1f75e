"""Dense output from a coarse FCN (paper, section 3.2): shift-and-stitch, and filter rarefaction.

``coarse_scores(model, x)`` is the stride-``S`` score map: ``score_fr`` (``S = 32``) of a package FCN, the output
of a plain coarse network. For a factor ``f`` dividing ``S``, the dense map has stride ``r = S / f``:

  ``shift_and_stitch``  the literal algorithm, ``f * f`` passes: shift ``(dy, dx)`` crops the first ``r * dy`` rows
                        and ``r * dx`` columns of the input, and ``dense[..., f * i + dy, f * j + dx] =
                        coarse_scores(model, shifted(dy, dx))[..., i, j]``, so dense cell ``t`` is centred on input
                        pixel ``r * t + c`` (coarse cell ``i`` on ``S * i + c``), the centre of its receptive field.
  ``rarefy``            one pass: every conv/pool layer whose input stride ``s_in`` is at least ``r`` gets stride 1
                        and dilation ``s_in / r`` (max pools included), giving the same cells in the same order.

Borders (docs/dense.md): a shifted input starts ``r * dy`` pixels into the image, so a layer before the last rarefied
stride that pads at the top/left reads zeros where the rarefied net reads image; no single pass reproduces all
``f * f`` borders. The maps are equal at every cell whose receptive field lies inside its shifted input, everywhere
when no such layer pads, and ``dense[..., ::f, ::f]`` is always ``coarse_scores(model, x)``.

Skip models (FCN-16s/8s): only their stride-32 ``score_fr`` path is used (the FCN-32s that shares their trunk).
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.efficientnet_lite import SameConv2d
from fcnseg.models.heads import SIZE_MULTIPLE, BackboneFCN, pad_to_multiple
from fcnseg.models.layers import bilinear_kernel, crop_like
from fcnseg.models.vgg import VGG16FCN

# Receptive-field centre of score_fr cell 0 on the image (docs/alignment.md): VGG16 maps x to (x + 99) / 32 -
# 3.484375, AlexNet to (x + 95) / 32 - 3.375, so cell i is centred on 32 i + 12.5 and 32 i + 13.
VGG16_SCORE_CENTRE = 12.5
ALEXNET_SCORE_CENTRE = 13.0
PACKAGE_FCNS = (VGG16FCN, FCNAlexNet, BackboneFCN)
TRACE_SIDES = (256, 512)  # two input sides for measuring each layer's input stride (on meta tensors)
RAREFIABLE = (nn.Conv2d, nn.MaxPool2d)
NOT_RAREFIABLE = (nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ConvTranspose2d,
                  nn.Upsample, nn.FractionalMaxPool2d)


def prepare_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own input padding before its trunk: BackboneFCN zero-pads bottom/right to a multiple of 32."""
    return pad_to_multiple(x, SIZE_MULTIPLE) if isinstance(model, BackboneFCN) else x


def coarse_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, K, h, w)``: the ``score_fr`` map of a package FCN, or ``model(x)`` for a plain net."""
    if isinstance(model, VGG16FCN):
        return model.score_fr(model.features(x)[2])  # (N, K, ~(H + 198) / 32 - 6, ...)
    if isinstance(model, FCNAlexNet):
        return model.score_fr(model.features(x))
    if isinstance(model, BackboneFCN):
        return model.score_fr(model.backbone(prepare_input(model, x))[2])  # (N, K, ceil(H / 32), ceil(W / 32))
    return model(x)


def score_centre(model: nn.Module) -> float:
    """Input pixel on which score_fr cell 0 is centred (cell ``i`` on ``32 i + centre``), for the upsampling."""
    if isinstance(model, VGG16FCN):
        return VGG16_SCORE_CENTRE
    if isinstance(model, FCNAlexNet):
        return ALEXNET_SCORE_CENTRE
    if isinstance(model, BackboneFCN):
        return float(model.backbone.cell_centres[2])
    raise ValueError(f"no score_fr geometry for {type(model).__name__}; pass cell_centre to dense_logits yourself")


def shift_and_stitch(model: nn.Module, image: torch.Tensor, factor: int, *,
                     batch_size: int | None = None) -> torch.Tensor:
    """Dense ``(N, K, ~f h, ~f w)`` map at stride ``S / f`` from ``f * f`` shifted inputs (module docstring).

    Shifted inputs of equal size run stacked, ``batch_size`` (default: all) at a time: with BackboneFCN all of them
    (each is re-padded to a multiple of 32, as the model does); otherwise each shift has its own size.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    stride, _ = trace_strides(model)
    dense_stride = _dense_stride(stride, factor)
    prepared = prepare_input(model, image)
    shifts = list(itertools.product(range(factor), repeat=2))  # (dy, dx), row-major
    inputs = [prepare_input(model, prepared[..., dense_stride * dy :, dense_stride * dx :]) for dy, dx in shifts]
    return interlace(_score_grouped(model, inputs, batch_size=batch_size), factor=factor)


def _score_grouped(model: nn.Module, inputs: list[torch.Tensor], *, batch_size: int | None) -> list[torch.Tensor]:
    """``coarse_scores`` of each input, stacking equal-sized inputs into batches of ``batch_size`` of them."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape), []).append(index)
    scores: list[torch.Tensor | None] = [None] * len(inputs)
    for indices in groups.values():
        step = batch_size or len(indices)
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            batch = torch.cat([inputs[i] for i in chunk])  # (len(chunk) * N, C, H', W')
            for i, part in zip(chunk, coarse_scores(model, batch).chunk(len(chunk))):
                scores[i] = part
    return scores


def interlace(scores: list[torch.Tensor], *, factor: int) -> torch.Tensor:
    """``dense[..., f * i + dy, f * j + dx] = scores[dy * f + dx][..., i, j]``; the dense map is the union of cells.

    Later shifts may have one row (column) fewer; the cells they lack lie past the dense map's last row (column).
    """
    heights = [scores[dy * factor].shape[-2] for dy in range(factor)]
    widths = [scores[dx].shape[-1] for dx in range(factor)]
    dense_height = max(factor * (h - 1) + dy + 1 for dy, h in enumerate(heights))
    dense_width = max(factor * (w - 1) + dx + 1 for dx, w in enumerate(widths))
    for (dy, dx), score in zip(itertools.product(range(factor), repeat=2), scores):
        if score.shape[-2:] != (len(range(dy, dense_height, factor)), len(range(dx, dense_width, factor))):
            raise RuntimeError(f"shift ({dy}, {dx}) scored {tuple(score.shape[-2:])} cells: cannot interlace")
    h, w = heights[0], widths[0]
    padded = [F.pad(s, [0, w - s.shape[-1], 0, h - s.shape[-2]]) for s in scores]
    stacked = torch.stack(padded)  # (f * f, N, K, h, w)
    n, k = stacked.shape[1:3]
    stacked = stacked.view(factor, factor, n, k, h, w).permute(2, 3, 4, 0, 5, 1)  # (N, K, h, f, w, f)
    return stacked.reshape(n, k, h * factor, w * factor)[..., :dense_height, :dense_width]


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
        self.normalization: str = net.normalization

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
    """Convolution after a fixed zero padding ``pads`` (``[left, right, top, bottom]``), for rarefied TF "same"."""

    def __init__(self, conv: nn.Conv2d, *, dilation: int, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, dilation=dilation,
                         groups=conv.groups, bias=conv.bias is not None, device="meta")
        self.weight = conv.weight  # the same parameters (and state-dict keys) as the layer it replaces
        self.bias = conv.bias
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, list(self.pads)))


class _CoarsePath(nn.Module):
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
    path = _CoarsePath(model)
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


def _dense_stride(coarse_stride: int, factor: int) -> int:
    if not isinstance(factor, int) or factor < 1 or coarse_stride % factor:
        raise ValueError(f"factor must be a positive integer dividing the output stride {coarse_stride}, got {factor}")
    return coarse_stride // factor


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _rarefied_layer(module: nn.Module, *, dilation: int) -> nn.Module:
    """The layer at stride 1 with its taps (and padding) spread ``dilation`` times as far apart."""
    if isinstance(module, SameConv2d):  # TF "same" on even sides, recomputed for the dilated kernel
        pads = []
        for kernel, stride in zip(module.kernel_size[::-1], module.stride[::-1]):
            before = max(kernel - stride, 0) // 2
            pads += [dilation * before, dilation * (kernel - 1 - before)]
        return FixedPadConv2d(module, dilation=dilation, pads=tuple(pads))
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
    if getattr(net, "pad_skipper", None) is not None:  # its plan assumes the un-rarefied geometry
        net.pad_skipper = None
    coarse_stride, strides = trace_strides(net)
    dense_stride = _dense_stride(coarse_stride, factor)
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
    if not isinstance(model, PACKAGE_FCNS):
        return net
    if model.output_stride != coarse_stride:
        warnings.warn(f"rarefy: {type(model).__name__} fuses skips down to stride {model.output_stride}; the "
                      "rarefied model uses only its stride-32 score_fr path", stacklevel=2)
    return RarefiedFCN(net, factor=factor, dense_stride=dense_stride, cell_centre=score_centre(model))


def patchwise(classifier: nn.Module, image: torch.Tensor, stride: int, *, input_size: tuple[int, int] = (224, 224),
              batch_size: int = 64) -> torch.Tensor:
    """The naive baseline of section 3.1: ``classifier`` on every ``input_size`` patch, ``stride`` pixels apart.

    ``(N, C, H, W) -> (N, K, rows, cols)`` with ``rows = (H - input_height) // stride + 1`` (and likewise ``cols``),
    the layout of ``convolutionalize(classifier)(image)``: cell ``(i, j)`` scores the patch whose top-left pixel is
    ``(stride * i, stride * j)``. Patches are views (``Tensor.unfold``) stacked ``batch_size`` at a time; gradients
    flow to ``image`` and the classifier. Where the two maps agree and why not everywhere: docs/paper.md.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    if not isinstance(stride, int) or stride < 1 or batch_size < 1:
        raise ValueError(f"stride and batch_size must be positive integers, got {stride} and {batch_size}")
    patch_height, patch_width = input_size
    if image.shape[-2] < patch_height or image.shape[-1] < patch_width:
        raise ValueError(f"a {tuple(image.shape[-2:])} image holds no {input_size} patch")
    windows = image.unfold(2, patch_height, stride).unfold(3, patch_width, stride)  # (N, C, rows, cols, ph, pw)
    n, _, rows, cols = windows.shape[:4]
    cells = list(itertools.product(range(n), range(rows), range(cols)))  # row-major, as the score map
    scores = []
    for start in range(0, len(cells), batch_size):
        batch = torch.stack([windows[b, :, i, j] for b, i, j in cells[start : start + batch_size]])  # (B, C, ph, pw)
        scores.append(classifier(batch))  # (B, K)
    return torch.cat(scores).view(n, rows, cols, -1).permute(0, 3, 1, 2)  # (N, K, rows, cols)
