"""The fastest equivalent module for inference: ``inference_model(model, example) -> nn.Module``.

Each speed-up is checked against the plain path (``model.eval()`` under ``torch.inference_mode``) on
``example`` and dropped when its output differs by more than ``tolerance`` (relative to the largest logit):

1. batch norm folded into the preceding convolution (EfficientNet-Lite: each ``SameConv2d`` + ``BatchNorm2d``
   pair; the conv gains a bias, the norm becomes ``nn.Identity``). The caller's model is left untouched.
2. channels_last weights and inputs (oneDNN's fast layout on CPU, cuDNN's tensor-core layout on GPU), and exact
   rewrites: EfficientNet-Lite with each convolution fused with its ReLU6 or residual add and stride-2 "same"
   padding without copies (``models/lite_inference.py``); the convolutionalized fc6 of VGG16/AlexNet as one
   matrix multiply (``layers.UnfoldConv2d``); their other convolutions fused with their ReLUs, with packed
   weights (``models/fused.py``); fixed bilinear upsampling as a grouped transposed convolution
   (``layers.channelwise_upsampling``); reference-layout VGG16 FCNs skip the constant part of their 100-pixel
   pad (``models/pad_skip.py``).
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

from fcnseg.models.fused import fuse_conv_relus
from fcnseg.models.layers import channelwise_upsampling, unfold_large_convolutions
from fcnseg.models.lite_inference import FusedEfficientNetLite, fuse_lite_networks
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
    # Exact rewrites: a mismatch is a bug, not a choice. Inductor makes its own conv + ReLU6 / add fusions, so
    # a model to compile keeps its plain (folded) EfficientNet-Lite.
    rewrites = [("fuse_lite", fuse_lite_networks)] if not compile else []
    rewrites += [("unfold_fc6", unfold_large_convolutions), ("fuse_relu", fuse_conv_relus),
                 ("channelwise_upsample", channelwise_upsampling)]
    for step, rewrite in rewrites:
        if rewrite(fast.model):
            if _max_error(fast, expected, example) > tolerance:
                raise RuntimeError(f"inference_model step {step!r} changed the output")
            fast.steps.append(step)
    if enable_pad_skipping(fast.model):
        if _max_error(fast, expected, example) > tolerance:
            fast.model.pad_skipper = None
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
