"""The small interface through which a model family states its geometry and its rewrite points, so that dense
inference (``fcnseg.dense``), statistics (``fcnseg.stats``) and inference rewrites (``fcnseg.inference``) need no
isinstance chain over the families and no private attribute names.

``CoarseScoring``: the FCNs of this package (VGG16, AlexNet, every backbone FCN) give their stride-32 ``score_fr``
map and its geometry. ``ConvBatchNormPairs`` and ``ConvReLUPairs``: modules name the attribute pairs an inference
rewrite may fold or fuse. Both are checked with ``isinstance`` (runtime-checkable protocols): a class implements
them by defining the members, nothing else.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CoarseScoring(Protocol):
    """An FCN whose stride-32 class scores can be read on their own.

    ``prepare_input(x)``   the padding its trunk assumes but does not apply itself (``BackboneFCN``: bottom/right
                           to a multiple of 32), applied before shifting inputs; the identity elsewhere
    ``coarse_scores(x)``   ``(N, C, H, W) -> (N, K, h, w)``: ``score_fr`` at stride 32
    ``score_cell_centre``  cell ``i`` of ``coarse_scores`` is centred on input pixel ``32 i + score_cell_centre``
    ``output_stride``      the stride of the scores the model's skips fuse down to (32, 16, 8 or 4)
    """

    num_classes: int
    output_stride: int
    score_cell_centre: float

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def coarse_scores(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ConvBatchNormPairs(Protocol):
    """A module whose ``forward`` applies each named batch norm right after its named convolution."""

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``(conv attribute, batch norm attribute)`` pairs: ``bn(conv(x))``, nothing reads ``conv(x)`` else."""
        ...


@runtime_checkable
class ConvReLUPairs(Protocol):
    """A module whose ``forward`` applies each named ReLU right after its named convolution."""

    def conv_relu_pairs(self) -> list[tuple[str, str]]:
        """``(conv attribute, relu attribute)`` pairs: ``relu(conv(x))``, nothing reads ``conv(x)`` else."""
        ...
