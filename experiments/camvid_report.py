"""Markdown for docs/camvid.md from a CamVid run: the mean-IU curve against training minutes and per-class IU.

    python experiments/camvid_report.py runs/camvid-fcn8s-lite0 --scores scores.json

`scores.json` is the output of `fcnseg eval --checkpoint RUN/best.pt --dataset camvid --root ... --json`.
"""

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--scores", type=Path, required=True)
    args = parser.parse_args()
    rows = [r for r in csv.DictReader((args.run / "log.csv").open()) if r.get("mean_iu")]
    print("| step | training minutes | mean IU | pixel acc. | mean acc. | f.w. IU |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {float(r['train_minutes']):.1f} | {100 * float(r['mean_iu']):.2f} | "
              f"{100 * float(r['pixel_acc']):.2f} | {100 * float(r['mean_acc']):.2f} | {100 * float(r['fwavacc']):.2f} |")
    scores = json.loads(args.scores.read_text())
    print()
    print("| class | IU |")
    print("|---|---:|")
    for name, iu in zip(scores["class_names"], scores["per_class_iu"]):
        print(f"| {name} | {100 * iu:.2f} |")
    print(f"| **mean** | **{100 * scores['mean_iu']:.2f}** |")


if __name__ == "__main__":
    main()
