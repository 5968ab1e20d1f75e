"""The fastest equivalent module for inference: ``inference_model(model, example) -> nn.Module``.

Each speed-up is checked against the plain path (``model.eval()`` under ``torch.inference_mode``) on
``example`` and dropped when its output differs by more than ``tolerance`` (relative to the largest logit).
Each optional one is then timed against the module without it on ``example`` (``timing.py``: alternating calls,
medians) and kept only when at least ``margin`` (3%) faster, so that a CPU whose kernels do not favour a
rewrite (no AVX512 or AMX, another oneDNN) keeps the plain form. In order, each on the module kept so far:

1. batch norm folded into the preceding convolution (EfficientNet-Lite: each ``SameConv2d`` + ``BatchNorm2d``
   pair; the conv gains a bias, the norm becomes ``nn.Identity``). Not timed: it is strictly less work on any
   device (the norm's pass over each convolution's output goes, the bias is added inside the convolution, the
   convolution keeps its size), and ``fuse_lite`` needs it. The caller's model is left untouched.
2. channels_last weights and inputs (oneDNN's fast layout on CPU, cuDNN's tensor-core layout on GPU), timed.
3. exact rewrites, each timed: EfficientNet-Lite with each convolution fused with its ReLU6 or residual add and
   stride-2 "same" padding without copies (``fuse_lite``, ``onednn.py``); the convolutionalized fc6 of
   VGG16/AlexNet as one matrix multiply (``unfold_fc6``, ``unfold_fc.py``); their other convolutions fused with
   their ReLUs, with packed weights (``fuse_relu``, ``onednn.py``); fixed bilinear upsampling as a grouped
   transposed convolution (``channelwise_upsample``); reference-layout VGG16 FCNs wrapped to skip the constant
   part of their 100-pixel pad (``pad_skip``). A mismatch of the first four raises: it would be a bug.
   The oneDNN rewrites call private PyTorch ops: where this torch build lacks them or they misbehave
   (``onednn.onednn_unavailable``), they are skipped with a one-line warning and the model runs without them.
4. optionally ``torch.compile`` with inductor's weight freezing (``compile=True``; then EfficientNet-Lite is left
   to inductor's own fusions): compiled at the first call on ``example``; any exception, or a mismatch, falls
   back to step 3's module; timed like the others.
5. optionally bf16 (``bf16=True``; on CUDA, and on CPUs whose oneDNN has bf16 kernels, as AVX512-BF16 or AMX):
   autocast, and the fused EfficientNet-Lite computing in bf16 end to end; checked with the looser
   ``bf16_tolerance``, and timed. On this project's CPU (AMX) it is for the VGG16 FCNs and EfficientNet-Lite,
   not for AlexNet's grouped layers and LRN (docs/performance.md).

The result's ``steps`` names the speed-ups kept; its ``decisions`` (``StepDecision``) say for each one tried
whether it was kept and why, with the measured times (``str(decision)``: ``channels_last: kept (31.2 ms vs
40.1 ms without)``).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from fcnseg.devices import bf16_supported
from fcnseg.inference.channelwise_upsample import channelwise_upsampling
from fcnseg.inference.fold_bn import fold_batch_norms, fold_conv_bn
from fcnseg.inference.onednn import (
    FusedEfficientNetLite,
    PackedWeightsOwner,
    fuse_conv_relus,
    fuse_lite_networks,
    onednn_unavailable,
)
from fcnseg.inference.pad_skip import pad_skipping
from fcnseg.inference.timing import StepDecision, Timer, Timing, seconds, timed_decision
from fcnseg.inference.unfold_fc import unfold_large_convolutions

__all__ = ["InferenceModule", "StepDecision", "Timer", "bf16_supported", "bf16_variant", "fold_batch_norms",
           "fold_conv_bn", "inference_model"]


class InferenceModule(nn.Module):
    """``forward((N, C, H, W)) -> (N, K, H, W)`` under ``torch.inference_mode``, inputs made channels_last."""

    def __init__(self, model: nn.Module, *, channels_last: bool, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.compiled = None  # set by inference_model when torch.compile passed its check
        self.steps: list[str] = []  # the speed-ups this module applies, for logs and tests
        self.decisions: list[StepDecision] = []  # every speed-up tried, kept or not, and why

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            run = self.compiled if self.compiled is not None else self.model
            if self.autocast_dtype is None:
                return run(x)
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                return run(x).float()


def _derived(fast: InferenceModule, model: nn.Module, *, autocast_dtype: torch.dtype | None = None
             ) -> InferenceModule:
    """A module like ``fast`` (layout, compiled module, history) running ``model``."""
    derived = InferenceModule(model, channels_last=fast.channels_last,
                              autocast_dtype=autocast_dtype or fast.autocast_dtype)
    derived.compiled = fast.compiled
    derived.steps, derived.decisions = list(fast.steps), list(fast.decisions)
    return derived


def bf16_variant(fast: InferenceModule) -> InferenceModule:
    """``fast`` under bf16 autocast; a copy of its fused EfficientNet-Lite networks holds bf16 weights, so that
    they compute in bf16 end to end (autocast does not reach their oneDNN calls)."""
    model = fast.model
    if any(isinstance(module, FusedEfficientNetLite) for module in model.modules()):
        model = copy.deepcopy(model)
        for module in model.modules():
            if isinstance(module, FusedEfficientNetLite):
                module.to(torch.bfloat16)
    variant = _derived(fast, model, autocast_dtype=torch.bfloat16)  # compile and fuse_lite exclude each other
    variant.steps.append("bf16")
    return variant


def _structural_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules holding the very same parameters, buffers and oneDNN-packed weights: a
    rewrite swaps modules in the copy, leaving ``model`` as it was, and no weight is copied."""
    shared = itertools.chain(model.parameters(), model.buffers(),
                             (module.packed for module in model.modules() if isinstance(module, PackedWeightsOwner)))
    return copy.deepcopy(model, {id(item): item for item in shared})


