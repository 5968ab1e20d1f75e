"""The frozen backbone blocks alone: plain ``MBConvBlock`` against ``FrozenMBConv``, in one process.

    python bench/frozen_blocks.py                          # fcn4s-lite1, freeze_backbone_stride 8, batch 8 of 320x320
    python bench/frozen_blocks.py --stride 4 --rounds 20

``freeze_backbone_stride: N`` makes the backbone's blocks up to stride N pure inference inside a training step
(no parameter or input of theirs needs a gradient); ``fused=True`` (the default) runs them as ``FrozenMBConv``
(``fcnseg/training/frozen_layers.py``). This times that part of the step by itself, on the stem's output for a
random batch: the plain blocks in float32 and under bf16 autocast (as ``amp: true`` runs them), and the
``FrozenMBConv`` blocks (float32 with autocast off, whatever the caller's autocast), all channels_last, in eval
mode (no stochastic depth), alternating round by round; medians. Alone, the blocks' difference is larger than
inside a real step (docs/performance.md, "Not computing what is not trained"): bench/train_step.py's ``-unfused``
modes give the whole step's difference, the figure that counts for training.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from train_step import cpu_name  # bench/ is the working directory's sibling: run as `python bench/frozen_blocks.py`


def frozen_blocks(model_name: str, stride: int, *, fused: bool) -> tuple[nn.Module, nn.Sequential]:
    """``(stem, blocks)``: the stem (conv, batch norm, activation) and the frozen MBConv blocks, in order."""
    from fcnseg.models import build_model
    from fcnseg.models.efficientnet_lite import MBConvBlock
    from fcnseg.training.setup import freeze_backbone_layers

    model = build_model(model_name, num_classes=11)
    layers = freeze_backbone_layers(model, stride, model_name=model_name, fused=fused)
    blocks = nn.Sequential(*(layer for layer in layers if isinstance(layer, MBConvBlock))).eval()
    stem_conv, stem_bn = layers[0], layers[1]
    stem = nn.Sequential(copy.deepcopy(stem_conv), copy.deepcopy(stem_bn), nn.ReLU6()).eval()
    return stem, blocks.to(memory_format=torch.channels_last)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn4s-lite1")
    parser.add_argument("--stride", type=int, default=8, help="freeze_backbone_stride")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    stem, plain = frozen_blocks(args.model, args.stride, fused=False)
    _, fused = frozen_blocks(args.model, args.stride, fused=True)
    fused.load_state_dict(plain.state_dict())  # the same weights (FrozenMBConv keeps the plain state dict's keys)
    images = torch.randn(args.batch, 3, args.crop, args.crop)
    with torch.no_grad():
        x = stem(images).contiguous(memory_format=torch.channels_last)  # (N, C_stem, H/2, W/2)
    entries = {
        "plain blocks, float32": (plain, False),
        "plain blocks, bf16 autocast": (plain, True),
        "FrozenMBConv (float32, fused)": (fused, True),
    }
    times: dict[str, list[float]] = {name: [] for name in entries}
    outputs = {}
    with torch.no_grad():
        for round_index in range(args.warmup + args.rounds):
            for name, (blocks, bf16) in entries.items():
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    outputs[name] = blocks(x)
                if round_index >= args.warmup:
                    times[name].append(time.perf_counter() - started)
    reference = outputs["plain blocks, float32"].float()
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    baseline = medians["plain blocks, bf16 autocast"]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, torch {torch.__version__}, "
          f"{args.threads} threads; {args.model} blocks to stride {args.stride} ({len(plain)} MBConv blocks) on a "
          f"{tuple(x.shape)} stem output; {args.warmup} warm-up + {args.rounds} alternating rounds")
    print("| entry | median ms | min-max | speed vs plain bf16 | max. difference from plain float32 (relative) |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in times.items():
        # the largest absolute difference, over the largest absolute value of the float32 output
        difference = ((outputs[name].float() - reference).abs().max() / reference.abs().max()).item()
        print(f"| {name} | {1000 * medians[name]:.1f} | {1000 * min(seconds):.1f}-{1000 * max(seconds):.1f} | "
              f"{baseline / medians[name]:.2f}x | {difference:.2g} |")


if __name__ == "__main__":
    main()
