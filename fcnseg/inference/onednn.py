"""oneDNN fusions for inference on the CPU: convolutions fused with the ReLU, ReLU6 or residual add after them.

oneDNN runs a convolution and a pointwise operation on its output in one call
(``torch.ops.mkldnn._convolution_pointwise``, the kernels inductor's CPU backend uses for the same patterns), which
saves a pass over the output. It also takes weights already reordered into its blocked layout ("packed"), which
saves reordering them at every call: for VGG16's fc7 (4096 x 4096) that reorder moves 64 MiB per call, and for a
192 -> 1152 1x1 convolution at 12x15 it is a quarter of the call. Both are used only where nothing else needs
the plain path: no autograd, no tracing, CPU tensors in float32 or bf16, and no autocast left to apply (a float32
call under autocast goes the plain way, so that autocast lowers it).

These are private PyTorch ops: ``onednn_unavailable()`` probes them once (present, and equal to the plain path on
a small case) and says why not where they fail, so that ``inference_model`` skips these rewrites on such a build.

``fuse_conv_relus(model)`` swaps the ``conv_relu_pairs`` of VGG16/AlexNet FCNs (``ConvReLUPairs``) for
``ConvReLU2d``. ``fuse_lite_networks(model)`` rewrites a batch-norm-folded EfficientNet-Lite:

1. On the CPU each convolution runs with its ReLU6, or with the residual add that ends an MBConv block, as one
   oneDNN call with packed weights instead of a convolution and a second pass over its output. Elsewhere (CUDA,
   autograd, tracing) the same module runs ``F.conv2d`` then ``F.relu6`` / ``+``.
2. Stride-2 "same" padding without a padded copy of the input. On an even side TensorFlow pads ``p`` before and
   ``p + 1`` after (kernel ``k = 2 p + 3``); PyTorch's convolutions pad symmetrically, so ``SameConv2d`` copies
   its input into a padded tensor, which for a depthwise layer costs more than the convolution itself. The same
   output comes from a ``k + 1`` kernel whose first row and column are zero, padded ``p + 1`` on every side:
   output ``i`` reads inputs ``2 i - p - 1 .. 2 i + p + 2``, and the zero taps drop the first of them, leaving
   TensorFlow's ``2 i - p .. 2 i + p + 2``. On this project's CPU a 96-channel depthwise layer at 192x240 takes
   0.69 ms this way against 2.0 ms padded (docs/performance.md). Only for inference: the backward pass of the
   larger depthwise kernel is slower than that of the copy.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.inference.swap import conv_sharing_parameters, replace_modules
from fcnseg.models.efficientnet_lite import EfficientNetLite, MBConvBlock, run_blocks
from fcnseg.models.interface import ConvReLUPairs
from fcnseg.models.layers import same_padding

# The private ops these fusions call (``torch.ops.mkldnn.<name>``).
REQUIRED_OPS = ("_convolution_pointwise", "_reorder_convolution_weight")


@functools.cache
def onednn_unavailable() -> str | None:
    """Why the fused oneDNN calls cannot be used on this torch build, or ``None`` when they can: each required op
    exists and, on a small convolution, its fused ReLU and residual add equal the plain path."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    try:
        for name in REQUIRED_OPS:
            getattr(torch.ops.mkldnn, name)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 6, 7, generator=generator)
        weight, bias = torch.randn(4, 3, 3, 3, generator=generator), torch.randn(4, generator=generator)
        residual = torch.randn(1, 4, 6, 7, generator=generator)
        geometry = dict(padding=[1, 1], stride=[1, 1], dilation=[1, 1], groups=1)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # float32 both ways, whatever the caller's mode
            packed = PackedWeights().get_packed("probe", weight, input_shape=x.shape, **geometry)
            plain = F.conv2d(x, weight, bias, padding=1)
            fused_relu = onednn_convolution(x, packed, bias, activation="relu", **geometry)
            fused_add = onednn_convolution(x, packed, bias, residual=residual, **geometry)
        if not (torch.allclose(fused_relu, plain.relu(), atol=1e-4) and
                torch.allclose(fused_add, plain + residual, atol=1e-4)):
            return "torch.ops.mkldnn fused convolutions differ from the plain path on this build"
    except (AttributeError, RuntimeError, TypeError) as error:
        return f"torch.ops.mkldnn fused convolutions unusable on this build ({type(error).__name__}: {error})"
    return None


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a fused oneDNN call may replace the plain path for input ``x`` and ``weight``."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
            and not (x.dtype == torch.float32 and torch.is_autocast_enabled("cpu"))
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and onednn_unavailable() is None)