def _max_error(module: nn.Module, expected: torch.Tensor, example: torch.Tensor) -> float:
    got = module(example).float()
    if got.shape != expected.shape:
        return float("inf")
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-3)).item()  # all-zero logits: absolute


def _recorded(fast: InferenceModule, decision: StepDecision) -> InferenceModule:
    fast.decisions.append(decision)
    return fast


@dataclass(frozen=True)
class _Trial:
    """The plain outputs on ``example``, and how a candidate is judged against them: checked within
    ``tolerance``, then timed with ``timing`` (``None``: kept untimed when it passes its check)."""

    expected: torch.Tensor
    example: torch.Tensor
    tolerance: float
    timing: Timing | None

    def choose(self, step: str, current: InferenceModule, candidate: InferenceModule, *, exact: bool = False,
               tolerance: float | None = None) -> InferenceModule:
        """``candidate`` (``current`` with ``step``) if it matches and is faster, else ``current``; the decision
        is recorded on the one returned. ``exact``: a mismatch is a bug and raises."""
        tolerance = self.tolerance if tolerance is None else tolerance
        error = _max_error(candidate, self.expected, self.example)  # also its untimed first call
        if error > tolerance:
            if exact:
                raise RuntimeError(f"inference_model step {step!r} changed the output (relative error {error:.2e})")
            reason = "inaccurate" if step == "bf16" else "output differs"
            return _recorded(current, StepDecision(step, kept=False,
                                                   reason=f"{reason}: relative error {error:.1e} > {tolerance:.0e}"))
        if self.timing is None:
            decision = StepDecision(step, kept=True, reason="not timed")
        else:
            decision = timed_decision(step, candidate, current, self.example, self.timing)
        if not decision.kept:
            return _recorded(current, decision)
        candidate.steps, candidate.decisions = current.steps + [step], current.decisions + [decision]
        return candidate


def _plain_module(model: nn.Module, trial: _Trial) -> InferenceModule:
    """``model`` (in eval mode) with its batch norms folded: a copy in a plain ``InferenceModule``."""
    folded, count = fold_batch_norms(model)
    fast = InferenceModule(folded, channels_last=False)
    error = _max_error(fast, trial.expected, trial.example)  # also the first call of the baseline
    if not count:
        return fast
    if error > trial.tolerance:
        fast = InferenceModule(copy.deepcopy(model), channels_last=False)
        _max_error(fast, trial.expected, trial.example)
        return _recorded(fast, StepDecision("fold_bn", kept=False,
                                            reason=f"output differs: relative error {error:.1e}"))
    fast.steps.append("fold_bn")
    return _recorded(fast, StepDecision("fold_bn", kept=True,
                                        reason=f"{count} conv + batch norm pairs; always less work, not timed"))


