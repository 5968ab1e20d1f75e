"""The paper's four metrics (section 5) from a confusion matrix, as the reference's score.py.

With ``n_ij`` the number of pixels of class ``i`` predicted as ``j``, ``t_i = sum_j n_ij`` and
``t = sum_i t_i``:

- pixel accuracy  ``sum_i n_ii / t``
- mean accuracy   ``mean_i n_ii / t_i`` over classes present in the ground truth
- mean IU         ``mean_i n_ii / (t_i + sum_j n_ji - n_ii)`` over classes present in either
- f.w. IU         ``sum_i t_i * IU_i / t``

A class absent from both prediction and ground truth has IU NaN and is left out of the mean,
as ``np.nanmean`` does in the reference. Rows are ground truth, columns predictions.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts of ``(target, pred)`` pairs, ignored pixels left out."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).to(target.device).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or equal {ignore_index}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted labels must lie in [0, {num_classes})")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(hist: torch.Tensor | np.ndarray) -> dict:
    """The four metrics and per-class IU and accuracy from a confusion matrix (pure function)."""
    hist = torch.as_tensor(hist).double().cpu()
    diag = hist.diag()
    gt_count = hist.sum(1)
    pred_count = hist.sum(0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_acc = (diag / gt_count).numpy()  # NaN where the class is absent from the ground truth
        per_class_iu = (diag / (gt_count + pred_count - diag)).numpy()  # NaN where absent from both
    freq = (gt_count / total).numpy() if total > 0 else np.zeros(len(diag))
    present = freq > 0
    return {
        "pixel_acc": float(diag.sum() / total) if total > 0 else float("nan"),
        "mean_acc": _nanmean(per_class_acc),
        "mean_iu": _nanmean(per_class_iu),
        "fwavacc": float((freq[present] * per_class_iu[present]).sum()) if total > 0 else float("nan"),
        "per_class_iu": per_class_iu.tolist(),
        "per_class_acc": per_class_acc.tolist(),
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; one ``bincount`` per update, on the inputs' device.

    ``update(pred, target)`` takes label maps (tensors or arrays) of any equal shape; ``compute()``
    returns ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fwavacc`` (fractions) and ``per_class_iu``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.hist: torch.Tensor | None = None

    def reset(self) -> None:
        self.hist = None

    def update(self, pred, target) -> None:
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        counts = confusion_counts(pred, target, self.num_classes, self.ignore_index)
        self.hist = counts if self.hist is None else self.hist + counts.to(self.hist.device)

    def counts(self) -> torch.Tensor:
        if self.hist is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.hist

    def compute(self) -> dict:
        return scores_from_confusion(self.counts())
