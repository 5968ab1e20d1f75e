"""Whole-image training against patch sampling (paper, section 4.4 and Figure 5), on CamVid.

    OMP_NUM_THREADS=2 python experiments/loss_sampling_camvid.py --root ../shared/data/camvid --iters 300 \\
        --out runs/loss-sampling

The paper emulates patch sampling by keeping each final-layer cell's loss with probability P (``loss_sample``,
``fcnseg.training.loop.segmentation_loss``: independent 32x32 cells of the output, a fresh draw per image and step) and,
for the left plot of its Figure 5, raises the number of images per batch to 1 / P times as many so that the
expected number of kept cells per step stays the same. Its finding: sampling does not speed up convergence per
iteration and, needing more images per step, is slower in wall-clock time; whole images are just as effective.

Each variant trains ``fcn8s-lite0`` from ImageNet weights with ``fcnseg.training.loop.train`` for the same number of steps
(or ``--minutes`` of training time each), validating every ``--val-every`` steps. Written to ``--out``: one run
folder per variant, ``results.json`` (mean IU against step and training minutes; validation time not counted) and
``curves.png``. ``--same-batch`` keeps the batch size fixed instead (fewer kept cells per step when P < 1).
"Whole image" here is the whole ``--crop-size`` crop (batching needs equal sizes): every cell is kept.

Shared with experiments/upsampling_camvid.py: ``add_budget_arguments``, ``base_config``, ``check_variants``,
``run_variants``, ``plot_curves``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fcnseg.training.config import make_config
from fcnseg.training.loop import train


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="../shared/data/camvid", help="CamVid folder (SegNet layout)")
    parser.add_argument("--out", required=True, help="folder for the runs, results.json and curves.png")
    parser.add_argument("--model", default="fcn8s-lite0")
    parser.add_argument("--iters", type=int, default=300, help="optimizer steps per variant")
    parser.add_argument("--minutes", type=float, default=None, help="training-time budget per variant (optional)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=320)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="fixed", choices=["fixed", "poly", "cosine"],
                        help="fixed (default): variants with different step times see the same rate at a given step")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-max-images", type=int, default=None, help="default: all 101 val images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="check and print the variants' configs, train nothing")


def base_config(args: argparse.Namespace) -> dict:
    """The config keys every variant shares (fcnseg.training.config.TrainConfig), from the budget arguments."""
    return {
        "model": args.model, "dataset": "camvid", "root": args.root, "recipe": "modern", "pretrained_backbone": True,
        "iters": args.iters, "time_budget_minutes": args.minutes, "batch_size": args.batch_size,
        "crop_size": args.crop_size, "scale_range": [0.75, 1.5], "hflip": True, "optimizer": "adamw", "lr": args.lr,
        "schedule": args.schedule, "val_every": args.val_every, "val_max_images": args.val_max_images,
        "log_every": 10, "threads": args.threads, "workers": args.workers, "seed": args.seed,
    }


def read_curve(run: Path) -> list[dict]:
    """``[{"step", "minutes", "mean_iu"}]`` from a run's log.csv (validation rows only)."""
    with (run / "log.csv").open() as stream:
        return [{"step": int(row["step"]), "minutes": float(row["train_minutes"]), "mean_iu": float(row["mean_iu"])}
                for row in csv.DictReader(stream) if row.get("mean_iu")]


def check_variants(variants: dict[str, dict], *, out: Path) -> None:
    """Build every variant's TrainConfig (unknown keys and wrong types are errors) and print it."""
    for name, values in variants.items():
        print(name, make_config({**values, "out": str(out / name)}))


def run_variants(variants: dict[str, dict], *, out: Path) -> dict:
    """Train each ``{name: config values}`` into ``out / name``; ``{name: {"config", "curve", "best_mean_iu"}}``."""
    results = {}
    for name, values in variants.items():
        run = out / name
        print(f"== {name}: {json.dumps({k: v for k, v in values.items() if k != 'root'})}", flush=True)
        summary = train(make_config({**values, "out": str(run)}), progress=False)
        curve = read_curve(run)
        results[name] = {"config": values, "curve": curve, "best_mean_iu": summary["best_mean_iu"],
                         "final_mean_iu": curve[-1]["mean_iu"] if curve else None}
        print(f"   best mean IU {100 * summary['best_mean_iu']:.2f} after {summary['step']} steps", flush=True)
    return results


def plot_curves(results: dict, path: Path, *, title: str) -> None:
    """Mean IU against steps (left) and training minutes (right), one line a variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        curve = result["curve"]
        by_step.plot([p["step"] for p in curve], [100 * p["mean_iu"] for p in curve], marker="o", label=name)
        by_time.plot([p["minutes"] for p in curve], [100 * p["mean_iu"] for p in curve], marker="o", label=name)
    by_step.set(xlabel="iteration", ylabel="val mean IU (%)", title=title)
    by_time.set(xlabel="training minutes (validation excluded)", ylabel="val mean IU (%)", title=title)
    by_step.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def sampling_variants(args: argparse.Namespace) -> dict[str, dict]:
    base = base_config(args)
    variants = {}
    for probability in args.probabilities:
        batch_size = args.batch_size if args.same_batch else round(args.batch_size / probability)
        name = "whole" if probability == 1 else f"sample-{probability:g}"
        variants[name] = {**base, "batch_size": batch_size, "loss_sample": None if probability == 1 else probability}
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser)
    parser.add_argument("--probabilities", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--same-batch", action="store_true", help="do not scale the batch by 1 / P")
    args = parser.parse_args()
    if any(not 0 < p <= 1 for p in args.probabilities):
        parser.error("probabilities must be in (0, 1]")
    out = Path(args.out)
    if args.dry_run:
        return check_variants(sampling_variants(args), out=out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_variants(sampling_variants(args), out=out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(results, out / "curves.png", title="loss sampling (CamVid)")
    print(f"wrote {out / 'results.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
