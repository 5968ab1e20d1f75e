"""The pixelwise loss (paper, section 4): cross-entropy summed over counted pixels, or their mean, per head.

Multi-task models (SIFT Flow's semantic and geometric heads) sum their heads' losses, as the reference's
``loss`` + ``loss_geo``. ``fcnseg.distributed.global_loss`` normalizes the terms over all ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss_terms(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255, loss_sample: float | None = None,
    cell_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cross-entropy summed over counted pixels, number of counted pixels)`` of ``(N, K, H, W), (N, H, W)``.

    ``loss_sample=P`` keeps each ``cell_size`` x ``cell_size`` cell of the final layer with probability P,
    the paper's emulation of patch sampling (section 4.4).
    """
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # (N, H, W)
    counted = (target != ignore_index).float()
    if loss_sample is not None and loss_sample < 1:
        n, height, width = target.shape
        cells = torch.rand(n, -(-height // cell_size), -(-width // cell_size), device=target.device) < loss_sample
        keep = cells.repeat_interleave(cell_size, 1).repeat_interleave(cell_size, 2)[:, :height, :width]
        counted = counted * keep.float()
    return (per_pixel * counted).sum(), counted.sum()


def segmentation_loss(
    logits: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    reduction: str,
    ignore_index: int = 255,
    loss_sample: float | None = None,
    cell_size: int = 32,
) -> torch.Tensor:
    """Pixelwise cross-entropy ``(N, K, H, W), (N, H, W) -> scalar``, ignoring ``ignore_index``.

    ``reduction="sum"`` is the paper's unnormalized loss; ``"mean"`` averages over counted pixels. A multi-task
    model's tuple of logits with a tuple of targets gives the sum of the heads' losses (the reference's SIFT Flow).
    """
    terms = loss_terms(logits, target, ignore_index=ignore_index, loss_sample=loss_sample, cell_size=cell_size)
    return sum(total if reduction == "sum" else total / count.clamp(min=1) for total, count in terms)


def loss_terms(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    ignore_index: int = 255,
    loss_sample: float | None = None,
    cell_size: int = 32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``pixel_loss_terms`` per head, in float32; a single-head model on a multi-label data set (SIFT Flow)
    learns the first labels."""
    if isinstance(outputs, torch.Tensor):
        outputs, targets = (outputs,), (targets[0] if isinstance(targets, (list, tuple)) else targets,)
    if len(outputs) != len(targets):
        raise ValueError(f"the model has {len(outputs)} heads but the data set gives {len(targets)} label maps")
    return [
        pixel_loss_terms(logits.float(), target, ignore_index=ignore_index, loss_sample=loss_sample,
                         cell_size=cell_size)
        for logits, target in zip(outputs, targets)
    ]