def _exact_rewrites(fast: InferenceModule, trial: _Trial, *, compile: bool) -> InferenceModule:
    """Each exact rewrite tried on a copy of the kept module's structure (same weights), kept when faster.
    Inductor makes its own conv + ReLU6 / add fusions, so a model to compile keeps its plain (folded)
    EfficientNet-Lite. The oneDNN rewrites are skipped, with a warning, where this torch build cannot run them."""
    onednn_problem = onednn_unavailable() if trial.example.device.type == "cpu" else None  # elsewhere: plain
    rewrites = [("fuse_lite", fuse_lite_networks, True)] if not compile else []
    rewrites += [("unfold_fc6", unfold_large_convolutions, False), ("fuse_relu", fuse_conv_relus, True),
                 ("channelwise_upsample", channelwise_upsampling, False)]
    skipped = [step for step, _, needs_onednn in rewrites if needs_onednn and onednn_problem is not None]
    if skipped:
        warnings.warn(f"inference_model: skipping {', '.join(skipped)}: {onednn_problem}", stacklevel=3)
    for step, rewrite, _ in rewrites:
        if step in skipped:
            _recorded(fast, StepDecision(step, kept=False, tried=False, reason=onednn_problem))
            continue
        model = _structural_copy(fast.model)
        if rewrite(model):
            fast = trial.choose(step, fast, _derived(fast, model), exact=True)
    return fast


def _compiled(fast: InferenceModule, trial: _Trial) -> InferenceModule:
    """``fast`` with ``fast.model`` compiled with frozen weights, if that runs, matches and is faster."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        candidate = _derived(fast, fast.model)
        candidate.compiled = torch.compile(fast.model)
        candidate(trial.example)  # compiles
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        warnings.warn(f"torch.compile failed, running eagerly: {type(exc).__name__}: {exc}", stacklevel=3)
        return _recorded(fast, StepDecision("compile", kept=False, reason=f"failed: {type(exc).__name__}"))
    return trial.choose("compile", fast, candidate)


def inference_model(
    model: nn.Module, example: torch.Tensor, *, compile: bool = False, bf16: bool = False,
    tolerance: float = 1e-4, bf16_tolerance: float = 5e-2, timed: bool = True, timer: Timer | None = None,
    margin: float = 0.03,
) -> InferenceModule:
    """The fastest module equivalent to ``model.eval()`` on ``example``'s device, checked on ``example``.

    ``example``: a ``(N, C, H, W)`` input of the kind that will be served (on the target device): each optional
    rewrite is timed on it, so its size decides what is kept. The returned module runs under
    ``torch.inference_mode`` (outputs cannot be used for autograd) and shares no parameters with ``model``.
    ``steps`` on the result names the speed-ups kept, ``decisions`` every one tried and why (module docstring).

    ``timed=False``: keep every rewrite that passes its check, without timing (for tests, or a known CPU).
    ``timer(module, example) -> seconds`` of one call (default: wall clock); ``margin``: how much faster a
    rewrite must be to be kept. The timing costs 4 to 10 calls on ``example`` per rewrite that applies.
    """
    model = model.eval().to(example.device)
    with torch.inference_mode():
        expected = model(example).float()
    timing = Timing(timer=timer or seconds, margin=margin) if timed else None
    trial = _Trial(expected=expected, example=example, tolerance=tolerance, timing=timing)
    fast = _plain_module(model, trial)
    in_channels_last = InferenceModule(copy.deepcopy(fast.model).to(memory_format=torch.channels_last),
                                       channels_last=True)
    fast = trial.choose("channels_last", fast, in_channels_last)
    fast = _exact_rewrites(fast, trial, compile=compile)
    skipping = pad_skipping(fast.model)
    if skipping is not None:
        fast = trial.choose("pad_skip", fast, _derived(fast, skipping))
    if compile:
        fast = _compiled(fast, trial)
    if bf16:
        if bf16_supported(example.device):
            fast = trial.choose("bf16", fast, bf16_variant(fast), tolerance=bf16_tolerance)
        else:
            _recorded(fast, StepDecision("bf16", kept=False, tried=False,
                                         reason=f"no fast bf16 kernels on {example.device.type}"))
    return fast.eval()
