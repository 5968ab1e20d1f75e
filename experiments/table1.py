"""The paper's Table 1, measured here: parameters, conv layers, receptive field, stride, forward time at 500x500.

    OMP_NUM_THREADS=2 python experiments/table1.py --threads 2 --repeats 3 [--no-time] [--json table1.json]

Every figure but the forward time comes from ``fcnseg.stats`` on the module (21 classes, PASCAL VOC's),
next to the paper's. Mean IU (VOC 2011 val) is the paper's only: it needs the trained models.
"""

from __future__ import annotations

import argparse
import json

import torch

from fcnseg.models.registry import build_model
from fcnseg.stats import model_stats

# model -> (paper's name, mean IU, forward ms on a K40c at 500x500, conv layers, parameters (M), rf size, max stride)
PAPER: dict[str, tuple] = {
    "fcn-alexnet": ("FCN-AlexNet", 39.8, 50, 8, 57, 355, 32),
    "fcn32s": ("FCN-VGG16", 56.0, 210, 16, 134, 404, 32),
    "fcn-googlenet": ("FCN-GoogLeNet", 42.5, 59, 22, 6, 907, 32),
    "fcn8s-lite0": ("(not in the paper)", None, None, None, None, None, None),
}
NUM_CLASSES = 21


def measure(name: str, *, time_it: bool, repeats: int, size: int) -> dict:
    if time_it:
        torch.manual_seed(0)
        model = build_model(name, num_classes=NUM_CLASSES)
    else:
        with torch.device("meta"):  # geometry and counts need no weights
            model = build_model(name, num_classes=NUM_CLASSES)
    stats = model_stats(model, time_it=time_it, height=size, width=size, repeats=repeats)
    paper = PAPER.get(name, ("", None, None, None, None, None, None))
    return {"model": name, "paper_name": paper[0], **stats, "paper": dict(zip(
        ("mean_iu", "forward_ms", "conv_layers", "params_millions", "receptive_field", "output_stride"), paper[1:]))}


def _cell(value, paper) -> str:
    return f"{value} ({paper})" if paper is not None else f"{value}"


def print_table(rows: list[dict], *, threads: int, size: int) -> None:
    print(f"measured here (paper's figure); forward time: {threads} CPU threads, {size}x{size}, median")
    print("| model | paper's name | forward ms | conv layers | parameters | rf size | max stride |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        paper = row["paper"]
        forward = "-" if row["forward_seconds"] is None else f"{1e3 * row['forward_seconds']:.0f}"
        params = f"{row['params'] / 1e6:.1f}M"
        paper_params = None if paper["params_millions"] is None else f"{paper['params_millions']}M"
        cells = [_cell(forward, paper["forward_ms"]), _cell(row["conv_layers"], paper["conv_layers"]),
                 _cell(params, paper_params), _cell(row["receptive_field"], paper["receptive_field"]),
                 _cell(row["output_stride"], paper["output_stride"])]
        print(f"| {row['model']} | {row['paper_name']} | " + " | ".join(cells) + " |")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAPER))
    parser.add_argument("--no-time", dest="time_it", action="store_false", help="skip the forward timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(name, time_it=args.time_it, repeats=args.repeats, size=args.size) for name in args.models]
    print_table(rows, threads=torch.get_num_threads(), size=args.size)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(rows, stream, indent=2)


if __name__ == "__main__":
    main()
