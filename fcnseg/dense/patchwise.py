"""The naive patchwise baseline of section 3.1: a classifier on every patch."""

from __future__ import annotations

import itertools

import torch
from torch import nn


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
