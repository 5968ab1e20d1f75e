"""fcnseg's inference paths against onnxruntime and OpenVINO on the same models, in one process.

    python bench/runtimes.py                            # shipped, fcn8s, fcn8s-compact at 360x480, 2 threads
    python bench/runtimes.py --quick                    # smoke run: the shipped model, 3 rounds, batch 2
    python bench/runtimes.py --models shipped --int8-onnx model-int8.onnx   # plus an int8 ONNX file of it
    python bench/runtimes.py --models shipped --paths openvino-f32 --int8-onnx a.onnx --int8-onnx b.onnx

Models: ``shipped`` (the trained model inside the package, ``fcnseg.checkpoint.default_checkpoint_path()``), ``fcn8s`` (the
reference-layout VGG16 FCN-8s) and ``fcn8s-compact`` (its layout without the 100-pixel pad), the last two with
random weights (21 classes; score layers given random weights, as the reference zero-initializes them).
Paths: fcnseg eager (``model.eval()`` under ``torch.inference_mode``), ``fcnseg.inference_model`` in float32 and
with ``bf16=True`` (built once on a batch-1 random input at ``--size``, or as ``--fast-example`` says, and used
at both batch sizes; its choices are printed), onnxruntime on the ``fcnseg.export`` ONNX file (float32, CPU
provider), on request (``--paths``) the model traced per shape and run by TorchScript's oneDNN Graph fuser
(``jit-f32``, ``jit-bf16``), and OpenVINO on the same file, reshaped to each batch shape and compiled for "CPU" with
INFERENCE_PRECISION_HINT f32 or bf16 and PERFORMANCE_HINT LATENCY.
``--int8-onnx PATH`` (repeatable) adds an int8 (QDQ) ONNX file of the one model named in ``--models``, run by
onnxruntime and by OpenVINO (f32 for its non-quantized parts), rows named by the file; without it there are no
int8 rows.

Every runtime gets ``--threads`` threads (``torch.set_num_threads``, onnxruntime ``intra_op_num_threads``, OpenVINO
INFERENCE_NUM_THREADS). Times: batch-1 latency and batch-``--batch`` throughput; each round runs every path once
(the starting path rotating), so that a change of load hits all of them; medians over ``--rounds`` rounds after
``--warmup``. Agreement: the share of pixels whose arg-max label equals eager float32 PyTorch's, on ``--images``
real images (CamVid val under ``--data``, else fcnseg/assets/examples/*.png), resized to ``--size``.
Needs the ``bench`` extra (onnxruntime, onnx, openvino); a missing runtime's rows are left out, saying so.

The hardware ceiling: each row's batch-1 GFLOP/s (the model's FLOPs per image, ``fcnseg.stats.count_flops``, over
its median time) and its share of the machine's measured float32 peak, the GFLOP/s of a 2048x2048 matrix multiply
on the same threads (``torch.mm``, medians of 5, measured before each model's table). A path near 100% cannot go
faster in float32 on this CPU without doing less arithmetic; the depthwise layers of EfficientNet-Lite are
memory-bound, so a Lite model's float32 ceiling sits below the matrix multiply's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.devices import cpu_description
from fcnseg.stats import count_flops

MODELS = ("shipped", "fcn8s", "fcn8s-compact")
PATHS = ("eager", "fast", "fast-bf16", "jit-f32", "jit-bf16", "onnxruntime", "openvino-f32", "openvino-bf16")
DEFAULT_PATHS = ("eager", "fast", "fast-bf16", "onnxruntime", "openvino-f32", "openvino-bf16")
INT8_PATHS = ("onnxruntime-int8", "openvino-int8")
LABELS = {"eager": "fcnseg eager", "fast": "fcnseg inference_model f32", "fast-bf16": "fcnseg inference_model bf16",
          "jit-f32": "TorchScript + oneDNN Graph f32", "jit-bf16": "TorchScript + oneDNN Graph bf16",
          "onnxruntime": "onnxruntime f32", "openvino-f32": "OpenVINO f32", "openvino-bf16": "OpenVINO bf16",
          "onnxruntime-int8": "onnxruntime int8", "openvino-int8": "OpenVINO int8"}
EXAMPLES = Path(__file__).resolve().parents[1] / "fcnseg" / "assets" / "examples"
RANDOM_CLASSES = 21
DEFAULTS = {"models": ",".join(MODELS), "batch": 8, "rounds": 10, "warmup": 2, "images": 4}
QUICK_DEFAULTS = {"models": "shipped", "batch": 2, "rounds": 3, "warmup": 1, "images": 2}
FAST_EXAMPLES = {"size": "a random input at --size (default)", "image": "the first real image",
                 "predict": "a random 180x240 input, as fcnseg serve passes it (predict: the first image scaled to that many pixels)"}

# ``(N, C, H, W)`` float32 input -> ``(N, K, H, W)`` float32 logits, as a CPU tensor.
Runner = Callable[[torch.Tensor], torch.Tensor]


def build(name: str) -> tuple[nn.Module, str, str]:
    """``(model in eval mode, input normalization, weights)`` for a ``MODELS`` name."""
    if name == "shipped":
        from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint

        model, meta = model_from_checkpoint(default_checkpoint_path())
        return model.eval(), meta.normalization, f"trained ({meta.model}, {meta.num_classes} classes)"
    from fcnseg.models import FCN8s

    torch.manual_seed(0)
    model = FCN8s(num_classes=RANDOM_CLASSES, layout="compact" if name == "fcn8s-compact" else "reference")
    for score in (model.score_fr, model.score_pool4, model.score_pool3):  # zero-initialized: all labels tie
        nn.init.normal_(score.weight, std=0.01)
    return model.eval(), "caffe", f"random ({RANDOM_CLASSES} classes)"


def load_images(data: Path, count: int, size: tuple[int, int], normalization: str) -> tuple[list[torch.Tensor], str]:
    """``count`` normalized ``(1, 3, H, W)`` images at ``size`` and where they came from."""
    from fcnseg.data.base import read_image
    from fcnseg.data.transforms import normalize

    val = data / "val"
    files = sorted(val.glob("*.png"))[:count] if val.is_dir() else []
    source = f"CamVid val ({val})"
    if not files:
        files, source = sorted(EXAMPLES.glob("*.png"))[:count], f"fcnseg/assets/examples ({val} not found)"
    images = []
    for path in files:
        x = normalize(read_image(path), normalization)[None]  # (1, 3, h, w)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        images.append(x.contiguous())
    return images, f"{len(images)} images from {source}"


def torch_runner(module: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x).float()

    return run


def onednn_graph_runner(model: nn.Module, shape: tuple[int, ...], bf16: bool) -> Runner:
    """The model traced at ``shape`` (channels_last), frozen, and run by TorchScript's oneDNN Graph (LLGA) fuser.

    The fuser compiles partitions of the graph (convolution + bias + ReLU6 + residual add, ...) into oneDNN kernels
    that pass oneDNN's own blocked layouts between them, as OpenVINO does; bf16 through autocast at trace time.
    """
    torch.jit.enable_onednn_fusion(True)  # global, but only scripted/traced modules see it
    module = copy.deepcopy(model).to(memory_format=torch.channels_last)  # not the other paths' model
    example = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), autocast, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on size arithmetic
        traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
        for _ in range(3):  # the fuser profiles, then compiles, over the first calls
            traced(example)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return traced(x.contiguous(memory_format=torch.channels_last)).float()

    return run


def onnxruntime_runner(onnx_path: str, threads: int) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: not its notes on unused initializers
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])

    return run


def openvino_runner(onnx_path: str, shape: tuple[int, ...], precision: str, threads: int) -> tuple[Runner, str]:
    """The ONNX file reshaped to ``shape`` and compiled for the CPU; and the precision OpenVINO reports using."""
    import openvino

    core = openvino.Core()
    network = core.read_model(onnx_path)
    network.reshape(list(shape))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(network, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(np.array(request.get_output_tensor(0).data))  # a copy: the buffer is reused

    used = compiled.get_property("INFERENCE_PRECISION_HINT")
    return run, used.get_type_name() if hasattr(used, "get_type_name") else str(used)


def onnx_file_key(path: str) -> str:
    """The ``files`` key a runtime path reads: ``"f32"``, or ``"int8:<index>"`` for ``"<runtime>-int8:<index>"``."""
    return f"int8:{path.split(':')[1]}" if ":" in path else "f32"


def label(path: str, args: argparse.Namespace) -> str:
    """A path's row name; an int8 path is named by its file."""
    if ":" not in path:
        return LABELS[path]
    base, index = path.split(":")
    return f"{LABELS[base]} ({args.int8_onnx[int(index)].name})"


