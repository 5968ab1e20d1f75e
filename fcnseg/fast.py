"""The fastest equivalent module for inference: ``inference_model(model, example) -> nn.Module``.

Each speed-up is checked against the plain path (``model.eval()`` under ``torch.inference_mode``) on
``example`` and dropped when its output differs by more than ``tolerance`` (relative to the largest logit):

1. batch norm folded into the preceding convolution (EfficientNet-Lite: each ``SameConv2d`` + ``BatchNorm2d``
   pair; the conv gains a bias, the norm becomes ``nn.Identity``). The caller's model is left untouched.
2. channels_last weights and inputs (oneDNN's fast layout on CPU, cuDNN's tensor-core layout on GPU).
   Reference-layout VGG16 FCNs also skip the constant part of their 100-pixel pad (``models/pad_skip.py``), and
   the convolutionalized fc6 of VGG16/AlexNet runs as one matrix multiply (``layers.UnfoldConv2d``).
3. optionally ``torch.compile`` with inductor's weight freezing (``compile=True``): compiled at the first call
   on ``example``; any exception, or a mismatch, falls back to step 2's module.
4. optionally bf16 autocast (``bf16=True``; on CUDA, and on CPUs whose oneDNN has bf16 kernels, as AVX512-BF16
   or AMX; checked with the looser ``bf16_tolerance``, and kept only if it is faster on ``example``: on this
   project's CPU it is for the VGG16 FCNs, not for EfficientNet-Lite's depthwise or AlexNet's grouped layers.
   There a 3x3 convolution runs about 7x faster in bf16 than in float32 (docs/performance.md).
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn

from fcnseg.models.layers import unfold_large_convolutions
from fcnseg.models.pad_skip import enable_pad_skipping

# (conv, batch norm) attribute pairs whose forward is ``bn(conv(x))``, per module class name.
FOLDABLE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "MBConvBlock": (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
    "EfficientNetLite": (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")),
}


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every known conv + batch norm pair folded; ``(copy, number folded)``."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in model.modules():
        for conv_name, bn_name in FOLDABLE_PAIRS.get(type(module).__name__, ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return model, folded


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
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _seconds(module: nn.Module, example: torch.Tensor) -> float:
    """Time of one call on ``example``."""
    started = time.perf_counter()
    module(example)
    if example.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _bf16_is_faster(fast: InferenceModule, example: torch.Tensor, *, rounds: int = 3) -> bool:
    """Whether ``fast`` runs ``example`` faster under bf16 autocast than without: fastest of ``rounds`` calls
    each, alternating (after one untimed call each), so that a load change hits both. Leaves bf16 set."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for timed_round in range(rounds + 1):
        for use_bf16 in (False, True):
            fast.autocast_dtype = torch.bfloat16 if use_bf16 else None
            seconds = _seconds(fast, example)
            if timed_round:
                times[use_bf16].append(seconds)
    fast.autocast_dtype = torch.bfloat16
    return min(times[True]) < min(times[False])


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
    if unfold_large_convolutions(fast.model):
        if _max_error(fast, expected, example) > tolerance:
            raise RuntimeError("UnfoldConv2d differs from the convolution it replaced")  # a bug, not a choice
        fast.steps.append("unfold_fc6")
    if enable_pad_skipping(fast.model):
        if _max_error(fast, expected, example) > tolerance:
            fast.model.pad_skipper = None
        else:
            fast.steps.append("pad_skip")
    if compile:
        _try_compile(fast, expected, example, tolerance)
    if bf16 and bf16_supported(example.device):
        fast.autocast_dtype = torch.bfloat16
        if _max_error(fast, expected, example) > bf16_tolerance:
            fast.autocast_dtype = None
        elif not _bf16_is_faster(fast, example):  # e.g. depthwise or grouped convs, LRN: slower in bf16
            fast.autocast_dtype = None
            fast.steps.append("bf16 (slower: not used)")
        else:
            fast.steps.append("bf16")
    return fast.eval()
