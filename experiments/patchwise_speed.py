"""Convolutionalization amortizes patchwise evaluation (paper, section 3.1): time one pass of the convolutionalized
classifier over an image against the classifier run on every patch (``fcnseg.dense.patchwise``), forward and backward.

    OMP_NUM_THREADS=2 python experiments/patchwise_speed.py --arch alexnet vgg16 --size 500 --repeats 3 --json out.json

The paper (AlexNet, Caffe, one GPU): 1.2 ms forward for one 227x227 patch, 22 ms for the 10x10 score map of a
500x500 image, so more than 5x faster than 100 patches one by one in a batch; backward 2.4 ms against 37 ms.
torchvision's AlexNet (224 patches, floor-mode pools, padding) gives a 9x9 map at 500x500.

Both sides use the same loss, the sum of every cell's scores, and the classifier in eval mode (no dropout). The
patchwise backward runs in chunks of ``--batch-size`` patches (forward, then backward, gradients accumulated), as
one would train it without holding every patch's activations; its forward and backward times are summed over chunks.
Runs of the two sides alternate and the fastest of ``--repeats`` is reported: on a shared machine the minimum is
the figure least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torchvision import models

from fcnseg.convolutionalize import convolutionalize
from fcnseg.dense import patchwise

STRIDE = 32  # AlexNet's and VGG16's total stride
NATIVE = 224


def _seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def fcn_step_seconds(fcn: nn.Module, image: torch.Tensor) -> tuple[float, float]:
    """``(forward, backward)`` seconds of one training pass of the convolutionalized net on ``image``."""
    fcn.zero_grad(set_to_none=True)
    started = time.perf_counter()
    scores = fcn(image)  # (1, 1000, rows, cols)
    forward = time.perf_counter() - started
    started = time.perf_counter()
    scores.sum().backward()
    return forward, time.perf_counter() - started


def patchwise_step_seconds(classifier: nn.Module, image: torch.Tensor, *, batch_size: int) -> tuple[float, float]:
    """``(forward, backward)`` seconds summed over chunks of about ``batch_size`` patches (whole rows of cells)."""
    classifier.zero_grad(set_to_none=True)
    rows = (image.shape[-2] - NATIVE) // STRIDE + 1
    cols = (image.shape[-1] - NATIVE) // STRIDE + 1
    rows_per_chunk = max(1, batch_size // cols)
    forward = backward = 0.0
    for first in range(0, rows, rows_per_chunk):
        last = min(rows, first + rows_per_chunk) - 1
        band = image[..., STRIDE * first : STRIDE * last + NATIVE, :]  # the patches of cell rows first..last
        started = time.perf_counter()
        scores = patchwise(classifier, band, STRIDE, batch_size=batch_size)  # (1, 1000, last - first + 1, cols)
        forward += time.perf_counter() - started
        started = time.perf_counter()
        scores.sum().backward()
        backward += time.perf_counter() - started
    return forward, backward


def measure(arch: str, *, size: int, repeats: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    classifier = getattr(models, arch)(weights=None).eval()
    fcn = convolutionalize(classifier).eval()
    image = torch.randn(1, 3, size, size)
    patch = image[..., :NATIVE, :NATIVE]
    with torch.no_grad():
        grid = tuple(fcn(image).shape[-2:])  # also the warm-up
        classifier(image[..., :NATIVE, :NATIVE].expand(min(batch_size, grid[0] * grid[1]), -1, -1, -1))
        forwards = [(_seconds(lambda: fcn(image)),
                     _seconds(lambda: patchwise(classifier, image, STRIDE, batch_size=batch_size)),
                     _seconds(lambda: classifier(patch))) for _ in range(repeats)]  # interleaved: same load
    steps = [(fcn_step_seconds(fcn, image), patchwise_step_seconds(classifier, image, batch_size=batch_size))
             for _ in range(repeats)]
    fcn_forward, patchwise_forward, single_forward = (min(times) for times in zip(*forwards))
    fcn_backward = min(fcn_step[1] for fcn_step, _ in steps)
    patchwise_backward = min(patch_step[1] for _, patch_step in steps)
    cells = grid[0] * grid[1]
    result = {
        "arch": arch, "size": size, "grid": list(grid), "cells": cells, "batch_size": batch_size, "repeats": repeats,
        "threads": torch.get_num_threads(),
        "fcn_forward_ms": 1e3 * fcn_forward,
        "patchwise_forward_ms": 1e3 * patchwise_forward,
        "single_patch_forward_ms": 1e3 * single_forward,
        "fcn_backward_ms": 1e3 * fcn_backward,
        "patchwise_backward_ms": 1e3 * patchwise_backward,
    }
    result["forward_speedup"] = result["patchwise_forward_ms"] / result["fcn_forward_ms"]
    result["unbatched_forward_speedup"] = cells * result["single_patch_forward_ms"] / result["fcn_forward_ms"]
    result["backward_speedup"] = result["patchwise_backward_ms"] / result["fcn_backward_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["alexnet", "vgg16"], choices=["alexnet", "vgg16"])
    parser.add_argument("--size", type=int, default=500, help="image side (default 500, the paper's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the fastest is reported")
    parser.add_argument("--batch-size", type=int, default=81, help="patches per batch (default 81: 9x9 at 500)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for arch in args.arch:
        result = measure(arch, size=args.size, repeats=args.repeats, batch_size=args.batch_size)
        results.append(result)
        print(f"{arch} {args.size}x{args.size} -> {result['grid'][0]}x{result['grid'][1]} cells, "
              f"{result['threads']} threads, best of {args.repeats}")
        print(f"  forward : fcn {result['fcn_forward_ms']:9.1f} ms   patchwise {result['patchwise_forward_ms']:9.1f} ms"
              f"   speedup {result['forward_speedup']:5.2f}x   (one patch {result['single_patch_forward_ms']:.1f} ms;"
              f" x{result['cells']} unbatched: {result['unbatched_forward_speedup']:.2f}x)")
        print(f"  backward: fcn {result['fcn_backward_ms']:9.1f} ms   "
              f"patchwise {result['patchwise_backward_ms']:9.1f} ms"
              f"   speedup {result['backward_speedup']:5.2f}x")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)


if __name__ == "__main__":
    main()