def make_runners(path: str, model: nn.Module, files: dict[str, str], example: torch.Tensor,
                 shapes: list[tuple[int, ...]], args: argparse.Namespace, notes: list[str]) -> dict[tuple, Runner]:
    """One runner per input shape for ``path``; ``notes`` gets what the path chose (steps, precision)."""
    if path == "eager":
        run = torch_runner(model)
    elif path in ("fast", "fast-bf16"):
        from fcnseg.inference import inference_model

        started = time.perf_counter()
        fast = inference_model(model, example, bf16=path == "fast-bf16")
        notes.append(f"{label(path, args)}: built in {time.perf_counter() - started:.1f} s; "
                     + "; ".join(str(decision) for decision in fast.decisions))
        run = torch_runner(fast)
    elif path in ("jit-f32", "jit-bf16"):
        return {shape: onednn_graph_runner(model, shape, path == "jit-bf16") for shape in shapes}
    elif path.startswith("onnxruntime"):
        run = onnxruntime_runner(files[onnx_file_key(path)], args.threads)
    else:  # openvino-f32, openvino-bf16, openvino-int8:<index>
        precision = {"openvino-f32": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}[path.split(":")[0]]
        onnx_path = files[onnx_file_key(path)]
        runners = {}
        for shape in shapes:
            runners[shape], used = openvino_runner(onnx_path, shape, precision, args.threads)
        notes.append(f"{label(path, args)}: INFERENCE_PRECISION_HINT {precision} requested, {used} used")
        return runners
    return {shape: run for shape in shapes}


