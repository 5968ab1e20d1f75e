"""What a device computes fast: asked by inference (``bf16=True``) and training (``amp``) alike."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import torch

# The x86 flags that decide which kernels run: bf16 (AVX512-BF16, AMX) and int8 without saturation (VNNI, AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


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


def cpu_description(flags: Sequence[str] = CPU_FLAGS) -> str:
    """``lscpu``'s model name and which of ``flags`` it lists, for the header of every measurement."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    listed = set(fields.get("Flags", "").split())
    present = [flag for flag in flags if flag in listed]
    absent = [flag for flag in flags if flag not in listed]
    return (f"{fields.get('Model name', 'unknown CPU').strip()}; flags: {' '.join(present) or 'none of those'}"
            f" (absent: {' '.join(absent) or 'none'})")
