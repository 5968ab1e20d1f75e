"""Short equal-budget CamVid runs of recipe variants, scored on CamVid val: the ablation table of docs/camvid.md.

    python experiments/camvid_ablation.py --root ../shared/data/camvid --out runs/ablation \
        --variants base,base-seed1,enet,median,ohem --iters 500

Each variant is ``experiments/configs/camvid-fcn8s-lite0.yaml`` plus its overrides (``VARIANTS``), trained with
``fcnseg train`` in its own process for ``--iters`` steps (the poly schedule decays over exactly those steps),
validated once at the end on all 101 val images. Variants that change the cost of a step (another backbone or
crop size) compare at equal training minutes only when run with their own ``--iters`` (the base's steps times the
measured step-time ratio, bench/train_step.py). Prints a markdown table: val mean IU, Pole IU, training minutes, steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "camvid-fcn8s-lite0.yaml"
FAST = ["amp=true", "channels_last=true"]  # the training step's fast path (bench/train_step.py)
OHEM = ["ohem_threshold=0.7", "ohem_min_kept=100000"]
VARIANTS: dict[str, list[str]] = {
    "base": FAST,
    "base-seed1": FAST + ["seed=1"],
    "fp32": [],
    "enet": FAST + ["class_weights=enet"],
    "median": FAST + ["class_weights=median_frequency"],
    "ohem": FAST + OHEM,
    "enet-ohem": FAST + ["class_weights=enet"] + OHEM,
    "lite1": FAST + ["model=fcn8s-lite1"],
    "lite2": FAST + ["model=fcn8s-lite2"],
    "crop384": FAST + ["crop_size=384"],
    "ohem-lite1": FAST + OHEM + ["model=fcn8s-lite1"],
    "ohem-lite1-fcn4s": FAST + OHEM + ["model=fcn4s-lite1"],
    "ohem-lite1-fcn4s-freeze4": FAST + OHEM + ["model=fcn4s-lite1", "freeze_backbone_stride=4"],
    "ohem-lite1-fcn4s-freeze8": FAST + OHEM + ["model=fcn4s-lite1", "freeze_backbone_stride=8"],
    "ohem-lite2": FAST + OHEM + ["model=fcn8s-lite2"],
    "ohem-crop384": FAST + OHEM + ["crop_size=384"],
}


def run_variant(name: str, *, root: str, out: Path, iters: int, extra: list[str]) -> dict:
    run_dir = out / name
    command = [sys.executable, "-m", "fcnseg", "train", "--config", str(CONFIG), f"root={root}",
               f"out={run_dir}", f"iters={iters}", f"val_every={iters}", "time_budget_minutes=null",
               f"warmup_iters={min(50, iters // 10)}", *VARIANTS[name], *extra]
    if (run_dir / "last.pt").exists():
        command.append("--resume")
    subprocess.run(command, check=True)
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    last = next(row for row in reversed(rows) if row.get("mean_iu"))
    scores_path = run_dir / "scores.json"
    subprocess.run([sys.executable, "-m", "fcnseg", "eval", "--checkpoint", str(run_dir / "last.pt"),
                    "--root", root, "--json"], check=True, stdout=scores_path.open("w"))
    scores = json.loads(scores_path.read_text())
    return {"name": name, "steps": iters, "minutes": float(last["train_minutes"]), "mean_iu": scores["mean_iu"],
            "pole_iu": scores["per_class_iu"][2], "overrides": " ".join(VARIANTS[name]) or "(float32)"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--variants", default="base,base-seed1,enet,median,ohem")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides for every variant (e.g. threads=1 workers=1 to run two variants side by side, "
                        "each pinned to one core with taskset)")
    args = parser.parse_args(argv)
    results = [run_variant(name, root=args.root, out=Path(args.out), iters=args.iters, extra=args.set)
               for name in args.variants.split(",")]
    print("| variant | overrides | steps | training minutes | val mean IU | Pole IU |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['overrides']} | {r['steps']} | {r['minutes']:.1f} | {100 * r['mean_iu']:.2f} | "
              f"{100 * r['pole_iu']:.2f} |")


if __name__ == "__main__":
    main()
