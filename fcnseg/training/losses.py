"""The pixelwise loss (paper, section 4): cross-entropy summed over counted pixels, or their mean, per head.

Multi-task models (SIFT Flow's semantic and geometric heads) sum their heads' losses, as the reference's
``loss`` + ``loss_geo``. ``fcnseg.distributed.global_loss`` normalizes the terms over all ranks.

Two recipe options change which pixels count and how much:

- ``class_weights`` (K,): pixel ``i`` contributes ``w[target_i] * CE_i`` and ``w[target_i]`` to the normalizer,
  so the mean loss is torch's weighted ``cross_entropy(..., weight=w, reduction="mean")``;
- online hard example mining (``ohem_threshold``, ``ohem_min_kept``): of the counted pixels, keep those whose
  softmax probability of the true class is below the threshold; if fewer than ``min_kept``, keep instead the
  ``min(min_kept, counted)`` lowest-probability ones (ties: the earlier pixel in (N, H, W) order). Applied per call,
  that is per micro-batch and rank, after ``loss_sample``; the mean is over the kept pixels (weighted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_pixels(
    true_class_prob: torch.Tensor, counted: torch.Tensor, *, threshold: float, min_kept: int
) -> torch.Tensor:
    """OHEM's kept pixels, a bool mask like ``counted`` (both ``(N, H, W)``; the probabilities need no grad)."""
    hard = counted & (true_class_prob < threshold)
    if int(hard.sum()) >= min_kept:
        return hard
    candidates = counted.flatten().nonzero().squeeze(1)  # flat indices of the counted pixels, in order
    order = torch.sort(true_class_prob.flatten()[candidates], stable=True).indices[:min_kept]  # hardest first
    kept = torch.zeros_like(counted.flatten())
    kept[candidates[order]] = True
    return kept.view_as(counted)


def pixel_loss_terms(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255, loss_sample: float | None = None,
    cell_size: int = 32, class_weights: torch.Tensor | None = None, ohem_threshold: float | None = None,
    ohem_min_kept: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cross-entropy summed over counted pixels, their number)`` of ``(N, K, H, W), (N, H, W)``; with
    ``class_weights`` (K,), the weighted sum and the sum of the counted pixels' weights.

    ``loss_sample=P`` keeps each ``cell_size`` x ``cell_size`` cell of the final layer with probability P,
    the paper's emulation of patch sampling (section 4.4). ``ohem_threshold`` keeps only hard pixels (module
    docstring).
    """
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # (N, H, W)
    counted = target != ignore_index
    if loss_sample is not None and loss_sample < 1:
        n, height, width = target.shape
        cells = torch.rand(n, -(-height // cell_size), -(-width // cell_size), device=target.device) < loss_sample
        keep = cells.repeat_interleave(cell_size, 1).repeat_interleave(cell_size, 2)[:, :height, :width]
        counted = counted & keep
    if ohem_threshold is not None:
        true_class_prob = torch.exp(-per_pixel.detach())  # softmax at the true class: CE = -log p
        counted = hard_pixels(true_class_prob, counted, threshold=ohem_threshold, min_kept=ohem_min_kept)
    weight = counted.float()  # (N, H, W)
    if class_weights is not None:
        weight = weight * class_weights.to(per_pixel)[torch.where(counted, target, 0)]
    return (per_pixel * weight).sum(), weight.sum()


def segmentation_loss(
    logits: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    reduction: str,
    ignore_index: int = 255,
    loss_sample: float | None = None,
    cell_size: int = 32,
    class_weights: torch.Tensor | None = None,
    ohem_threshold: float | None = None,
    ohem_min_kept: int = 0,
) -> torch.Tensor:
    """Pixelwise cross-entropy ``(N, K, H, W), (N, H, W) -> scalar``, ignoring ``ignore_index``.

    ``reduction="sum"`` is the paper's unnormalized loss; ``"mean"`` averages over counted pixels (weighted by
    ``class_weights`` when given). A multi-task model's tuple of logits with a tuple of targets gives the sum of
    the heads' losses (the reference's SIFT Flow).
    """
    terms = loss_terms(logits, target, ignore_index=ignore_index, loss_sample=loss_sample, cell_size=cell_size,
                       class_weights=class_weights, ohem_threshold=ohem_threshold, ohem_min_kept=ohem_min_kept)
    return sum(total if reduction == "sum" else total / count.clamp(min=1) for total, count in terms)


def loss_terms(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    ignore_index: int = 255,
    loss_sample: float | None = None,
    cell_size: int = 32,
    class_weights: torch.Tensor | None = None,
    ohem_threshold: float | None = None,
    ohem_min_kept: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``pixel_loss_terms`` per head, in float32; a single-head model on a multi-label data set (SIFT Flow)
    learns the first labels. ``class_weights`` are the data set's classes: they weight the first head only;
    every head mines its own hard pixels."""
    if isinstance(outputs, torch.Tensor):
        outputs, targets = (outputs,), (targets[0] if isinstance(targets, (list, tuple)) else targets,)
    if len(outputs) != len(targets):
        raise ValueError(f"the model has {len(outputs)} heads but the data set gives {len(targets)} label maps")
    return [
        pixel_loss_terms(logits.float(), target, ignore_index=ignore_index, loss_sample=loss_sample,
                         cell_size=cell_size, class_weights=class_weights if head == 0 else None,
                         ohem_threshold=ohem_threshold, ohem_min_kept=ohem_min_kept)
        for head, (logits, target) in enumerate(zip(outputs, targets))
    ]
