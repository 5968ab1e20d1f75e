"""Is bf16 accurate enough? The shipped CamVid model scored on all of CamVid val in float32 and in bf16
(the module ``fcnseg.inference_model(..., bf16=True)`` returns where bf16 is faster: the fused EfficientNet-Lite
computing in bf16, the score layers under bf16 autocast, the upsampling in float32; built here whether or not it
is faster, so that the comparison does not depend on timing).

    OMP_NUM_THREADS=2 python experiments/bf16_camvid.py --root ../shared/data/camvid [--checkpoint C]

Prints mean IU and pixel accuracy for both, the share of pixels whose label changes, and the forward time of
each (median over the val images, 360x480, batch 1). The paper's nets are float32; this decides whether
bf16 is offered for serving (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.inference import bf16_supported, bf16_variant, inference_model
from fcnseg.metrics import ConfusionMatrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped fcn8s-lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()
    if not bf16_supported(torch.device("cpu")):
        raise SystemExit("this CPU has no oneDNN bf16 kernels")
    torch.set_num_threads(args.threads)
    model, meta = model_from_checkpoint(args.checkpoint or default_checkpoint_path())
    dataset = build_dataset("camvid", root=args.root, split="val", transforms=eval_transforms(normalization=meta.normalization))
    example = dataset[0][0][None]
    float32 = inference_model(model, example)
    runs = {"float32": float32, "bf16": bf16_variant(float32)}  # what bf16=True keeps when it is faster
    confusions = {name: ConfusionMatrix(meta.num_classes) for name in runs}
    times = {name: [] for name in runs}
    changed = total = 0
    count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    for index in range(count):
        image, target = dataset[index]
        labels = {}
        for name, run in runs.items():
            started = time.perf_counter()
            logits = run(image[None])  # (1, K, H, W)
            times[name].append(time.perf_counter() - started)
            labels[name] = logits.argmax(1)[0]
            confusions[name].update(labels[name], target)
        changed += int((labels["float32"] != labels["bf16"]).sum())
        total += labels["float32"].numel()
    report = {}
    for name in runs:
        scores = confusions[name].compute()
        report[name] = {"mean_iu": round(100 * float(scores["mean_iu"]), 2),
                        "pixel_accuracy": round(100 * scores["pixel_acc"], 2),
                        "median_forward_ms": round(1000 * statistics.median(times[name]), 1)}
    report["labels_changed_percent"] = round(100 * changed / total, 3)
    report["images"] = count
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