class PackedWeights(dict):
    """oneDNN's packed copies of a module's weights, keyed by the caller (which weight, dtype) and the input shape.
    ``deepcopy`` gives an empty cache: packed tensors are opaque and cannot be copied; they are packed again at the
    next call.

    The layout oneDNN picks depends on the input's shape, and a copy packed for one shape is slow at another:
    VGG16 FCN-8s (compact layout, 180x240) packed for batch 1 took 951 ms for a batch of 2, against 493 ms packed
    for batch 2; the shipped EfficientNet-Lite1 FCN-8s in bf16, packed at 180x240 (the example ``fcnseg serve``
    tunes on), took 101 ms for a 360x480 image against 22 ms packed at 360x480 (2-core AMD EPYC Zen4, 2026-12-02).
    So each input shape gets its own copy, at its first call (about 50 ms for the Lite1 model at 360x480); the
    ``MAX_ENTRIES`` most recently used are kept, bounding the memory at a few times the weights (VGG16 FCN: 123 MB
    per shape).
    """

    MAX_ENTRIES = 8  # (weight, dtype, input shape) entries: a module has at most four (weight, dtype) keys

    def __deepcopy__(self, memo: dict) -> PackedWeights:
        return type(self)()

    def get_packed(self, key: object, weight: torch.Tensor, *, padding: list[int], stride: list[int],
                   dilation: list[int], groups: int, input_shape: torch.Size) -> torch.Tensor:
        """The packed ``weight`` for ``input_shape``, packed at the first call with that shape in the layout oneDNN
        picks for it."""
        entry = (key, tuple(input_shape))
        packed = self.pop(entry, None)  # re-inserted last: the most recently used
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, padding, stride, dilation, groups, list(input_shape))
        self[entry] = packed
        while len(self) > self.MAX_ENTRIES:
            del self[next(iter(self))]
        return packed


def onednn_convolution(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, *,
                       padding: list[int], stride: list[int], dilation: list[int], groups: int,
                       activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x)`` then ``activation`` (``"relu"`` or ``"relu6"``) or ``+ residual``, in one oneDNN call."""
    if residual is not None:
        if activation is not None:
            raise ValueError("either an activation or a residual add, not both")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, packed_weight, bias, padding, stride, dilation, groups, "add", None, None, [], None)
    attr, scalars = {None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}[activation]
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed_weight, bias, padding, stride, dilation, groups, attr, scalars, "")


class PackedWeightsOwner(nn.Module):
    """Base of a module that keeps oneDNN-packed copies of its weights in ``self.packed``, taken at its first
    oneDNN call. Conversions and moves (``.to()``, ``.float()``, ``.cuda()``, ...) drop them, as they would be
    copies of the old tensors; after changing the weights in place, ``packed.clear()`` must follow."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed = PackedWeights()

    def _apply(self, fn, recurse=True):
        self.packed = PackedWeights()
        return super()._apply(fn, recurse)


