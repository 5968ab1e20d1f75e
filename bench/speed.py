"""Speed of every FCN and two peers in one run: forward (eager, ``inference_model`` in float32 and in bf16,
onnxruntime on the ``fcnseg export`` ONNX file),
training step (forward, cross-entropy, backward, SGD step; float32, and bf16 autocast + channels_last), peak
memory, FLOPs and share of the machine's ceiling (float32 modes against the float32 ceiling, bf16 against bf16).

    python bench/speed.py --quick --json-out bench/speed.json            # 360x480
    python bench/speed.py --size 500x500 --models fcn8s,fcn8s-compact --modes forward,fast

Each (model, mode) runs in its own subprocess, so that peak memory is that process's ``ru_maxrss``
(``resource.getrusage``) after the measurement minus its value once the model and input exist: the extra
resident memory the forward or training step needs (warm-up included, which does the same work).
Times: median, min and max of ``--reps`` runs after ``--warmup`` runs (``time.perf_counter``).
The ceiling is one 3x3 convolution 256->256 on 128x128, channels_last, timed the same way in the same run, in
float32 and under bf16 autocast (oneDNN's AMX kernels where the CPU has them). ``--batch`` sets the images per step.
Peers: torchfcn 1.9.7's FCN8s (its ``models`` subpackage imported on its own, as tests/models/test_reference_port.py
does) and torchvision's ``fcn_resnet50(weights=None, weights_backbone=None)`` (its ``"out"`` logits).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-compact", "fcn-alexnet", "fcn8s-lite0", "torchfcn-fcn8s",
          "torchvision-fcn-resnet50")
MODES = ("forward", "fast", "fast-bf16", "fast-compile", "fast-compile-bf16", "onnxruntime", "train", "train-cl",
         "train-bf16")
BF16_MODES = ("fast-bf16", "fast-compile-bf16", "train-bf16")  # timed against the bf16 ceiling
NUM_CLASSES = 21


def build(name: str) -> nn.Module:
    """A randomly initialized model that returns ``(N, 21, H, W)`` logits."""
    if name == "torchfcn-fcn8s":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
        from test_reference_port import import_torchfcn_models

        return import_torchfcn_models().FCN8s(n_class=NUM_CLASSES)
    if name == "torchvision-fcn-resnet50":
        from torchvision.models.segmentation import fcn_resnet50

        class OutOnly(nn.Module):  # its dict output, reduced to the logits
            def __init__(self):
                super().__init__()
                self.net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)

            def forward(self, x):
                return self.net(x)["out"]

        return OutOnly()
    from fcnseg.models import FCN8s, build_model

    if name == "fcn8s-compact":
        return FCN8s(num_classes=NUM_CLASSES, layout="compact")
    return build_model(name, num_classes=NUM_CLASSES)


def timed(step, *, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, mode: str, height: int, width: int, *, batch: int, warmup: int, reps: int) -> dict:
    """Runs in the child process: seconds per step and the extra peak RSS (MiB).

    forward: ``model.eval()`` under inference_mode. fast, fast-bf16, fast-compile, fast-compile-bf16:
    ``fcnseg.inference_model`` with ``bf16`` and ``compile`` as named (compiled during the warm-up, not timed).
    train: SGD step in float32. train-cl: the same with channels_last weights and inputs. train-bf16:
    channels_last and bf16 autocast (``fcnseg train`` with ``channels_last: true`` and ``amp: true``).
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 3, height, width)
    if name.startswith("ceiling"):
        conv = nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last).eval()
        x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
        bf16 = name == "ceiling-bf16"

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                conv(x)
        return {"times": timed(run, warmup=warmup, reps=reps), "flops": 2 * 256 * 256 * 9 * 128 * 128}
    model = build(name)
    if mode.startswith("train"):
        bf16 = mode == "train-bf16"
        target = torch.randint(0, NUM_CLASSES, (batch, height, width))
        if mode in ("train-cl", "train-bf16"):
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        if not name.startswith(("torchfcn", "torchvision")):  # what `fcnseg train` does to its models
            from fcnseg.models.layers import unfold_large_convolutions

            unfold_large_convolutions(model)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-10, momentum=0.9)
        model.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            nn.functional.cross_entropy(logits.float(), target).backward()
            optimizer.step()
    elif mode == "onnxruntime":
        import tempfile

        import onnxruntime

        from fcnseg.export import export_onnx

        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(model, Path(folder) / "model.onnx", example_size=(1, 3, 64, 96), check_sizes=())
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}

        def step():
            session.run(None, feed)
    else:
        model.eval()
        run = model
        if mode.startswith("fast"):
            from fcnseg.inference import inference_model

            run = inference_model(model, x, bf16=mode.endswith("bf16"), compile="compile" in mode)

        def step():
            with torch.inference_mode():
                run(x)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = timed(step, warmup=warmup, reps=reps)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024  # ru_maxrss is KiB on Linux
    steps = getattr(run, "steps", None) if mode.startswith("fast") else None
    return {"times": times, "peak_mib": peak_mib, "steps": steps}


