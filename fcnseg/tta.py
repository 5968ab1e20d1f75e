"""Test-time augmentation: average a model's class probabilities over flipped and rescaled views of the input.

``parse_tta("flip,scales=0.75,1,1.25")`` turns the CLI's ``--tta`` spec into a ``TTAConfig``; ``TTAModel(model,
flip=..., scales=...)`` wraps any model whose ``forward((N, C, H, W))`` gives logits at input size (the plain model,
``fcnseg.inference.inference_model``'s fast module, or a rarefied ``fcnseg.dense.rarefy`` model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TTA_SPEC_HELP = "'flip', 'scales=0.75,1,1.25' or both: 'flip,scales=0.75,1,1.25'"


@dataclass(frozen=True)
class TTAConfig:
    """Which views to average: each scale in ``scales``, and with ``flip`` each also mirrored left-right."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError("TTA needs at least one scale")
        for scale in self.scales:
            if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
                raise ValueError(f"TTA scale must be a positive number, got {scale!r}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"TTA scales repeat a value: {self.scales}")

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def spec(self) -> str:
        """The canonical ``--tta`` spec, which ``parse_tta`` reads back: ``"flip,scales=0.75,1,1.25"``."""
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,) or not self.flip:
            parts.append("scales=" + ",".join(f"{scale:g}" for scale in self.scales))
        return ",".join(parts)


def parse_tta(spec: str) -> TTAConfig:
    """``"flip"``, ``"scales=0.75,1,1.25"`` or ``"flip,scales=0.75,1,1.25"`` (either order) -> ``TTAConfig``.

    Items are comma-separated; the numbers after ``scales=`` run until the next non-number item. Raises
    ``ValueError`` naming the bad part: an unknown or repeated item, a scale that is not a positive number.
    """
    if not spec.strip():
        raise ValueError(f"empty TTA spec; expected {TTA_SPEC_HELP}")
    flip = False
    scales: list[float] | None = None
    in_scales = False  # whether a bare number continues the scales list
    for item in (part.strip().lower() for part in spec.split(",")):
        if item == "flip":
            if flip:
                raise ValueError(f"TTA spec {spec!r}: 'flip' given twice")
            flip, in_scales = True, False
        elif item.startswith("scales="):
            if scales is not None:
                raise ValueError(f"TTA spec {spec!r}: 'scales=' given twice")
            scales, in_scales = [_parse_scale(item.removeprefix("scales="), spec)], True
        elif not item:
            raise ValueError(f"TTA spec {spec!r}: empty item (two commas in a row, or a comma at an end)")
        elif item[0].isdigit() or item[0] in ".+-":
            if not in_scales:
                raise ValueError(f"TTA spec {spec!r}: number {item!r} outside 'scales=' (write scales={item},...)")
            scales.append(_parse_scale(item, spec))
        else:
            raise ValueError(f"TTA spec {spec!r}: unknown item {item!r}; expected {TTA_SPEC_HELP}")
    scales = scales or [1.0]
    repeated = sorted({scale for scale in scales if scales.count(scale) > 1})
    if repeated:
        raise ValueError(f"TTA spec {spec!r}: scale {repeated[0]:g} given twice")
    return TTAConfig(flip=flip, scales=tuple(scales))


def _parse_scale(text: str, spec: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        raise ValueError(f"TTA spec {spec!r}: scale {text!r} is not a number") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"TTA spec {spec!r}: scale {text!r} must be a positive number")
    return scale


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The input size a view at ``scale`` is run at: each side rounded, at least 1 pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


class TTAModel(nn.Module):
    """``forward((N, C, H, W)) -> (N, K, H, W)``: the mean of the softmax probabilities over the augmented views.

    Each scale ``s``: the input resized bilinearly (``align_corners=False``) to ``scaled_size(H, W, s)``, the model
    run, its logits resized bilinearly back to ``(H, W)``, softmax over classes. With ``flip``, each scale is also
    run on the left-right mirrored input and its probabilities mirrored back. Scale 1 runs the input as it is.

    The output is **probabilities, not logits** (each pixel sums to 1 over K): their arg-max is the prediction,
    which is all ``fcnseg eval`` and ``fcnseg predict`` use; do not feed them to a cross-entropy loss.
    A multi-head model's named tuple of logits gives the same named tuple of averaged probabilities, each head
    averaged on its own.
    """

    def __init__(self, model: nn.Module, *, flip: bool, scales: tuple[float, ...] = (1.0,)):
        super().__init__()
        TTAConfig(flip=flip, scales=tuple(scales))  # the same checks as the parsed spec
        self.model = model
        self.flip = flip
        self.scales = tuple(float(scale) for scale in scales)

    def forward(self, x: torch.Tensor):
        height, width = x.shape[-2:]
        total = None
        for scale in self.scales:
            if scale == 1.0:
                view = x
            else:
                view = F.interpolate(x, size=scaled_size(height, width, scale), mode="bilinear", align_corners=False)
            for flipped in (False, True) if self.flip else (False,):
                outputs = self.model(view.flip(-1) if flipped else view)  # (N, K, h, w), or a tuple of them
                heads = [self._probabilities(logits, height, width, flipped) for logits in _as_heads(outputs)]
                total = heads if total is None else [t + p for t, p in zip(total, heads)]
        views = len(self.scales) * (2 if self.flip else 1)
        means = [t / views for t in total]  # each (N, K, H, W)
        if isinstance(outputs, torch.Tensor):
            return means[0]
        return type(outputs)(*means) if hasattr(outputs, "_fields") else type(outputs)(means)

    @staticmethod
    def _probabilities(logits: torch.Tensor, height: int, width: int, flipped: bool) -> torch.Tensor:
        """``(N, K, h, w)`` logits -> ``(N, K, H, W)`` float32 probabilities, unflipped."""
        logits = logits.float()
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        probabilities = logits.softmax(1)
        return probabilities.flip(-1) if flipped else probabilities


def _as_heads(outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
