"""Post-hoc logit adjustment on CamVid: subtract ``tau * log(prior_c)`` from each class's logit, scored on val.

    python experiments/logit_adjustment_camvid.py runs/ablation/ohem-lite1/last.pt --root ../shared/data/camvid

A model trained on imbalanced pixels under-predicts its rare classes (CamVid's Pole is about 1% of the labelled
pixels); adding ``-tau * log(p_c)`` to the logits (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021; ``tau = 1`` is the balanced-error optimum) moves the decision towards them. ``p_c`` is each class's
share of the labelled pixels of the checkpoint's training splits (the same counting as ``class_weights: enet``).
For the choice to be honest, score a checkpoint that did not train on val (a train-only run), then carry the
chosen ``tau`` over to a train + val model. Prints val mean IU, pixel accuracy and Pole IU for each ``tau``, from
one forward pass per image (the adjustment is a per-class constant added to the logits).
"""

from __future__ import annotations

import argparse
import math

import torch

TAUS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)


def class_priors(root: str, splits: list[str], *, model: str) -> torch.Tensor:
    """Each class's share of the labelled pixels of ``splits``' CamVid masks, ``(num_classes,)``: the counting that
    ``class_weights`` uses (``fcnseg.training.data.train_label_counts``)."""
    from fcnseg.training.config import make_config
    from fcnseg.training.data import train_label_counts

    config = make_config({"model": model, "dataset": "camvid", "root": root, "train_splits": splits, "workers": 0})
    counts = sum(train_label_counts(config, modalities=("color",)))
    return torch.tensor(counts / counts.sum(), dtype=torch.float64)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--prior-splits", default="train", help="comma-separated splits the checkpoint trained on")
    parser.add_argument("--taus", default=",".join(map(str, TAUS)))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.inference import inference_model
    from fcnseg.metrics import ConfusionMatrix

    model, meta = model_from_checkpoint(args.checkpoint)
    dataset = build_dataset("camvid", root=args.root, split="val",
                            transforms=eval_transforms(normalization=meta.normalization))
    priors = class_priors(args.root, args.prior_splits.split(","), model=meta.model)
    log_priors = priors.log().float()[:, None, None]  # (K, 1, 1)
    taus = [float(tau) for tau in args.taus.split(",")]
    matrices = {tau: ConfusionMatrix(meta.num_classes, meta.ignore_index) for tau in taus}
    image, _ = dataset[0]
    fast = inference_model(model, image[None], timed=False)
    for image, mask in dataset:
        logits = fast(image[None])[0]  # (K, H, W)
        for tau in taus:
            matrices[tau].update((logits - tau * log_priors).argmax(0)[None], mask[None])
    print(f"# {args.checkpoint}; priors from {args.prior_splits}: "
          + " ".join(f"{name} {p:.2%}" for name, p in zip(meta.class_names, priors.tolist())))
    print("\n| tau | val mean IU | pixel acc. | mean acc. | Pole IU | SignSymbol IU | Pedestrian IU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for tau in taus:
        scores = matrices[tau].compute()
        iu = scores["per_class_iu"]
        print(f"| {tau:g} | {scores['mean_iu']:.2%} | {scores['pixel_acc']:.2%} | {scores['mean_acc']:.2%} | "
              f"{iu[2]:.2%} | {iu[6]:.2%} | {iu[9]:.2%} |")
    print("\nlog-prior offsets at tau = 1: " + " ".join(
        f"{name} {-math.log(p):.2f}" for name, p in zip(meta.class_names, priors.tolist())))


if __name__ == "__main__":
    main()
