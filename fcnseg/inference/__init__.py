"""The fastest equivalent module for inference: ``inference_model(model, example) -> nn.Module``.

Each speed-up is checked against the plain path (``model.eval()`` under ``torch.inference_mode``) on
``example`` and dropped when its output differs by more than ``tolerance`` (relative to the largest logit):

1. batch norm folded into the preceding convolution (EfficientNet-Lite: each ``SameConv2d`` + ``BatchNorm2d``
   pair; the conv gains a bias, the norm becomes ``nn.Identity``). The caller's model is left untouched.
2. channels_last weights and inputs (oneDNN's fast layout on CPU, cuDNN's tensor-core layout on GPU), and exact
   rewrites: EfficientNet-Lite with each convolution fused with its ReLU6 or residual add and stride-2 "same"
   padding without copies (``onednn.py``); the convolutionalized fc6 of VGG16/AlexNet as one matrix multiply
   (``unfold_fc.py``); their other convolutions fused with their ReLUs, with packed weights (``onednn.py``);
   fixed bilinear upsampling as a grouped transposed convolution (``channelwise_upsample.py``);
   reference-layout VGG16 FCNs wrapped to skip the constant part of their 100-pixel pad (``pad_skip.py``).
   The oneDNN rewrites call private PyTorch ops: where this torch build lacks them or they misbehave
   (``onednn.onednn_unavailable``), they are skipped with a one-line warning and the model runs without them.
3. optionally ``torch.compile`` with inductor's weight freezing (``compile=True``; then EfficientNet-Lite is left
   to inductor's own fusions): compiled at the first call on ``example``; any exception, or a mismatch, falls
   back to step 2's module.
4. optionally bf16 (``bf16=True``; on CUDA, and on CPUs whose oneDNN has bf16 kernels, as AVX512-BF16 or AMX):
   autocast, and the fused EfficientNet-Lite computing in bf16 end to end; checked with the looser
   ``bf16_tolerance``, and kept only if it is faster on ``example``. On this project's CPU (AMX) it is for the
   VGG16 FCNs and EfficientNet-Lite, not for AlexNet's grouped layers and LRN (docs/performance.md).
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn

from fcnseg.inference.channelwise_upsample import channelwise_upsampling
from fcnseg.inference.fold_bn import fold_batch_norms, fold_conv_bn
from fcnseg.inference.onednn import FusedEfficientNetLite, fuse_conv_relus, fuse_lite_networks, onednn_unavailable
from fcnseg.inference.pad_skip import pad_skipping
from fcnseg.inference.unfold_fc import unfold_large_convolutions

__all__ = ["InferenceModule", "bf16_supported", "bf16_variant", "fold_batch_norms", "fold_conv_bn",
           "inference_model"]


class InferenceModule(nn.Module):
    """``forward((N, C, H, W)) -> (N, K, H, W)`` under ``torch.inference_mode``, inputs made channels_last."""

    def __init__(self, model: nn.Module, *, channels_last: bool, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.compiled = None  # set by inference_model when torch.compile passed its check
        self.steps: list[str] = []  # which speed-ups this module applies, for logs and tests

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            run = self.compiled if self.compiled is not None else self.model
            if self.autocast_dtype is None:
                return run(x)
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                return run(x).float()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 convolutions have fast kernels on ``device`` (CUDA with bf16, or oneDNN's CPU bf16 path)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # a private op: absent from some builds
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _seconds(module: nn.Module, example: torch.Tensor) -> float:
    """Time of one call on ``example``."""
    started = time.perf_counter()
    module(example)
    if example.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def bf16_variant(fast: InferenceModule) -> InferenceModule:
    """``fast`` under bf16 autocast; a copy of its fused EfficientNet-Lite networks holds bf16 weights, so that
    they compute in bf16 end to end (autocast does not reach their oneDNN calls)."""
    model = fast.model
    if any(isinstance(module, FusedEfficientNetLite) for module in model.modules()):
        model = copy.deepcopy(model)
        for module in model.modules():
            if isinstance(module, FusedEfficientNetLite):
                module.to(torch.bfloat16)
    variant = InferenceModule(model, channels_last=fast.channels_last, autocast_dtype=torch.bfloat16)
    variant.compiled = fast.compiled  # compile and fuse_lite exclude each other: here ``model`` is ``fast.model``
    variant.steps = fast.steps + ["bf16"]
    return variant


def _is_faster(candidate: nn.Module, baseline: nn.Module, example: torch.Tensor, *, rounds: int = 3) -> bool:
    """Whether ``candidate`` runs ``example`` faster than ``baseline``: fastest of ``rounds`` calls each,
    alternating (after one untimed call each), so that a load change hits both."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for timed_round in range(rounds + 1):
        for index, module in enumerate((baseline, candidate)):
            seconds = _seconds(module, example)
            if timed_round:
                times[index].append(seconds)
    return min(times[1]) < min(times[0])