def gemm_peak_gflops(*, side: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of a ``side``-square matrix multiply on torch's threads: the measured compute ceiling."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(side, side, generator=generator) for _ in range(2))
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * side**3 / statistics.median(times) / 1e9


def alternating(runners: dict[str, Runner], x: torch.Tensor, *, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner on ``x``: every round calls each once, the first one rotating."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            started = time.perf_counter()
            runners[name](x)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def agreement(run: Runner, images: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Share of pixels whose arg-max label equals ``reference``'s, over ``images``."""
    same = sum(int((run(x).argmax(1) == labels).sum()) for x, labels in zip(images, reference))
    return same / sum(labels.numel() for labels in reference)


def bench_model(name: str, paths: list[str], args: argparse.Namespace) -> None:
    model, normalization, weights = build(name)
    height, width = args.size
    images, source = load_images(Path(args.data), args.images, args.size, normalization)
    shapes = [(1, 3, height, width), (args.batch, 3, height, width)]
    batch = torch.cat([images[i % len(images)] for i in range(args.batch)])  # (B, 3, H, W) real images
    notes = [f"weights: {weights}; agreement on {source}"]
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        if any(path.startswith(("onnxruntime", "openvino")) for path in paths):
            from fcnseg.export import export_onnx

            with warnings.catch_warnings():  # the tracer's notes on size arithmetic (docs/performance.md)
                warnings.simplefilter("ignore")
                files["f32"] = export_onnx(model, Path(folder) / f"{name}.onnx", example_size=(1, 3, 64, 96),
                                           check_sizes=())
        for index, int8_file in enumerate(args.int8_onnx):
            files[f"int8:{index}"] = str(int8_file)
        generator = torch.Generator().manual_seed(0)
        example = {"size": lambda: torch.randn(1, 3, height, width, generator=generator), "image": lambda: images[0],
                   "predict": lambda: torch.randn(1, 3, 180, 240, generator=generator)}[args.fast_example]()
        runners = {path: make_runners(path, model, files, example, shapes, args, notes) for path in paths}
    with torch.inference_mode():
        reference = [model(x).argmax(1) for x in images]  # eager float32: the labels to agree with
    agreements = {path: agreement(runner[shapes[0]], images, reference) for path, runner in runners.items()}
    latency = alternating({path: runner[shapes[0]] for path, runner in runners.items()}, images[0],
                          warmup=args.warmup, rounds=args.rounds)
    throughput = alternating({path: runner[shapes[1]] for path, runner in runners.items()}, batch,
                             warmup=args.warmup, rounds=args.rounds)
    gflop = count_flops(model, height=height, width=width) / 1e9  # per image
    peak = gemm_peak_gflops()
    print(f"\n## {name}: {height}x{width}, batch 1 latency and batch {args.batch} throughput\n")
    ceiling = (f"{gflop:.2f} GFLOP per image; float32 ceiling: {peak:.1f} GFLOP/s (2048x2048 torch.mm, "
               f"{args.threads} threads), so at least {gflop / peak * 1e3:.1f} ms an image")
    for note in [*notes, ceiling]:
        print(f"- {note}")
    print(f"\n| path | batch 1 median | min-max | vs eager | batch 1 GFLOP/s (of peak) | "
          f"batch {args.batch} images/s | vs eager | labels = eager f32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    eager_latency = statistics.median(latency[paths[0]])
    eager_rate = args.batch / statistics.median(throughput[paths[0]])
    for path in paths:
        median, rate = statistics.median(latency[path]), args.batch / statistics.median(throughput[path])
        print(f"| {label(path, args)} | {median * 1e3:.1f} ms | {min(latency[path]) * 1e3:.1f}-"
              f"{max(latency[path]) * 1e3:.1f} ms | {eager_latency / median:.2f}x | {gflop / median:.1f} "
              f"({gflop / median / peak:.0%}) | {rate:.2f} | "
              f"{rate / eager_rate:.2f}x | {agreements[path]:.2%} |", flush=True)


def available_paths(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The requested paths whose runtime is installed (eager first), and a note for each left out."""
    paths = [path for path in args.paths.split(",") if path]
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown paths {sorted(unknown)}; expected some of {','.join(PATHS)}")
    paths += [f"{path}:{index}" for index in range(len(args.int8_onnx)) for path in INT8_PATHS]
    paths = ["eager"] + [path for path in paths if path != "eager"]  # the reference row comes first
    left_out = []
    for runtime in ("onnxruntime", "openvino"):
        try:
            __import__(runtime)
        except ImportError:
            left_out.append(f"{runtime} is not installed (pip install -e '.[bench]'): its rows are left out")
            paths = [path for path in paths if not path.startswith(runtime)]
    return paths, left_out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS) + " (all)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help="comma-separated subset of " + ",".join(PATHS))
    parser.add_argument("--size", default="360x480", help="HEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=None, help="batch size of the throughput runs (8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (2)")
    parser.add_argument("--images", type=int, default=None, help="real images for the label agreement (4)")
    parser.add_argument("--data", default="../shared/data/camvid", help="CamVid root (its val/ images)")
    parser.add_argument("--fast-example", choices=tuple(FAST_EXAMPLES), default="size",
                        help="what inference_model checks and times its rewrites on: " + "; ".join(
                            f"{name}: {text}" for name, text in FAST_EXAMPLES.items()))
    parser.add_argument("--int8-onnx", type=Path, action="append", default=[],
                        help="an int8 ONNX file of the one model in --models: adds onnxruntime and OpenVINO int8 rows "
                        "(repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: defaults become the shipped model, 1 warm-up + 3 rounds, batch 2, 2 images")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.size = tuple(int(side) for side in args.size.lower().split("x"))
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; expected some of {','.join(MODELS)}")
    if args.int8_onnx and len(args.models.split(",")) != 1:
        parser.error("--int8-onnx is an export of one model: name that one model in --models")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths, left_out = available_paths(args)
    versions = [f"torch {torch.__version__}"]
    for runtime in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{runtime} {__import__(runtime).__version__}")
        except ImportError:
            pass
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_description()}")
    print(f"# {', '.join(versions)}; {args.threads} threads; {args.warmup} warm-up + {args.rounds} alternating "
          "rounds, medians")
    for note in left_out:
        print(f"# {note}")
    for name in args.models.split(","):
        bench_model(name, paths, args)


if __name__ == "__main__":
    main()
