"""The one module-swapping loop every inference rewrite uses, and a convolution clone that shares parameters."""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

ConvT = TypeVar("ConvT", bound=nn.Conv2d)


def replace_modules(model: nn.Module, replacement: Callable[[nn.Module, str, nn.Module], nn.Module | None]) -> int:
    """Swap, in place, each child ``child`` (named ``name`` in ``parent``) for ``replacement(parent, name, child)``
    where that is not ``None``; every module of ``model`` is visited once, as it was before any swap (a new
    module's own children are not visited). Returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(parent, name, child)
            if new is not None:
                setattr(parent, name, new)
                swapped += 1
    return swapped


def conv_sharing_parameters(cls: type[ConvT], conv: nn.Conv2d, **overrides) -> ConvT:
    """A ``cls`` (an ``nn.Conv2d`` subclass) with ``conv``'s geometry, except ``overrides`` (``dilation=...``),
    holding ``conv``'s very ``weight`` and ``bias`` Parameters (not copies): optimizers and state dicts see no
    change. Built on the meta device, so no memory is allocated for the weights it drops."""
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    padding_mode=conv.padding_mode)
    geometry.update(overrides)
    clone = cls(conv.in_channels, conv.out_channels, conv.kernel_size, bias=conv.bias is not None, device="meta",
                **geometry)
    clone.weight, clone.bias = conv.weight, conv.bias
    clone.train(conv.training)
    return clone
