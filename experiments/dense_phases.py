"""Why shift-and-stitch lowers mean IU for the CamVid FCN-32s-Lite0 (docs/dense.md, "Why the dense maps score
lower"): each shifted phase alone, the phases interlaced (shift-and-stitch), and the phases averaged.

    OMP_NUM_THREADS=2 python experiments/dense_phases.py --checkpoint runs/camvid-fcn32s-lite0/best.pt \\
        --root ../shared/data/camvid [--every 1]

For factor 2 there are four phases: the input shifted by ``(16 dy, 16 dx)`` pixels (its first rows/columns
dropped), scored by the coarse FCN-32s and upsampled 32x on its own grid. Scored are:

- ``phase dy dx``: each phase alone, on the pixels it covers;
- ``interlaced``: ``rarefy(fcn32s, 2)``, i.e. shift-and-stitch: the four phases' cells interlaced into one stride-16
  map, then upsampled 16x;
- ``averaged``: the four phases' upsampled class probabilities averaged per pixel (the uncovered top/left strips
  of a shifted phase take phase (0, 0)'s).

Also the offset sweep: the coarse and the rarefied (factors 2 and 4) maps upsampled with their cell centres moved
by ``--offsets`` pixels, to tell misplaced cells from disagreeing ones.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.dense import coarse_scores, dense_logits, rarefy, score_centre
from fcnseg.metrics import ConfusionMatrix

STRIDE = 32


def phase_logits(model, x: torch.Tensor, dy: int, dx: int, *, shift: int, centre: float) -> torch.Tensor:
    """``(1, K, H - shift dy, W - shift dx)`` logits of the phase-shifted input, on its own pixel grid."""
    shifted = x[..., shift * dy :, shift * dx :]
    return dense_logits(coarse_scores(model, shifted), dense_stride=STRIDE, cell_centre=centre,
                        height=shifted.shape[-2], width=shifted.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an FCN-32s checkpoint (fcn32s-lite0 or fcn32s)")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--every", type=int, default=1, help="score every n-th val image (default: all 101)")
    parser.add_argument("--offsets", type=float, nargs="*", default=[-12, -8, -6, -4, -2, 0, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = model_from_checkpoint(args.checkpoint)
    model.eval()
    if getattr(model, "output_stride", None) != STRIDE:
        raise SystemExit(f"{args.checkpoint}: expected an FCN-32s, got {meta.model}")
    dataset = build_dataset("camvid", root=args.root, split="val",
                            transforms=eval_transforms(normalization=meta.normalization))
    centre = score_centre(model)
    rarefied = {2: rarefy(model, 2).eval(), 4: rarefy(model, 4).eval()}
    shift = STRIDE // 2
    phases = list(itertools.product(range(2), repeat=2))
    names = [f"phase {dy} {dx}" for dy, dx in phases] + ["interlaced", "averaged"]
    sweep = [(kind, offset) for kind in ("coarse", "dense 2", "dense 4") for offset in args.offsets]
    confusions = {name: ConfusionMatrix(meta.num_classes) for name in names + [f"{k} {o:+g}" for k, o in sweep]}
    indices = range(0, len(dataset), args.every)
    with torch.inference_mode():
        for index in indices:
            image, target = dataset[index]
            x, height, width = image[None], image.shape[-2], image.shape[-1]
            probabilities = []
            for dy, dx in phases:
                logits = phase_logits(model, x, dy, dx, shift=shift, centre=centre)
                confusions[f"phase {dy} {dx}"].update(logits.argmax(1), target[None, shift * dy :, shift * dx :])
                canvas = torch.zeros(1, meta.num_classes, height, width)
                if probabilities:  # the strips this phase does not cover: phase (0, 0)'s
                    canvas.copy_(probabilities[0])
                canvas[..., shift * dy :, shift * dx :] = logits.softmax(1)
                probabilities.append(canvas)
            confusions["averaged"].update(torch.stack(probabilities).mean(0).argmax(1), target[None])
            maps = {"coarse": (coarse_scores(model, x), STRIDE)}
            for factor, net in rarefied.items():
                maps[f"dense {factor}"] = (net.dense_scores(x), STRIDE // factor)
            for kind, offset in sweep:
                scores, stride = maps[kind]
                logits = dense_logits(scores, dense_stride=stride, cell_centre=centre + offset, height=height,
                                      width=width)
                confusions[f"{kind} {offset:+g}"].update(logits.argmax(1), target[None])
                if kind == "dense 2" and offset == 0:
                    confusions["interlaced"].update(logits.argmax(1), target[None])
    report = {"checkpoint": args.checkpoint, "images": len(indices), "cell_centre": centre, "scores": {}}
    for name, confusion in confusions.items():
        scores = confusion.compute()
        report["scores"][name] = {"mean_iu": round(100 * scores["mean_iu"], 2),
                                  "pixel_acc": round(100 * scores["pixel_acc"], 2)}
        print(f"{name:16s} mean IU {100 * scores['mean_iu']:6.2f}   pixel acc {100 * scores['pixel_acc']:6.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
