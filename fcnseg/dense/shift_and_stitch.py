"""Shift-and-stitch (paper, section 3.2): the literal algorithm, ``f * f`` passes over shifted inputs."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.dense.coarse import coarse_scores, dense_stride_of, prepare_input, trace_strides


def shift_and_stitch(model: nn.Module, image: torch.Tensor, factor: int, *,
                     batch_size: int | None = None) -> torch.Tensor:
    """Dense ``(N, K, ~f h, ~f w)`` map at stride ``S / f`` from ``f * f`` shifted inputs (module docstring).

    Shifted inputs of equal size run stacked, ``batch_size`` (default: all) at a time: with BackboneFCN all of them
    (each is re-padded to a multiple of 32, as the model does); otherwise each shift has its own size.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    stride, _ = trace_strides(model)
    dense_stride = dense_stride_of(stride, factor)
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


