"""What a device computes fast: asked by inference (``bf16=True``) and training (``amp``) alike."""

from __future__ import annotations

import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 convolutions have fast kernels on ``device``: CUDA with bf16, or oneDNN's CPU bf16 path
    (AVX512-BF16 or AMX). Elsewhere bf16 is emulated: on a 2-core AVX2 AMD EPYC a bf16-autocast training step of
    fcn8s-lite0 took 13.1 s against 2.6 s in float32 (bench/train_step.py, docs/performance.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # a private op: absent from some builds
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
