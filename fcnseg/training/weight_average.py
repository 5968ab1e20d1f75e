"""An exponential moving average of the weights (Polyak averaging), validated and saved instead of the weights the
optimizer holds: config key ``ema_decay``.

After optimizer step ``t`` (1-based), every floating-point parameter and buffer of the average (batch-norm running
statistics included) moves toward the trained model's::

    average = decay_t * average + (1 - decay_t) * weights,    decay_t = min(ema_decay, (1 + t) / (10 + t))

The ``(1 + t) / (10 + t)`` warm-up (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``, timm's
``ModelEma`` warm-up) keeps the random initialization from outweighing the first steps; integer buffers (batch
norm's ``num_batches_tracked``) are copied. The average lives in a second copy of the model in eval mode, so that
validation scores it as it is; a checkpoint stores it as ``state_dict`` (what eval, predict and export load) and the
optimizer's weights as ``trained_state_dict`` (what ``--resume`` trains on).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class WeightAverage:
    """The averaged copy of a model; ``update_average`` moves it after every optimizer step."""

    model: nn.Module  # in eval mode, no gradients: validated and saved
    decay: float  # ``ema_decay``: the decay the warm-up rises to


def decay_at(step: int, *, decay: float) -> float:
    """``decay_t`` after optimizer step ``step`` (1-based): the warm-up ``(1 + t) / (10 + t)``, capped at ``decay``."""
    return min(decay, (1 + step) / (10 + step))


def start_average(model: nn.Module, *, decay: float) -> WeightAverage:
    """An average that starts as a copy of ``model`` (its memory format and device included)."""
    if not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
    averaged = copy.deepcopy(model).eval()
    for parameter in averaged.parameters():
        parameter.requires_grad_(False)
    return WeightAverage(model=averaged, decay=decay)


def update_average(average: WeightAverage, model: nn.Module, *, step: int) -> None:
    """Move ``average`` toward ``model``'s weights after optimizer step ``step`` (1-based)."""
    weight = 1 - decay_at(step, decay=average.decay)
    averaged, trained = average.model.state_dict(), model.state_dict()
    floats = [key for key, value in averaged.items() if value.is_floating_point()]
    with torch.no_grad():
        torch._foreach_lerp_([averaged[key] for key in floats], [trained[key] for key in floats], weight)
        for key, value in averaged.items():
            if not value.is_floating_point():
                value.copy_(trained[key])
