"""Model size and cost: parameter counts and FLOPs (``torch.utils.flop_counter``) at an input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.models.zoo import MODEL_BUILDERS, MODEL_DESCRIPTIONS, build_model


def count_flops(model: nn.Module, *, height: int, width: int, in_channels: int = 3) -> int:
    """Forward FLOPs of ``model`` for one ``(1, C, height, width)`` input (multiply-add = 2 FLOPs).

    Runs on the meta device when the model is there, so no memory or time is spent on real tensors.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, in_channels, height, width, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(example)
    return counter.get_total_flops()


def model_table(*, num_classes: int, height: int, width: int) -> list[dict]:
    rows = []
    for name in MODEL_BUILDERS:
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in model.parameters()),
                "gflops": count_flops(model, height=height, width=width) / 1e9,
                "description": MODEL_DESCRIPTIONS[name],
            }
        )
    return rows