def _max_error(module: nn.Module, expected: torch.Tensor, example: torch.Tensor) -> float:
    got = module(example).float()
    if got.shape != expected.shape:
        return float("inf")
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-3)).item()  # all-zero logits: absolute


def _try_compile(fast: InferenceModule, expected: torch.Tensor, example: torch.Tensor, tolerance: float) -> None:
    """Compile ``fast.model`` with frozen weights; keep it only if it runs and matches on ``example``."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fast.compiled = torch.compile(fast.model)
        error = _max_error(fast, expected, example)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        warnings.warn(f"torch.compile failed, running eagerly: {type(exc).__name__}: {exc}", stacklevel=3)
        error = float("inf")
    if error > tolerance:
        fast.compiled = None
    else:
        fast.steps.append("compile")


def _exact_rewrites(fast: InferenceModule, expected: torch.Tensor, example: torch.Tensor, *, tolerance: float,
                    compile: bool) -> None:
    """Apply the exact rewrites to ``fast.model`` in place: a mismatch is a bug, not a choice. Inductor makes its
    own conv + ReLU6 / add fusions, so a model to compile keeps its plain (folded) EfficientNet-Lite. The oneDNN
    rewrites are skipped, with a warning, where this torch build cannot run them."""
    onednn_problem = onednn_unavailable() if example.device.type == "cpu" else None  # elsewhere: plain fallbacks
    rewrites = [("fuse_lite", fuse_lite_networks, True)] if not compile else []
    rewrites += [("unfold_fc6", unfold_large_convolutions, False), ("fuse_relu", fuse_conv_relus, True),
                 ("channelwise_upsample", channelwise_upsampling, False)]
    skipped = [step for step, _, needs_onednn in rewrites if needs_onednn and onednn_problem is not None]
    if skipped:
        warnings.warn(f"inference_model: skipping {', '.join(skipped)}: {onednn_problem}", stacklevel=3)
        fast.steps += [f"{step} (skipped: {onednn_problem})" for step in skipped]
    for step, rewrite, _ in rewrites:
        if step in skipped:
            continue
        if rewrite(fast.model):
            if _max_error(fast, expected, example) > tolerance:
                raise RuntimeError(f"inference_model step {step!r} changed the output")
            fast.steps.append(step)


def inference_model(
    model: nn.Module, example: torch.Tensor, *, compile: bool = False, bf16: bool = False,
    tolerance: float = 1e-4, bf16_tolerance: float = 5e-2,
) -> nn.Module:
    """The fastest module equivalent to ``model.eval()`` on ``example``'s device, checked on ``example``.

    ``example``: a ``(N, C, H, W)`` input of the kind that will be served (on the target device). The
    returned module runs under ``torch.inference_mode`` (outputs cannot be used for autograd) and shares no
    parameters with ``model``. ``steps`` on the result lists the speed-ups kept.
    """
    model = model.eval().to(example.device)
    with torch.inference_mode():
        expected = model(example).float()
    folded, count = fold_batch_norms(model)
    fast = InferenceModule(folded.to(memory_format=torch.channels_last), channels_last=True)
    fast.steps = (["fold_bn"] if count else []) + ["channels_last"]
    if _max_error(fast, expected, example) > tolerance:
        fast = InferenceModule(copy.deepcopy(model), channels_last=False)
    _exact_rewrites(fast, expected, example, tolerance=tolerance, compile=compile)
    skipping = pad_skipping(fast.model)
    if skipping is not None:
        plain_model, fast.model = fast.model, skipping
        if _max_error(fast, expected, example) > tolerance:
            fast.model = plain_model
        else:
            fast.steps.append("pad_skip")
    if compile:
        _try_compile(fast, expected, example, tolerance)
    if bf16 and bf16_supported(example.device):
        variant = bf16_variant(fast)
        if _max_error(variant, expected, example) > bf16_tolerance:
            fast.steps.append("bf16 (inaccurate: not used)")
        elif _is_faster(variant, fast, example):
            fast = variant
        else:  # e.g. on hardware whose bf16 kernels are slow for depthwise or grouped convolutions
            fast.steps.append("bf16 (slower: not used)")
    return fast.eval()
