"""Whether a rewrite is worth keeping: alternating timed calls with and without it, and the record of each choice.

A rewrite that is faster on one CPU can be slower on another (oneDNN's fused and bf16 kernels depend on AVX512,
AVX512-BF16 and AMX; channels_last helps where oneDNN has blocked kernels for the layer shapes). So
``inference_model`` times each optional rewrite against the module without it on the caller's example and keeps
it only when its median time is at least ``margin`` below the other's. The calls alternate (the order flipping
every round), so that a change of load on a shared machine hits both; a few rounds keep the start-up cost small.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# ``timer(module, example) -> seconds`` of one call ``module(example)``.
Timer = Callable[[nn.Module, torch.Tensor], float]


def seconds(module: nn.Module, example: torch.Tensor) -> float:
    """Wall-clock seconds of one call ``module(example)`` (CUDA work finished on both sides)."""
    synchronize = example.device.type == "cuda"
    if synchronize:
        torch.cuda.synchronize(example.device)
    started = time.perf_counter()
    module(example)
    if synchronize:
        torch.cuda.synchronize(example.device)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    """How a candidate is timed against a baseline: ``timer`` calls alternating for at least ``min_rounds`` and
    at most ``max_rounds`` rounds, stopping after ``min_rounds`` once the measured calls add up to ``budget_s``."""

    timer: Timer = seconds
    margin: float = 0.03  # kept only if at least 3% faster: a tie keeps the form without the rewrite
    min_rounds: int = 2  # four calls: for a model whose call takes a second (VGG16 at 360x480), 4 s per rewrite
    max_rounds: int = 5  # ten calls: for the shipped model at 360x480, about 0.3-0.5 s per rewrite
    budget_s: float = 0.5

    def medians(self, candidate: nn.Module, baseline: nn.Module, example: torch.Tensor) -> tuple[float, float]:
        """``(candidate, baseline)`` median seconds per call. Both should have run once already (the correctness
        check does it), so that one-off costs (weight packing, caches) are not timed."""
        times: tuple[list[float], list[float]] = ([], [])
        spent = 0.0
        for round_index in range(self.max_rounds):
            if round_index >= self.min_rounds and spent >= self.budget_s:
                break
            order = (0, 1) if round_index % 2 == 0 else (1, 0)
            for index in order:
                elapsed = self.timer((candidate, baseline)[index], example)
                times[index].append(elapsed)
                spent += elapsed
        return statistics.median(times[0]), statistics.median(times[1])

    def faster(self, candidate_s: float, baseline_s: float) -> bool:
        return candidate_s < (1 - self.margin) * baseline_s


@dataclass(frozen=True)
class StepDecision:
    """What ``inference_model`` did with one speed-up; ``str()`` is a line for logs, e.g.
    ``channels_last: kept (31.2 ms vs 40.1 ms without)``, ``pad_skip: dropped, slower (52.0 ms vs 50.3 ms
    without)`` or ``fuse_relu: skipped (this torch build has no oneDNN (mkldnn))``.

    ``reason``: ``"faster"``, ``"slower"``, ``"not faster by 3%"``, ``"not timed"``, or why the step failed its
    check, or why it was not tried (``tried=False``). ``ms`` / ``without_ms``: median milliseconds per call on
    the example with and without the step, where it was timed.
    """

    step: str
    kept: bool
    reason: str
    ms: float | None = None
    without_ms: float | None = None
    tried: bool = True

    def __str__(self) -> str:
        if not self.tried:
            return f"{self.step}: skipped ({self.reason})"
        timing = f"{self.ms:.1f} ms vs {self.without_ms:.1f} ms without" if self.ms is not None else None
        if self.kept:
            return f"{self.step}: kept ({timing or self.reason})"
        return f"{self.step}: dropped, {self.reason}" + (f" ({timing})" if timing else "")


def timed_decision(step: str, candidate: nn.Module, baseline: nn.Module, example: torch.Tensor,
                   timing: Timing) -> StepDecision:
    """Time ``candidate`` (``baseline`` with ``step``) against ``baseline`` and decide."""
    candidate_s, baseline_s = timing.medians(candidate, baseline, example)
    if timing.faster(candidate_s, baseline_s):
        reason = "faster"
    elif candidate_s <= baseline_s:
        reason = f"not faster by {timing.margin:.0%}"
    else:
        reason = "slower"
    return StepDecision(step, kept=reason == "faster", reason=reason, ms=candidate_s * 1e3,
                        without_ms=baseline_s * 1e3)
