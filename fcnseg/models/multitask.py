"""Multi-task FCNs for SIFT Flow (paper, section 5): one VGG16 trunk, a semantic and a geometric head.

As the reference's siftflow-fcn32s/16s/8s (net.py), each task has its own score layers and skip/upsampling
path, named as there with a task suffix: ``score_fr_sem``, ``upscore2_sem``, ``score_pool4_sem``,
``upscore_pool4_sem``, ``score_pool3_sem``, ``upscore8_sem`` (FCN-8s), ``upscore16_sem`` (FCN-16s),
``upscore_sem`` (FCN-32s), and the same with ``_geo``. The crops are those of the single-task FCNs
(``fcnseg.models.vgg``). Training sums the two heads' losses (the reference's ``loss`` + ``loss_geo``).

``forward((N, 3, H, W)) -> SIFTFlowScores(semantic (N, 33, H, W), geometric (N, 3, H, W))`` logits: a named
tuple, so the model stays traceable and exportable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fcnseg.models.layers import BilinearUpsample, crop_like, zero_init
from fcnseg.models.vgg import VGG16FCN

# The reference's suffixes for the two tasks, and the tuple field each fills.
TASKS: dict[str, str] = {"sem": "semantic", "geo": "geometric"}
NUM_GEOMETRIC_CLASSES = 3  # sky, horizontal, vertical


class SIFTFlowScores(NamedTuple):
    semantic: torch.Tensor  # (N, num_classes, H, W)
    geometric: torch.Tensor  # (N, num_geometric_classes, H, W)


class SIFTFlowFCN(VGG16FCN):
    """VGG16 trunk (conv1_1 ... fc7, as ``VGG16FCN``) and one score/upsampling path per task.

    ``num_classes`` is the semantic head's (33 for SIFT Flow), the number checkpoints and data sets compare;
    ``head_classes`` gives both. ``output_stride`` is set by the subclasses (32, 16, 8).
    """

    name = "siftflow-fcn"
    output_stride = 8
    head_names = SIFTFlowScores._fields  # ("semantic", "geometric"): the forward's fields, in order

    def __init__(
        self,
        *,
        num_classes: int = 33,
        num_geometric_classes: int = NUM_GEOMETRIC_CLASSES,
        learnable_upsampling: bool = False,
        in_channels: int = 3,
    ):
        super().__init__(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels)
        del self.score_fr  # each task scores fc7 with its own score_fr_<task>
        self.head_classes: dict[str, int] = {"sem": num_classes, "geo": num_geometric_classes}
        for task, classes in self.head_classes.items():
            self._add_head(task, classes)

    def _upsample(self, name: str, classes: int, *, stride: int, kernel_size: int) -> None:
        learnable = self.learnable_upsampling
        self.add_module(name, BilinearUpsample(classes, stride=stride, kernel_size=kernel_size, learnable=learnable))

    def _score_layer(self, name: str, in_channels: int, classes: int) -> None:
        conv = nn.Conv2d(in_channels, classes, 1)
        zero_init(conv)
        self.add_module(name, conv)

    def _add_head(self, task: str, classes: int) -> None:
        self._score_layer(f"score_fr_{task}", 4096, classes)
        if self.output_stride == 32:
            self._upsample(f"upscore_{task}", classes, stride=32, kernel_size=64)
            return
        self._score_layer(f"score_pool4_{task}", 512, classes)
        self._upsample(f"upscore2_{task}", classes, stride=2, kernel_size=4)
        if self.output_stride == 16:
            self._upsample(f"upscore16_{task}", classes, stride=16, kernel_size=32)
            return
        self._score_layer(f"score_pool3_{task}", 256, classes)
        self._upsample(f"upscore_pool4_{task}", classes, stride=2, kernel_size=4)
        self._upsample(f"upscore8_{task}", classes, stride=8, kernel_size=16)

    def _head(self, task: str, pool3: torch.Tensor, pool4: torch.Tensor, fc7: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
        def layer(name: str) -> nn.Module:
            return getattr(self, f"{name}_{task}")

        score = layer("score_fr")(fc7)  # (N, K, h/32, w/32) on the padded image
        if self.output_stride == 32:
            return crop_like(layer("upscore")(score), 19, height, width)
        upscore2 = layer("upscore2")(score)  # (N, K, 1/16)
        score_pool4c = crop_like(layer("score_pool4")(pool4), 5, upscore2.shape[-2], upscore2.shape[-1])
        fuse_pool4 = upscore2 + score_pool4c
        if self.output_stride == 16:
            return crop_like(layer("upscore16")(fuse_pool4), 27, height, width)
        upscore_pool4 = layer("upscore_pool4")(fuse_pool4)  # (N, K, 1/8)
        score_pool3c = crop_like(layer("score_pool3")(pool3), 9, upscore_pool4.shape[-2], upscore_pool4.shape[-1])
        return crop_like(layer("upscore8")(upscore_pool4 + score_pool3c), 31, height, width)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], height: int,
                     width: int) -> SIFTFlowScores:
        pool3, pool4, fc7 = features
        semantic = self._head("sem", pool3, pool4, fc7, height, width)  # (N, 33, H, W)
        geometric = self._head("geo", pool3, pool4, fc7, height, width)  # (N, 3, H, W)
        return SIFTFlowScores(semantic=semantic, geometric=geometric)


class SIFTFlowFCN32s(SIFTFlowFCN):
    """siftflow-fcn32s: each task's score_fr upsampled 32x."""

    name = "fcn32s-siftflow"
    output_stride = 32


class SIFTFlowFCN16s(SIFTFlowFCN):
    """siftflow-fcn16s: + a pool4 skip per task."""

    name = "fcn16s-siftflow"
    output_stride = 16


class SIFTFlowFCN8s(SIFTFlowFCN):
    """siftflow-fcn8s: + pool4 and pool3 skips per task."""

    name = "fcn8s-siftflow"
    output_stride = 8
