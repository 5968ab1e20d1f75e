"""Where fcnseg's bf16 time goes against OpenVINO's, layer kind by layer kind, on the shipped model.

    python bench/runtime_layers.py                   # 360x480, batch 1, 2 threads, 30 calls each
    python bench/runtime_layers.py --calls 10 --precision f32

fcnseg: ``inference_model(bf16=True, timed=False)`` (or float32), every rewrite that passes its check kept untimed,
so that the fused EfficientNet-Lite is what is profiled; each leaf module timed by forward pre/post hooks (wall
clock around the call; the hooks cost a few microseconds each, so the whole-model time with hooks is printed next to
the time without). OpenVINO: the same weights exported to ONNX, compiled for "CPU" with the same precision hint and
threads, and its own per-node counters (``PERF_COUNT``, ``get_profiling_info``). Both are grouped into the same
kinds:

- ``stem``: the first 3x3 stride-2 convolution;
- ``expand 1x1`` / ``project 1x1``: an MBConv block's pointwise convolutions (project includes its residual add);
- ``depthwise kxk sN``: the depthwise convolutions, by kernel and stride;
- ``head 1x1``: the backbone's last 320 -> 1280 convolution;
- ``score``: the FCN score layers (1x1 convolutions to the classes) and skip fusion;
- ``upsample``: the transposed convolutions and crops;
- ``other``: layout and dtype conversions, and what is left.

OpenVINO's nodes are mapped to kinds by the ONNX node names they keep (``/_blocks.3/_depthwise_conv/Conv``); a node
it fused (a convolution with its activation or residual add) counts for its convolution's kind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.devices import cpu_description
from fcnseg.inference import inference_model
from fcnseg.inference.onednn import FusedMBConv, FusedSameConv2d


def conv_kinds(fast: nn.Module) -> dict[nn.Module, str]:
    """Every convolution-like leaf of the fused model -> its kind, in network order."""
    kinds: dict[nn.Module, str] = {}
    for name, module in fast.named_modules():
        if isinstance(module, FusedMBConv):
            if module.expand is not None:
                kinds[module.expand] = "expand 1x1"
            dw = module.depthwise
            kinds[dw] = f"depthwise {dw.kernel_size}x{dw.kernel_size} s{dw.stride}"
            kinds[module.project] = "project 1x1"
        elif isinstance(module, FusedSameConv2d) and module not in kinds:
            kinds[module] = "stem" if name.endswith("stem") else "head 1x1"
        elif isinstance(module, nn.ConvTranspose2d):
            kinds[module] = "upsample"
        elif isinstance(module, nn.Conv2d) and name.rsplit(".", 1)[-1].startswith("score"):
            kinds[module] = "score"
    return kinds


def time_fcnseg_layers(fast: nn.Module, x: torch.Tensor, calls: int) -> tuple[dict[str, float], float, float]:
    """Per-kind milliseconds a call (median call), the whole call with hooks, and without."""
    kinds = conv_kinds(fast)
    started: dict[nn.Module, float] = {}
    spent: dict[str, list[float]] = defaultdict(list)
    current: dict[str, float] = defaultdict(float)

    def before(module, _inputs):
        started[module] = time.perf_counter()

    def after(module, _inputs, _output):
        current[kinds[module]] += time.perf_counter() - started[module]

    handles = [m.register_forward_pre_hook(before) for m in kinds] + [m.register_forward_hook(after) for m in kinds]
    totals = []
    for _ in range(calls + 2):
        current.clear()
        start = time.perf_counter()
        fast(x)
        totals.append(time.perf_counter() - start)
        for kind, seconds in current.items():
            spent[kind].append(seconds)
    for handle in handles:
        handle.remove()
    plain = []
    for _ in range(calls + 2):
        start = time.perf_counter()
        fast(x)
        plain.append(time.perf_counter() - start)
    per_kind = {kind: statistics.median(values[2:]) * 1e3 for kind, values in spent.items()}
    total = statistics.median(totals[2:]) * 1e3
    per_kind["other"] = total - sum(per_kind.values())
    return per_kind, total, statistics.median(plain[2:]) * 1e3


COARSE = ("1x1 convolutions", "depthwise", "stem", "score", "upsample", "other")
VERBOSE_CONV = re.compile(r"^(?:g(\d+))?mb\d+_ic(\d+)oc(\d+)_")


def coarse_kind(kind: str) -> str:
    """``expand 1x1`` -> ``1x1 convolutions``, ``depthwise 5x5 s2`` -> ``depthwise``; the rest unchanged."""
    if kind.endswith("1x1"):
        return "1x1 convolutions"
    return "depthwise" if kind.startswith("depthwise") else kind


def verbose_kind(primitive: str, problem: str, num_classes: int) -> str:
    """The coarse kind of one oneDNN verbose ``exec`` line (``convolution``, ``g96mb1_ic96oc96_ih192...``)."""
    if primitive == "deconvolution":
        return "upsample"
    match = VERBOSE_CONV.match(problem)
    if primitive != "convolution" or match is None:
        return "other"  # reorders
    groups, in_channels, out_channels = (int(value) if value else 1 for value in match.groups())
    if groups > 1 and groups == in_channels:
        return "depthwise"
    if in_channels == 3:
        return "stem"
    return "score" if out_channels == num_classes else "1x1 convolutions"


def onednn_kernel_ms(fast: nn.Module, x: torch.Tensor, calls: int, num_classes: int) -> dict[str, float]:
    """Milliseconds a call spent inside oneDNN's primitives, by coarse kind (medians over ``calls``), from oneDNN's
    verbose ``exec`` lines (written by C to file descriptor 1, which is pointed at a file meanwhile)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(calls):
                    fast(x)
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [line.split(",") for line in log if line.startswith("onednn_verbose") and ",exec," in line]
    per_call = len(lines) // calls
    spent: dict[str, list[float]] = defaultdict(list)
    for call in range(calls):
        current: dict[str, float] = defaultdict(float)
        for fields in lines[call * per_call:(call + 1) * per_call]:
            current[verbose_kind(fields[5], fields[-2], num_classes)] += float(fields[-1])
        for kind in COARSE:
            spent[kind].append(current.get(kind, 0.0))
    return {kind: statistics.median(values) for kind, values in spent.items()}


