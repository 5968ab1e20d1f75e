"""Frozen EfficientNet-Lite blocks run in their inference form while the rest of the net trains.

``freeze_backbone_stride`` leaves the backbone's first layers at their initial weights, with their batch norm in
eval mode: for those layers a training step is inference. The plain blocks still run convolution, batch norm and
ReLU6 as three passes over each high-resolution tensor; ``FrozenMBConv`` runs the same block as
``fcnseg.inference.onednn.FusedMBConv`` does (batch norm folded into the convolutions, ReLU6 and the residual add
fused into them by oneDNN, no padded copies): the same outputs up to float rounding, faster (on the Zen4, alone
2.4x the plain blocks under bf16 autocast, ``bench/frozen_blocks.py``; inside an fcn4s-lite1 step frozen to stride 8,
111-135 ms against 146-192 ms, and the step 1.07-1.14x faster; docs/performance.md). Nothing is saved for
autograd either way (no input or parameter of these layers requires gradients).

A ``FrozenMBConv`` adopts the block's own submodules under their own names, so the model's parameters, state dict
and checkpoints are those of the plain model. The fused twin is built from them at the first call and rebuilt
whenever they change (``load_state_dict``, ``.to()``, buffers broadcast by DDP), so it never runs stale weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fcnseg.inference.fold_bn import fold_conv_bn
from fcnseg.inference.onednn import FusedMBConv
from fcnseg.inference.swap import replace_modules
from fcnseg.models.efficientnet_lite import MBConvBlock


class FrozenMBConv(MBConvBlock):
    """An ``MBConvBlock`` whose parameters do not train, computed by its batch-norm-folded ``FusedMBConv`` twin.

    It is built from a block, not from arguments: it takes that block's submodules (not copies), so
    ``convolutions()`` and ``conv_bn_pairs()`` name the same layers and the state dict has the same keys.

    ``forward((N, C, H, W)) -> (N, C_out, H / stride, W / stride)``, without autograd. In training mode the
    block's stochastic depth (``drop_path``) still applies to the residual branch, drawing the same random numbers
    as the plain block; its batch norm is always used with its running statistics (as ``freeze_backbone_stride``
    requires), whatever the mode.
    """

    def __init__(self, block: MBConvBlock):
        nn.Module.__init__(self)  # not MBConvBlock's: the layers are the block's own, adopted below
        if any(parameter.requires_grad for parameter in block.parameters()):
            raise ValueError("FrozenMBConv needs a block whose parameters are frozen (requires_grad False)")
        for name, child in block.named_children():  # same names, so the same state-dict keys
            self.add_module(name, child)
        self.has_skip = block.has_skip
        self._twin: tuple[list[torch.Tensor], FusedMBConv] | None = None  # (source tensors, twin): not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        twin = self._current_twin()
        # float32 on the CPU even under bf16 autocast: oneDNN fuses only outside autocast, and the frozen
        # layers' outputs are the trained layers' inputs.
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            x = x.float()
            if not (self.has_skip and self.training and self.drop_path.rate > 0):
                return twin(x)
            h = twin.expand(x) if twin.expand is not None else x  # (N, hidden, H, W)
            branch = twin.project(twin.depthwise(h))  # (N, out, H, W)
            return self.drop_path(branch) + x

    def _current_twin(self) -> FusedMBConv:
        sources = [tensor.detach() for tensor in self.state_dict().values()]
        if self._twin is None or not _same_tensors(self._twin[0], sources):
            self._twin = None  # not copied into the twin
            folded = copy.deepcopy(self)
            for conv_name, bn_name in folded.conv_bn_pairs():
                fold_conv_bn(getattr(folded, conv_name), getattr(folded, bn_name))
            self._twin = [tensor.clone() for tensor in sources], FusedMBConv(folded)
        return self._twin[1]


def _same_tensors(cached: list[torch.Tensor], current: list[torch.Tensor]) -> bool:
    return len(cached) == len(current) and all(
        a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(cached, current))


def run_frozen_blocks_fused(model: nn.Module, frozen_layers: list[nn.Module]) -> int:
    """Swap, in place, each ``MBConvBlock`` among ``frozen_layers`` (``freeze_backbone_layers``' result) inside
    ``model`` for a ``FrozenMBConv``; returns how many were swapped (0 for backbones without MBConv blocks)."""
    frozen_ids = {id(layer) for layer in frozen_layers if isinstance(layer, MBConvBlock)}

    def replacement(parent: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
        return FrozenMBConv(child) if id(child) in frozen_ids else None

    return replace_modules(model, replacement)
