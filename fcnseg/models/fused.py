"""Convolutions fused with the ReLU (or residual add) that follows them, for inference on the CPU.

oneDNN runs a convolution and a pointwise operation on its output in one call
(``torch.ops.mkldnn._convolution_pointwise``, the kernels inductor's CPU backend uses for the same patterns), which
saves a pass over the output. It also takes weights already reordered into its blocked layout ("packed"), which
saves reordering them at every call: for VGG16's fc7 (4096 x 4096) that reorder moves 64 MiB per call, and for a
192 -> 1152 1x1 convolution at 12x15 it is a quarter of the call. Both are used only where nothing else needs
the plain path: no autograd, no tracing, CPU tensors in float32 or bf16, and no autocast left to apply (a float32
call under autocast goes the plain way, so that autocast lowers it).

``fuse_conv_relus(model)`` swaps the VGG/AlexNet pairs ``conv*``/``fc*`` + ``relu*`` for ``ConvReLU2d``;
``fcnseg.models.lite_inference`` builds EfficientNet-Lite's fused layers on the same helpers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.vgg import VGG16FCN


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a fused oneDNN call may replace the plain path for input ``x`` and ``weight``."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
            and not (x.dtype == torch.float32 and torch.is_autocast_enabled("cpu"))
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())


class PackedWeights(dict):
    """oneDNN's packed copies of a module's weights, keyed by the caller (which weight, dtype). ``deepcopy`` gives
    an empty cache: packed tensors are opaque and cannot be copied; they are packed again at the next call."""

    def __deepcopy__(self, memo: dict) -> PackedWeights:
        return type(self)()

    def get_packed(self, key: object, weight: torch.Tensor, *, padding: list[int], stride: list[int],
                   dilation: list[int], groups: int, input_shape: torch.Size) -> torch.Tensor:
        """The packed ``weight``, packed at the first call in the layout oneDNN picks for ``input_shape`` (it is
        correct for any input: oneDNN reorders again where another size wants another layout)."""
        if key not in self:
            self[key] = torch.ops.mkldnn._reorder_convolution_weight(
                weight, padding, stride, dilation, groups, list(input_shape))
        return self[key]


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
    """In every VGG16 or AlexNet FCN inside ``model``, swap (in place) each plain ``nn.Conv2d`` named ``conv<s>``
    or ``fc<s>`` whose sibling ``relu<s>`` is an ``nn.ReLU`` for a ``ConvReLU2d`` sharing its parameters, and
    that ReLU for ``nn.Identity``. Returns how many pairs were fused.

    In these models (and the reference's prototxts they follow) the names say the order: ``relu<s>`` is applied
    to ``conv<s>``'s output, in place, and nothing reads that output before it. Other models are left alone.
    """
    fused = 0
    for parent in list(model.modules()):
        if not isinstance(parent, (VGG16FCN, FCNAlexNet)):
            continue
        children = dict(parent.named_children())
        for name, child in children.items():
            if type(child) is not nn.Conv2d:
                continue
            suffix = name.removeprefix("conv") if name.startswith("conv") else name.removeprefix("fc")
            relu_name = f"relu{suffix}"
            if suffix == name or not isinstance(children.get(relu_name), nn.ReLU):
                continue
            conv_relu = ConvReLU2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                   padding=child.padding, dilation=child.dilation, groups=child.groups,
                                   bias=child.bias is not None, padding_mode=child.padding_mode, device="meta")
            conv_relu.weight, conv_relu.bias = child.weight, child.bias  # shared Parameters, not copies
            conv_relu.train(child.training)
            setattr(parent, name, conv_relu)
            setattr(parent, relu_name, nn.Identity())
            fused += 1
    return fused
