"""Score a model on a data set with the paper's metrics: whole images at native size, batch 1."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from fcnseg.distributed import DistContext, all_reduce_counts, shard
from fcnseg.metrics import ConfusionMatrix, scores_from_confusion


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    ignore_index: int = 255,
    max_images: int | None = None,
    workers: int = 0,
    progress: bool = False,
    context: DistContext | None = None,
    per_image: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict:
    """The four metrics and per-class IU of ``model`` on ``dataset`` (which yields normalized images).

    A multi-task model (a named tuple of logits, e.g. SIFT Flow's ``(semantic, geometric)``) on a data set
    of as many masks is scored per head: ``scores[head]`` holds each head's metrics, and the top-level
    metrics are the first head's (the model-selection metric). A single-head model on such a data set is
    scored on the first mask. Under DDP (``context``), each rank scores images ``rank, rank + W, ...`` and
    the confusion matrices are summed over ranks: every rank gets the scores of the whole set.
    The model is put in eval mode and every module is restored to its previous mode afterwards.
    Only the arg-max over classes is scored, so ``model`` may return probabilities instead of logits, as a
    ``fcnseg.tta.TTAModel`` wrapping it does (``fcnseg eval --tta``).
    ``per_image(index, prediction, mask)``, when given, sees each image this rank scores: its index in
    ``dataset`` and the first head's ``(H, W)`` arg-max and mask (``fcnseg.report.PerImageScores``).
    """
    context = context or DistContext()
    modes = {module: module.training for module in model.modules()}  # frozen batch norm stays frozen
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count < context.world_size:
        raise ValueError(f"{count} images to score cannot be shared by {context.world_size} ranks")
    indices = shard(count, context)
    loader = DataLoader(Subset(dataset, indices), batch_size=1, num_workers=workers)
    matrices: dict[str, ConfusionMatrix] = {}
    batches = tqdm(loader, total=len(loader), desc="eval", disable=not progress, leave=False)
    for index, (image, target) in zip(indices, batches, strict=True):
        outputs = model(image.to(device))  # (1, K, H, W), or a named tuple of them
        for position, (head, (logits, mask)) in enumerate(_heads(outputs, target).items()):
            if head not in matrices:
                matrices[head] = ConfusionMatrix(num_classes if not matrices else logits.shape[1], ignore_index)
            prediction = logits.argmax(1)  # (1, H, W)
            matrices[head].update(prediction, mask.to(device))
            if per_image is not None and position == 0:  # the first head, the one scored at top level
                per_image(index, prediction[0], mask[0])
    for module, training in modes.items():
        module.training = training
    per_head = {}
    for head, matrix in (matrices or {"out": ConfusionMatrix(num_classes, ignore_index)}).items():
        per_head[head] = scores_from_confusion(all_reduce_counts(matrix.counts().to(device)))
        per_head[head]["num_images"] = count
    scores = dict(next(iter(per_head.values())))
    if len(per_head) > 1:
        scores.update(per_head)
    return scores


def _heads(outputs, target) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{head name: (logits, mask)}``: one ``"out"`` head, or one per field of a named tuple of logits."""
    if isinstance(outputs, torch.Tensor):
        mask = target[0] if isinstance(target, (list, tuple)) else target
        return {"out": (outputs, mask)}
    names = getattr(outputs, "_fields", [f"head{i}" for i in range(len(outputs))])
    return {name: (logits, mask) for name, logits, mask in zip(names, outputs, target)}


def format_scores(scores: dict, class_names: tuple[str, ...] | list[str]) -> str:
    """The four metrics in percent and a per-class IU table, as plain text."""
    lines = [
        f"pixel acc.  {100 * scores['pixel_acc']:6.2f}",
        f"mean acc.   {100 * scores['mean_acc']:6.2f}",
        f"mean IU     {100 * scores['mean_iu']:6.2f}",
        f"f.w. IU     {100 * scores['fwavacc']:6.2f}",
        "",
        f"{'class':<16}{'IU':>8}",
    ]
    for name, iu in zip(class_names, scores["per_class_iu"]):
        lines.append(f"{name:<16}{'n/a' if iu != iu else f'{100 * iu:.2f}':>8}")
    return "\n".join(lines)