def openvino_kind(node_name: str, depthwise_kinds: list[str]) -> str:
    """The kind of an OpenVINO node, from the ONNX node name it keeps (``/_blocks.3/_depthwise_conv/Conv``): fused
    nodes keep the name of their convolution."""
    if "_conv_stem" in node_name:
        return "stem"
    if "_blocks." in node_name:
        block = int(node_name.split("_blocks.", 1)[1].split("/", 1)[0])
        if "_expand_conv" in node_name:
            return "expand 1x1"
        if "_depthwise_conv" in node_name:
            return depthwise_kinds[block]
        return "project 1x1"  # the projection and its residual add
    if "_conv_head" in node_name:
        return "head 1x1"
    if "upscore" in node_name:
        return "upsample"
    if "score" in node_name:
        return "score"
    return "other"


def openvino_layers(onnx_path: str, x: torch.Tensor, precision: str, threads: int, calls: int,
                    depthwise_kinds: list[str]) -> tuple[dict[str, float], float, dict[str, float]]:
    """Per-kind milliseconds a call from OpenVINO's counters (median call), the wall-clock call, and the time by
    node and executed primitive (``exec_type``)."""
    import openvino

    core = openvino.Core()
    network = core.read_model(onnx_path)
    network.reshape(list(x.shape))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
              "INFERENCE_PRECISION_HINT": precision}
    request = core.compile_model(network, "CPU", config).create_infer_request()
    per_call: dict[str, list[float]] = defaultdict(list)
    per_exec: dict[str, list[float]] = defaultdict(list)
    walls = []
    for _ in range(calls + 2):
        start = time.perf_counter()
        request.infer({0: x.numpy()})
        walls.append(time.perf_counter() - start)
        kinds: dict[str, float] = defaultdict(float)
        execs: dict[str, float] = defaultdict(float)
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1e3
            kinds[openvino_kind(info.node_name, depthwise_kinds)] += ms
            execs[f"{info.node_type} ({info.exec_type})"] += ms
        for kind, ms in kinds.items():
            per_call[kind].append(ms)
        for name, ms in execs.items():
            per_exec[name].append(ms)
    per_kind = {kind: statistics.median(values[2:]) for kind, values in per_call.items()}
    per_exec_type = {name: statistics.median(values[2:]) for name, values in per_exec.items()}
    return per_kind, statistics.median(walls[2:]) * 1e3, per_exec_type


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _meta = model_from_checkpoint(default_checkpoint_path())
    model.eval()
    x = torch.randn(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
    fast = inference_model(model, x, bf16=args.precision == "bf16", timed=False)  # every rewrite that checks out
    order = list(conv_kinds(fast).values())
    depthwise_kinds = [kind for kind in order if kind.startswith("depthwise")]  # one per block, in block order
    ours, with_hooks, without = time_fcnseg_layers(fast, x, args.calls)
    kernels = onednn_kernel_ms(fast, x, min(args.calls, 10), model.num_classes)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fcnseg.export import export_onnx

        onnx_path = export_onnx(model, Path(folder) / "shipped.onnx", example_size=(1, 3, 64, 96), check_sizes=())
        theirs, wall, exec_types = openvino_layers(str(onnx_path), x, args.precision, args.threads, args.calls,
                                                   depthwise_kinds)
    print(f"# {args.size[0]}x{args.size[1]}, batch 1, {args.precision}, {args.threads} threads, medians of "
          f"{args.calls} calls; {cpu_description()}; torch {torch.__version__}")
    print(f"- fcnseg steps: {', '.join(fast.steps)}")
    print(f"- fcnseg call: {without:.2f} ms ({with_hooks:.2f} ms with the timing hooks); OpenVINO call: {wall:.2f} ms "
          f"(counters sum to {sum(theirs.values()):.2f} ms)\n")
    print("| kind | layers | fcnseg ms | OpenVINO ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    counts = {kind: order.count(kind) for kind in set(order)}
    for kind in sorted(set(ours) | set(theirs), key=lambda k: -ours.get(k, 0)):
        mine, other = ours.get(kind, 0.0), theirs.get(kind, 0.0)
        ratio = f"{mine / other:.2f}x" if other > 0 else "-"
        print(f"| {kind} | {counts.get(kind, '')} | {mine:.2f} | {other:.2f} | {ratio} |")
    print("\nThe same, coarser, with the time inside oneDNN's kernels for fcnseg (verbose exec times, median of "
          f"{min(args.calls, 10)} calls):\n")
    print("| kind | fcnseg wall ms | fcnseg oneDNN kernels ms | OpenVINO counters ms |")
    print("|---|---:|---:|---:|")
    coarse_ours, coarse_theirs = defaultdict(float), defaultdict(float)
    for kind, ms in ours.items():
        coarse_ours[coarse_kind(kind)] += ms
    for kind, ms in theirs.items():
        coarse_theirs[coarse_kind(kind)] += ms
    for kind in COARSE:
        print(f"| {kind} | {coarse_ours[kind]:.2f} | {kernels[kind]:.2f} | {coarse_theirs[kind]:.2f} |")
    print(f"| **all** | {sum(coarse_ours.values()):.2f} | {sum(kernels.values()):.2f} | "
          f"{sum(coarse_theirs.values()):.2f} |")
    print("\nOpenVINO by executed primitive:\n")
    print("| node (primitive) | ms |")
    print("|---|---:|")
    for name, ms in sorted(exec_types.items(), key=lambda item: -item[1]):
        if ms >= 0.05:
            print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
