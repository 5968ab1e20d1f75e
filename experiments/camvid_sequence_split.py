"""A cross-sequence proxy for CamVid's test split: hold one driving sequence out of train + val.

CamVid's SegNet test split is mostly Seq05VD, a sequence that is in neither train (0001TP, 0006R0, 0016E5) nor
val (all 0016E5), so val flatters a model: its frames are neighbours of training frames. This script writes a
CamVid root (symlinks, no copies) whose `train` split is every train + val frame outside one sequence and whose
`val` split is that sequence, so a recipe can be chosen on a sequence the model has never seen.

    python experiments/camvid_sequence_split.py ../shared/data/camvid runs/camvid-holdout-0006R0 --hold-out 0006R0
    fcnseg train --config experiments/configs/camvid-fcn4s-lite1-trainval.yaml \
        root=runs/camvid-holdout-0006R0 "train_splits=[train]" ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


def sequence_of(name: str) -> str:
    """'0016E5_07959.png' -> '0016E5' (CamVid names are SEQUENCE_FRAME.png)."""
    return name.split("_", 1)[0]


def write_split_root(source: Path, out: Path, hold_out: str, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Symlink every frame of `splits` into out/train (other sequences) or out/val (`hold_out`); returns counts."""
    counts = {"train": 0, "val": 0}
    for folder in ("train", "trainannot", "val", "valannot"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split in splits:
        for image in sorted((source / split).glob("*.png")):
            mask = source / f"{split}annot" / image.name
            if not mask.is_file():
                raise SystemExit(f"{mask}: no label for {image}")
            target = "val" if sequence_of(image.name) == hold_out else "train"
            for src, dst in ((image, out / target / image.name), (mask, out / f"{target}annot" / image.name)):
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(src.resolve())
            counts[target] += 1
    if counts["val"] == 0:
        raise SystemExit(f"no frame of sequence {hold_out!r} in {source} ({', '.join(splits)})")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="CamVid root in SegNet layout")
    parser.add_argument("out", type=Path, help="folder to write (symlinks)")
    parser.add_argument("--hold-out", required=True, help="sequence prefix to hold out, e.g. 0006R0")
    args = parser.parse_args()
    counts = write_split_root(args.source, args.out, args.hold_out)
    print(f"{args.out}: train {counts['train']} frames, val {counts['val']} frames of {args.hold_out}")


if __name__ == "__main__":
    main()
