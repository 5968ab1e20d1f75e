"""Paper, section 3.2 and 4.2: coarse FCN-32s, FCN-32s made dense by shift-and-stitch, and the FCN-8s skip net,
all from the same trained weights, on CamVid val: mean IU and time per image.

The FCN-32s is the checkpoint's trunk and score_fr alone (its skip layers dropped), upsampled 32x bilinearly;
"dense F" is that FCN-32s rarefied by F (``fcnseg.dense.rarefy``: shift-and-stitch in one pass, stride 32 / F);
``--literal`` adds the literal f * f-pass shift-and-stitch (slow; same cells up to the top/left border).

    python bench/dense_camvid.py --checkpoint /work/runs/camvid-lite0/best.pt --root /work/shared/data/camvid \\
        --json-out bench/dense_camvid.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn

from fcnseg.checkpoint import ModelMeta, model_from_checkpoint
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.dense import dense_logits, rarefy, score_centre, shift_and_stitch
from fcnseg.metrics import ConfusionMatrix
from fcnseg.models.registry import MODEL_SPECS, build_model

VGG16_SKIP_MODELS = ("fcn16s", "fcn8s", "fcn8s-atonce")


def fcn32s_name(model_name: str) -> str:
    """The zoo's FCN-32s on the same trunk: ``fcn8s-lite0 -> fcn32s-lite0``, VGG16's ``fcn8s -> fcn32s``."""
    if model_name in VGG16_SKIP_MODELS:
        return "fcn32s"
    name = "fcn32s-" + model_name.partition("-")[2]
    if name not in MODEL_SPECS:
        raise ValueError(f"the zoo has no FCN-32s on the trunk of {model_name!r} (looked for {name!r})")
    return name


def fcn32s_from(model: nn.Module, meta: ModelMeta) -> nn.Module:
    """An FCN-32s holding ``model``'s trunk and score_fr weights; its 32x upsampling is bilinear."""
    fcn32s = build_model(fcn32s_name(meta.model), num_classes=meta.num_classes, in_channels=meta.in_channels)
    state = model.state_dict()
    wanted = [key for key in fcn32s.state_dict() if not key.startswith("upscore")]
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f"{meta.model} lacks FCN-32s weights: {missing[:5]}")
    fcn32s.load_state_dict({key: state[key] for key in wanted}, strict=False)
    return fcn32s.eval()


def literal_forward(model: nn.Module, factor: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Full-size logits from the literal shift-and-stitch of ``model``'s score_fr."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        dense = shift_and_stitch(model, x, factor)
        return dense_logits(dense, dense_stride=32 // factor, cell_centre=score_centre(model),
                            height=x.shape[-2], width=x.shape[-1])

    return forward


@torch.inference_mode()
def score(forward: Callable[[torch.Tensor], torch.Tensor], dataset, *, meta: ModelMeta, count: int,
          device: torch.device) -> dict:
    """Mean IU (and the other metrics) and median milliseconds per image, batch 1, first image also as warm-up."""
    matrix = ConfusionMatrix(meta.num_classes, ignore_index=meta.ignore_index)
    times = []
    forward(dataset[0][0][None].to(device))
    for index in range(count):
        image, mask = dataset[index]
        x = image[None].to(device)  # (1, 3, H, W)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = forward(x)  # (1, K, H, W)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        matrix.update(logits.argmax(1), mask[None].to(device))
    scores = matrix.compute()
    return {key: scores[key] for key in ("mean_iu", "pixel_acc", "mean_acc", "fwavacc")} | {
        "ms_per_image": 1000 * sorted(times)[len(times) // 2],
    }


def variants(model: nn.Module, meta: ModelMeta, *, factors: list[int], literal: bool,
             fcn32s: nn.Module | None = None) -> dict[str, Callable]:
    """Name -> forward; ``fcn32s`` defaults to ``model``'s trunk and score_fr."""
    fcn32s = fcn32s_from(model, meta) if fcn32s is None else fcn32s.eval()
    table: dict[str, Callable] = {"fcn32s (coarse, 32x bilinear)": fcn32s}
    for factor in factors:
        table[f"fcn32s + shift-and-stitch {factor} (rarefied, stride {32 // factor})"] = rarefy(fcn32s, factor)
        if literal:
            table[f"fcn32s + shift-and-stitch {factor} (literal, {factor * factor} passes)"] = literal_forward(
                fcn32s, factor)
    if model.output_stride < 32:
        table[f"{meta.model} (skip net)"] = model.eval()
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/work/runs/camvid-lite0/best.pt")
    parser.add_argument("--fcn32s-checkpoint", dest="fcn32s_checkpoint", default=None,
                        help="a separately trained FCN-32s (default: the checkpoint's trunk and score_fr)")
    parser.add_argument("--root", default="/work/shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", dest="max_images", type=int, default=None)
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--literal", action="store_true", help="also time the literal f*f-pass algorithm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json-out", dest="json_out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint)
    dataset = build_dataset("camvid", root=args.root, split=args.split,
                            transforms=eval_transforms(normalization=meta.normalization))
    count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    fcn32s = model_from_checkpoint(args.fcn32s_checkpoint)[0] if args.fcn32s_checkpoint else None
    results = []
    print(f"{meta.model} on CamVid {args.split}, {count} images, {device}\n"
          "| variant | mean IU | pixel acc. | ms / image |\n|---|---|---|---|", flush=True)
    table = variants(model.to(device), meta, factors=args.factors, literal=args.literal, fcn32s=fcn32s)
    for name, forward in table.items():
        if isinstance(forward, nn.Module):
            forward = forward.to(device).eval()
        row = {"variant": name} | score(forward, dataset, meta=meta, count=count, device=device)
        results.append(row)
        print(f"| {name} | {100 * row['mean_iu']:.2f} | {100 * row['pixel_acc']:.2f} | {row['ms_per_image']:.0f} |",
              flush=True)
    report = {"checkpoint": str(args.checkpoint), "fcn32s_checkpoint": args.fcn32s_checkpoint, "model": meta.model,
              "split": args.split, "images": count, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "results": results}
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    main()
