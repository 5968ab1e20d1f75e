"""Score a model on a data set with the paper's metrics: whole images at native size, batch 1."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcnseg.metrics import ConfusionMatrix


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
) -> dict:
    """The four metrics and per-class IU of ``model`` on ``dataset`` (which yields normalized images).

    The model is put in eval mode and restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    loader = DataLoader(subset, batch_size=1, num_workers=workers)
    for image, mask in tqdm(loader, total=count, desc="eval", disable=not progress, leave=False):
        logits = model(image.to(device))  # (1, K, H, W)
        matrix.update(logits.argmax(1), mask.to(device))
    model.train(was_training)
    scores = matrix.compute()
    scores["num_images"] = count
    return scores


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
