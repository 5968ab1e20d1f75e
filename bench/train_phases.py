"""Where a real CamVid training step's time goes: data, forward, loss, backward, optimizer.

    python bench/train_phases.py --root ../shared/data/camvid                      # fcn4s-lite1, OHEM, 2 workers
    python bench/train_phases.py --root ../shared/data/camvid --model fcn8s-lite1 --workers 0

Unlike bench/train_step.py (one random batch, no data loading), this runs the shipped recipe's pipeline: the
ImageNet-pretrained backbone, CamVid ``train`` through the training transforms and ``train_loader`` (320x320
crops, scale 0.75-1.5, colour jitter, batch 8), channels_last, the recipe's loss (OHEM at 0.7 / 100 000 unless
``--no-ohem``) and AdamW. Each phase is timed with ``time.perf_counter`` around it; medians over the steps after
``--warmup``. ``data`` is the wait for the next batch: with workers it is only the stall the workers did not hide.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fcnseg.devices import cpu_description
from fcnseg.distributed import DistContext, global_loss
from fcnseg.training.config import make_config, resolve_recipe
from fcnseg.training.data import build_datasets, train_loader
from fcnseg.training.loop import set_training_modes
from fcnseg.training.losses import loss_terms
from fcnseg.training.setup import build_training_model, make_optimizer

PHASES = ("data", "forward", "loss", "backward", "optimizer", "step")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--model", default="fcn4s-lite1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-ohem", action="store_true")
    parser.add_argument("--freeze-backbone-stride", type=int, default=None,
                        help="the recipe option freeze_backbone_stride (2, 4, 8 or 16): those layers are not trained")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    keys = {"model": args.model, "dataset": "camvid", "root": args.root, "crop_size": 320,
            "scale_range": [0.75, 1.5], "color_jitter": 0.2, "train_splits": ["train"], "workers": args.workers,
            "channels_last": True, "pretrained_backbone": True}
    if args.freeze_backbone_stride is not None:
        keys["freeze_backbone_stride"] = args.freeze_backbone_stride
    if not args.no_ohem:
        keys.update(ohem_threshold=0.7, ohem_min_kept=100000)
    config = resolve_recipe(make_config(keys))
    model, normalization = build_training_model(config)
    set_training_modes(model, config)  # the loop's modes: frozen layers' batch norm in eval
    optimizer = make_optimizer(model, config)
    model = model.to(memory_format=torch.channels_last)
    train_set, _ = build_datasets(config, normalization, ("color",))
    batches = iter(train_loader(train_set, config, 0, DistContext()))
    times: dict[str, list[float]] = {name: [] for name in PHASES}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        images, masks = next(batches)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        outputs = model(images.contiguous(memory_format=torch.channels_last))
        t2 = time.perf_counter()
        terms = loss_terms(outputs, masks, ignore_index=train_set.info.ignore_index,
                           ohem_threshold=config.ohem_threshold, ohem_min_kept=config.ohem_min_kept)
        loss, _ = global_loss(terms, reduction="mean", grad_accum=1, context=DistContext())
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        if step >= args.warmup:
            for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                times[name].append(seconds)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_description()}, torch {torch.__version__}, "
          f"{args.model}, {args.threads} threads, {args.workers} workers, OHEM {'off' if args.no_ohem else 'on'}, "
          f"freeze_backbone_stride {args.freeze_backbone_stride}, "
          f"medians of {args.steps} steps after {args.warmup}")
    print("| phase | median s | min-max |")
    print("|---|---:|---:|")
    for name in PHASES:
        print(f"| {name} | {statistics.median(times[name]):.3f} | {min(times[name]):.3f}-{max(times[name]):.3f} |")
    print(f"\n{60 / statistics.median(times['step']):.0f} steps a minute; 60 minutes: "
          f"{3600 / statistics.median(times['step']):.0f} steps")


if __name__ == "__main__":
    main()