def in_subprocess(name: str, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", name, mode, "--size", f"{args.size[0]}x{args.size[1]}",
               "--threads", str(args.threads), "--batch", str(args.batch), "--warmup", str(args.warmup),
               "--reps", str(args.reps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops_of(name: str, height: int, width: int) -> int:
    from fcnseg.stats import count_flops

    with torch.device("meta"):
        model = build(name)
    return count_flops(model, height=height, width=width)


def row_text(name: str, mode: str, gflop: float, result: dict, ceiling: float) -> str:
    if "error" in result:
        return f"| {name} | {mode} | {gflop:.1f} | error: {result['error'][:60]} | | | |"
    times = result["times"]
    median = statistics.median(times)
    share = gflop * 1e9 / median / ceiling
    return (f"| {name} | {mode} | {gflop:.1f} | {median:.3f} s | {min(times):.3f}-{max(times):.3f} s | "
            f"{share:.0%} | {result.get('peak_mib', 0):+.0f} MiB |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--size", default="360x480", help="HEIGHTxWIDTH (500x500 for the paper's size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="images per forward / training step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 3 repetitions")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.quick:
        args.warmup, args.reps = 1, 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = args.size
    if args.child:
        print(json.dumps(measure(*args.child, height, width, batch=args.batch, warmup=args.warmup, reps=args.reps)))
        return 0
    ceilings = {}
    for kind in ("ceiling", "ceiling-bf16"):
        result = in_subprocess(kind, "forward", args)
        ceilings[kind] = result["flops"] / statistics.median(result["times"])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads, {height}x{width}, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.reps} runs")
    print(f"ceiling (3x3 conv 256->256 on 128x128, channels_last): float32 {ceilings['ceiling'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {ceilings['ceiling-bf16'] / 1e9:.0f} GFLOP/s (bf16 modes are shared against the latter)")
    print("| model | mode | GFLOP | median | min-max | share of ceiling | peak RSS delta |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        forward_gflop = flops_of(name, height, width) / 1e9
        for mode in args.modes.split(","):
            gflop = args.batch * (3 * forward_gflop if mode.startswith("train") else forward_gflop)  # backward ~2x
            result = in_subprocess(name, mode, args)
            ceiling = ceilings["ceiling-bf16" if mode in BF16_MODES else "ceiling"]
            print(row_text(name, mode, gflop, result, ceiling), flush=True)
            rows.append({"model": name, "mode": mode, "gflop": gflop, **result})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"size": [height, width], "threads": args.threads,
                                                   "batch": args.batch,
                                                   "ceiling_gflops": ceilings["ceiling"] / 1e9,
                                                   "ceiling_bf16_gflops": ceilings["ceiling-bf16"] / 1e9,
                                                   "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
