"""fcn8s-lite0 training step against an eager FCN-8s head on timm's ``tf_efficientnet_lite0``, in one process.

    python bench/train_step.py                      # batch 8 of 320x320 crops, 2 threads, 10 alternating rounds
    python bench/train_step.py --profile            # and a per-op profile (self CPU time) of each

The step is what ``fcnseg train`` runs: forward, loss, backward, AdamW step (``zero_grad(set_to_none=True)``
first). Ours is built and configured by the training code itself (``build_model``, ``make_optimizer``,
``loss_terms``, the ``amp`` and ``channels_last`` config keys); the peer is the one docs/performance.md and
../shared/BENCHMARKS.md name: ``timm.create_model("tf_efficientnet_lite0", features_only=True,
out_indices=(2, 3, 4))``, 1x1 score convolutions on its three outputs, fixed bilinear grouped transposed
convolutions 2x, 2x, 8x, skip sums, plain ``F.cross_entropy``, AdamW. Both are randomly initialized (11 classes,
as CamVid) and see the same random batch; steps alternate (ours in each mode, then the peer in each of its
modes) so that a change of load hits all of them, and the table gives medians over the rounds.
Needs the ``bench`` extra (``pip install timm``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 11
IGNORE = 255


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def bilinear_grouped(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Fixed bilinear upsampling by ``factor`` as a grouped transposed convolution (the peer's)."""
    from fcnseg.models.layers import bilinear_kernel

    kernel = 2 * factor
    layer = nn.ConvTranspose2d(channels, channels, kernel, stride=factor, padding=(kernel - factor) // 2,
                               groups=channels, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(kernel).expand(channels, 1, kernel, kernel))
    layer.weight.requires_grad_(False)
    return layer


class TimmFCN8s(nn.Module):
    """FCN-8s on timm's tf_efficientnet_lite0 features (strides 8, 16, 32)."""

    def __init__(self, num_classes: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3, 4),
                                          pretrained=False)
        c8, c16, c32 = self.backbone.feature_info.channels()
        self.score8, self.score16, self.score32 = (nn.Conv2d(c, num_classes, 1) for c in (c8, c16, c32))
        self.up32, self.up16, self.up8 = bilinear_grouped(num_classes, 2), bilinear_grouped(num_classes, 2), \
            bilinear_grouped(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f8, f16, f32 = self.backbone(x)
        h = self.up32(self.score32(f32)) + self.score16(f16)  # (N, K, H/16, W/16)
        h = self.up16(h) + self.score8(f8)  # (N, K, H/8, W/8)
        return self.up8(h)  # (N, K, H, W)


def ours(mode: str, *, model_name: str = "fcn8s-lite0"):
    """``(model, optimizer, step)`` for fcnseg's ``model_name`` as ``fcnseg train`` configures it in ``mode``:
    ``fp32`` or ``bf16`` (``amp``), ``-cl`` (``channels_last``), ``-freezeN`` (``freeze_backbone_stride: N``), and
    ``-unfused`` (the frozen blocks in their plain training form, not ``FrozenMBConv``)."""
    from fcnseg.distributed import DistContext, global_loss
    from fcnseg.inference.unfold_fc import unfold_large_convolutions
    from fcnseg.models import build_model
    from fcnseg.training.config import make_config, resolve_recipe
    from fcnseg.training.loop import set_training_modes
    from fcnseg.training.losses import loss_terms
    from fcnseg.training.setup import freeze_backbone_layers, make_optimizer

    amp, channels_last = "bf16" in mode, "cl" in mode
    freeze = int(mode.split("freeze")[1].split("-")[0]) if "freeze" in mode else None
    config = resolve_recipe(make_config({"model": model_name, "dataset": "camvid", "root": ".", "amp": amp,
                                         "channels_last": channels_last, "freeze_backbone_stride": freeze}))
    model = build_model(model_name, num_classes=NUM_CLASSES)
    for module in model.modules():  # score layers start at zero: give them weights, as after a few steps
        if isinstance(module, nn.Conv2d) and module.out_channels == NUM_CLASSES and module.weight.requires_grad:
            nn.init.normal_(module.weight, std=0.01)
    unfold_large_convolutions(model)
    if freeze is not None:
        freeze_backbone_layers(model, freeze, model_name=model_name, fused="unfused" not in mode)
    set_training_modes(model, config)
    optimizer = make_optimizer(model, config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(images)
        terms = loss_terms(outputs, masks, ignore_index=IGNORE)
        loss, value = global_loss(terms, reduction="mean", grad_accum=1, context=DistContext())
        loss.backward()
        optimizer.step()
        return value

    return step


def peer(mode: str):
    amp, channels_last = "bf16" in mode, "cl" in mode
    model = TimmFCN8s(NUM_CLASSES).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def profile(step, images: torch.Tensor, masks: torch.Tensor, *, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step(images, masks)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(images, masks)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="fcn8s-lite0", help="our model (the peer is always FCN-8s on Lite0)")
    parser.add_argument("--ours", default="fp32,fp32-cl,bf16,bf16-cl",
                        help="modes of ours (fp32/bf16, -cl, -freezeN: freeze_backbone_stride N, -unfused: "
                             "frozen blocks in their plain form)")
    parser.add_argument("--peer", default="fp32,bf16-cl", help="modes of the timm peer")
    parser.add_argument("--profile", action="store_true", help="print a per-op profile of each entry")
    parser.add_argument("--profile-rows", type=int, default=18)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop)
    masks = torch.randint(0, NUM_CLASSES, (args.batch, args.crop, args.crop))
    masks[:, :16] = IGNORE  # some void, as in CamVid
    entries = {f"fcnseg {args.model} {m}": ours(m, model_name=args.model) for m in args.ours.split(",") if m}
    entries.update({f"timm peer {m}": peer(m) for m in args.peer.split(",") if m})
    times: dict[str, list[float]] = {name: [] for name in entries}
    for round_index in range(args.warmup + args.rounds):
        for name, step in entries.items():
            started = time.perf_counter()
            step(images, masks)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    baseline = medians.get("timm peer fp32", next(iter(medians.values())))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch} of {args.crop}x{args.crop}, {args.warmup} warm-up + "
          f"{args.rounds} alternating rounds")
    print("| entry | median s/step | min-max | images/s | speed vs timm peer fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {medians[name]:.3f} | {min(seconds):.3f}-{max(seconds):.3f} | "
              f"{args.batch / medians[name]:.1f} | {baseline / medians[name]:.2f}x |")
    if args.profile:
        for name, step in entries.items():
            print(f"\n## {name}\n")
            print(profile(step, images, masks, rows=args.profile_rows))


if __name__ == "__main__":
    main()
