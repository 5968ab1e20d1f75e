"""Test-time augmentation on CamVid val: mean IU and milliseconds per image without TTA, with flip, and with flip
over three scales, all in one process on the fast inference path as ``fcnseg predict`` runs it
(``inference_model`` checked on a 64x96 example, each TTA view run by that fast module).

Each image is run by every variant in turn (after one untimed warm-up image), so a change of machine load hits all
variants alike; the time is the median over images of one forward pass (all views), batch 1.

    python bench/tta_camvid.py --root /work/shared/data/camvid --json-out bench/tta_camvid.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import torch
from torch import nn

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.inference import inference_model
from fcnseg.metrics import ConfusionMatrix
from fcnseg.tta import TTAModel, parse_tta

DEFAULT_SPECS = ("none", "flip", "flip,scales=0.75,1,1.25")


def cpu_name() -> str:
    """``lscpu``'s model name (the platform's processor string where lscpu is missing)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def build_variants(fast: nn.Module, specs: list[str]) -> dict[str, tuple[nn.Module, int]]:
    """Spec -> (module, views); ``"none"`` is the fast module alone."""
    variants = {}
    for spec in specs:
        if spec == "none":
            variants[spec] = (fast, 1)
        else:
            config = parse_tta(spec)
            variants[spec] = (TTAModel(fast, flip=config.flip, scales=config.scales), config.num_views)
    return variants


@torch.inference_mode()
def score_variants(variants: dict[str, tuple[nn.Module, int]], dataset, *, num_classes: int, ignore_index: int,
                   count: int, device: torch.device) -> list[dict]:
    """Per variant: the four metrics and the median milliseconds per image, images run round-robin."""
    matrices = {spec: ConfusionMatrix(num_classes, ignore_index=ignore_index) for spec in variants}
    times: dict[str, list[float]] = {spec: [] for spec in variants}
    warmup = dataset[0][0][None].to(device)
    for module, _ in variants.values():
        module(warmup)
    for index in range(count):
        image, mask = dataset[index]
        x = image[None].to(device)  # (1, 3, H, W)
        for spec, (module, _) in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scores = module(x)  # (1, K, H, W): logits, or averaged probabilities
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[spec].append(time.perf_counter() - start)
            matrices[spec].update(scores.argmax(1), mask[None].to(device))
    rows = []
    for spec, (_, views) in variants.items():
        metrics = matrices[spec].compute()
        ordered = sorted(times[spec])
        rows.append({"tta": spec, "views": views, "ms_per_image": 1000 * ordered[len(ordered) // 2],
                     "ms_mean": 1000 * sum(ordered) / len(ordered)}
                    | {key: metrics[key] for key in ("mean_iu", "pixel_acc", "mean_acc", "fwavacc")})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped CamVid model")
    parser.add_argument("--root", default="/work/shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", dest="max_images", type=int, default=None)
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="--tta specs; 'none': no TTA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json-out", dest="json_out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    checkpoint = args.checkpoint or str(default_checkpoint_path())
    model, meta = model_from_checkpoint(checkpoint)
    dataset = build_dataset("camvid", root=args.root, split=args.split,
                            transforms=eval_transforms(normalization=meta.normalization))
    count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    fast = inference_model(model.to(device), torch.randn(1, meta.in_channels, 64, 96, device=device))  # as predict
    variants = build_variants(fast, args.specs)
    cpu = cpu_name()
    rows = score_variants(variants, dataset, num_classes=meta.num_classes, ignore_index=meta.ignore_index,
                          count=count, device=device)
    print(f"{meta.model} on CamVid {args.split}, {count} images at native size, batch 1, {device} "
          f"({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}, fast path: {', '.join(fast.steps)}")
    print("\n| --tta | views | mean IU | pixel acc. | ms / image | x no TTA |\n|---|---:|---:|---:|---:|---:|")
    base = rows[0]["ms_per_image"]
    for row in rows:
        print(f"| {row['tta']} | {row['views']} | {100 * row['mean_iu']:.2f} | {100 * row['pixel_acc']:.2f} | "
              f"{row['ms_per_image']:.0f} | {row['ms_per_image'] / base:.1f} |")
    report = {"checkpoint": checkpoint, "model": meta.model, "split": args.split, "images": count,
              "device": str(device), "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "fast_steps": fast.steps, "results": rows}
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    main()
