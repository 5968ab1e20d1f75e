"""Package a trained CamVid run as fcnseg's shipped default model, with a few val images as examples.

    python experiments/ship_default_model.py runs/camvid-fcn4s-lite1-trainval/last.pt --camvid ../shared/data/camvid

Writes fcnseg.checkpoint.DEFAULT_CHECKPOINT, fcnseg/assets/fcn4s-lite1-camvid.pt (fp16 weights, class names,
palette, normalization, the training step, minutes and config), and copies three CamVid val images to
fcnseg/assets/examples/. A run whose training splits include val (``train_splits: [train, val]``) records
``val_held_out: false``: its val score is a training score.
"""

import argparse
import shutil
from pathlib import Path

import yaml

from fcnseg.checkpoint import ASSETS, DEFAULT_CHECKPOINT, inference_checkpoint, load_checkpoint, save_atomically

EXAMPLES = ("0016E5_07959.png", "0016E5_07997.png", "0016E5_08117.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--camvid", required=True, help="CamVid root (SegNet layout) to copy example images from")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    config = yaml.safe_load(checkpoint.get("config") or "") or {}
    splits = config.get("train_splits") or [config.get("train_split", "train")]
    held_out = config.get("val_split", "val") not in splits
    slim = inference_checkpoint(
        checkpoint, training={"step": checkpoint.get("step"), "train_seconds": checkpoint.get("train_seconds"),
                              "best_mean_iu": checkpoint.get("best_mean_iu") if held_out else None,
                              "train_splits": list(splits), "val_held_out": held_out,
                              "config": checkpoint.get("config")}
    )
    save_atomically(slim, DEFAULT_CHECKPOINT)
    examples = ASSETS / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLES:
        shutil.copyfile(Path(args.camvid) / "val" / name, examples / name)
    print(f"wrote {DEFAULT_CHECKPOINT} ({DEFAULT_CHECKPOINT.stat().st_size / 1e6:.1f} MB) and {len(EXAMPLES)} examples")


if __name__ == "__main__":
    main()