class ConvReLU2d(PackedWeightsOwner, nn.Conv2d):
    """``relu(conv(x))``: an ``nn.Conv2d`` (same parameters and state dict) that applies its ReLU itself, in one
    oneDNN call with packed weights where ``onednn_applies``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or not onednn_applies(x, self.weight):
            return F.relu(super().forward(x))
        geometry = dict(padding=list(self.padding), stride=list(self.stride), dilation=list(self.dilation),
                        groups=self.groups)
        packed = self.packed.get_packed(x.dtype, self.weight, input_shape=x.shape, **geometry)
        return onednn_convolution(x, packed, self.bias, activation="relu", **geometry)


def fuse_conv_relus(model: nn.Module) -> int:
    """In every module of ``model`` that names its ``(conv, relu)`` pairs (``ConvReLUPairs``: the VGG16 and AlexNet
    FCNs), swap (in place) each plain ``nn.Conv2d`` whose ReLU is an ``nn.ReLU`` for a ``ConvReLU2d`` sharing its
    parameters, and that ReLU for ``nn.Identity``. Returns how many pairs were fused."""
    fused = 0
    for parent in list(model.modules()):
        if not isinstance(parent, ConvReLUPairs):
            continue
        for conv_name, relu_name in parent.conv_relu_pairs():
            conv, relu = getattr(parent, conv_name, None), getattr(parent, relu_name, None)
            if type(conv) is not nn.Conv2d or not isinstance(relu, nn.ReLU):
                continue
            setattr(parent, conv_name, conv_sharing_parameters(ConvReLU2d, conv))
            setattr(parent, relu_name, nn.Identity())
            fused += 1
    return fused


class FusedSameConv2d(PackedWeightsOwner):
    """A folded ``SameConv2d`` (weight and bias) with an optional ReLU6, and an optional residual added last.

    ``forward((N, C, H, W), residual=None) -> (N, C_out, ceil(H / s), ceil(W / s))``.

    On the CPU the weights are reordered into oneDNN's blocked layout once, at the first call, instead of at every
    call (for a 192 -> 1152 1x1 convolution at 12x15 that reordering is a quarter of the call); the buffers are
    not meant to be changed in place afterwards (``PackedWeightsOwner``).
    """

    def __init__(self, conv: nn.Conv2d, *, relu6: bool):
        super().__init__()
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
            raise ValueError("FusedSameConv2d needs a square kernel and equal strides")
        weight = conv.weight.detach().clone()  # (C_out, C_in / groups, k, k)
        bias = conv.bias.detach().clone() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        # The zero-led (k + 1)-tap kernel for even sides at stride 2 (module docstring).
        self.register_buffer("even_weight", F.pad(weight, [1, 0, 1, 0]) if conv.stride[0] == 2 else None)
        self.kernel_size = conv.kernel_size[0]
        self.stride = conv.stride[0]
        self.groups = conv.groups
        self.relu6 = relu6

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        k, stride = self.kernel_size, self.stride
        pads = [same_padding(size, k, stride) for size in x.shape[-2:]]  # [(top, bottom), (left, right)]
        weight = self.weight
        if all(before == after for before, after in pads):  # stride 1, and odd sides at stride 2
            padding = pads[0][0], pads[1][0]
        elif self.even_weight is not None and all(after == before + 1 for before, after in pads):
            weight, padding = self.even_weight, (pads[0][1], pads[1][1])
        else:  # even and odd sides mixed: pad a copy, as SameConv2d does
            (top, bottom), (left, right) = pads
            x, padding = F.pad(x, [left, right, top, bottom]), (0, 0)
        return self._convolve(x, weight, padding, residual)

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
                  residual: torch.Tensor | None) -> torch.Tensor:
        geometry = dict(padding=list(padding), stride=[self.stride] * 2, dilation=[1, 1], groups=self.groups)
        if onednn_applies(x, weight):
            packed = self.packed.get_packed((weight is self.even_weight, x.dtype), weight, input_shape=x.shape,
                                            **geometry)
            return onednn_convolution(x, packed, self.bias, activation="relu6" if self.relu6 else None,
                                      residual=residual, **geometry)
        out = F.conv2d(x, weight.to(x.dtype), self.bias.to(x.dtype), **geometry)
        if self.relu6:
            out = F.relu6(out)
        return out if residual is None else out + residual


class FusedMBConv(nn.Module):
    """``MBConvBlock`` in eval mode: expand + ReLU6, depthwise + ReLU6, project (+ skip), three calls."""

    def __init__(self, block: MBConvBlock):
        super().__init__()
        expand, depthwise, project = block.convolutions()
        self.expand = FusedSameConv2d(expand, relu6=True) if expand is not None else None
        self.depthwise = FusedSameConv2d(depthwise, relu6=True)
        self.project = FusedSameConv2d(project, relu6=False)
        self.has_skip = block.has_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x  # (N, hidden, H, W)
        h = self.depthwise(h)  # (N, hidden, H / stride, W / stride)
        return self.project(h, residual=x if self.has_skip else None)  # (N, out, H / stride, W / stride)


def batch_norms_folded(net: EfficientNetLite) -> bool:
    """Whether every batch norm of ``net`` was folded away (``fold_batch_norms`` made it ``nn.Identity``)."""
    return not any(isinstance(module, nn.BatchNorm2d) for module in net.modules())


class FusedEfficientNetLite(nn.Module):
    """Inference-only ``EfficientNetLite`` built from a batch-norm-folded one: same ``forward_features``,
    ``forward_pyramid`` and ``forward`` (and ``feature_channels``, ``stage_ends``), no parameters (buffers only).

    It computes in the dtype of its buffers: after ``.to(torch.bfloat16)`` the whole network runs in bf16 (the
    input is cast once, the features come out in bf16), without autocast's cast of every weight at every call.
    """

    def __init__(self, net: EfficientNetLite):
        super().__init__()
        if not batch_norms_folded(net):
            raise ValueError("fold the batch norms first (fcnseg.inference.fold_bn.fold_batch_norms)")
        self.stem = FusedSameConv2d(net.stem_conv, relu6=True)
        self.blocks = nn.ModuleList(FusedMBConv(block) for block in net.blocks)
        self.head = FusedSameConv2d(net.head_conv, relu6=True)
        self.fc = net.classifier
        self.stage_ends = list(net.stage_ends)
        self.feature_channels = net.feature_channels
        self.stride4_channels = net.stride4_channels
        self.variant = net.variant

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_pyramid(x)[1:]

    def forward_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.stem(x.to(self.stem.weight.dtype))  # (N, 32, H/2, W/2)
        f4, f8, f16, h = run_blocks(self.blocks, self.stage_ends, h)
        return f4, f8, f16, self.head(h)  # f32: (N, 1280, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, f32 = self.forward_features(x)
        return self.fc(f32.mean(dim=(-2, -1)))  # (N, 1000), or (N, 1280) without the classifier


def fuse_lite_networks(model: nn.Module) -> int:
    """Swap, in place, every batch-norm-folded ``EfficientNetLite`` inside ``model`` (a child, as in
    ``LiteBackbone.net``) for a ``FusedEfficientNetLite``; returns how many were swapped."""

    def replacement(parent: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
        if isinstance(child, EfficientNetLite) and batch_norms_folded(child):
            return FusedEfficientNetLite(child)
        return None

    return replace_modules(model, replacement)
