"""Speed of every FCN and two peers, batch 1, float32, in one run: forward (eager and ``inference_model``),
training step (forward, cross-entropy, backward, SGD step), peak memory, FLOPs and share of the machine's ceiling.

    python bench/speed.py --quick --json-out bench/speed.json            # 360x480
    python bench/speed.py --size 500x500 --models fcn8s,fcn8s-compact --modes forward,fast

Each (model, mode) runs in its own subprocess, so that peak memory is that process's ``ru_maxrss``
(``resource.getrusage``) after the measurement minus its value once the model and input exist: the extra
resident memory the forward or training step needs (warm-up included, which does the same work).
Times: median, min and max of ``--reps`` runs after ``--warmup`` runs (``time.perf_counter``).
The ceiling is one 3x3 convolution 256->256 on 128x128, channels_last, timed the same way in the same run.
Peers: torchfcn 1.9.7's FCN8s (its ``models`` subpackage imported on its own, as tests/test_reference_port.py
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
MODES = ("forward", "fast", "train")
NUM_CLASSES = 21


def build(name: str) -> nn.Module:
    """A randomly initialized model that returns ``(N, 21, H, W)`` logits."""
    if name == "torchfcn-fcn8s":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
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


def measure(name: str, mode: str, height: int, width: int, *, warmup: int, reps: int) -> dict:
    """Runs in the child process: seconds per step and the extra peak RSS (MiB)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, height, width)
    if name == "ceiling":
        conv = nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last).eval()
        x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return {"times": timed(lambda: conv(x), warmup=warmup, reps=reps), "flops": 2 * 256 * 256 * 9 * 128 * 128}
    model = build(name)
    if mode == "train":
        target = torch.randint(0, NUM_CLASSES, (1, height, width))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-10, momentum=0.9)
        model.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), target).backward()
            optimizer.step()
    else:
        model.eval()
        run = model
        if mode == "fast":
            from fcnseg.fast import inference_model

            run = inference_model(model, x)

        def step():
            with torch.inference_mode():
                run(x)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = timed(step, warmup=warmup, reps=reps)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024  # ru_maxrss is KiB on Linux
    return {"times": times, "peak_mib": peak_mib}


def in_subprocess(name: str, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", name, mode, "--size", f"{args.size[0]}x{args.size[1]}",
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops_of(name: str, height: int, width: int) -> int:
    from fcnseg.summary import count_flops

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
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of forward,fast,train")
    parser.add_argument("--size", default="360x480", help="HEIGHTxWIDTH (500x500 for the paper's size)")
    parser.add_argument("--threads", type=int, default=2)
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
        print(json.dumps(measure(*args.child, height, width, warmup=args.warmup, reps=args.reps)))
        return 0
    ceiling = in_subprocess("ceiling", "forward", args)
    ceiling_flops = ceiling["flops"] / statistics.median(ceiling["times"])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads, {height}x{width}, batch 1, "
          f"{args.warmup} warm-up + {args.reps} runs")
    print(f"ceiling (3x3 conv 256->256 on 128x128, channels_last): {statistics.median(ceiling['times']) * 1e3:.1f} ms"
          f" = {ceiling_flops / 1e9:.0f} GFLOP/s")
    print("| model | mode | GFLOP | median | min-max | share of ceiling | peak RSS delta |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        forward_gflop = flops_of(name, height, width) / 1e9
        for mode in args.modes.split(","):
            gflop = 3 * forward_gflop if mode == "train" else forward_gflop  # backward about twice the forward
            result = in_subprocess(name, mode, args)
            print(row_text(name, mode, gflop, result, ceiling_flops), flush=True)
            rows.append({"model": name, "mode": mode, "gflop": gflop, **result})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"size": [height, width], "threads": args.threads,
                                                   "ceiling_gflops": ceiling_flops / 1e9, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
