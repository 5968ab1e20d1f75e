"""Images per second of ``fcnseg predict`` on a folder (CamVid val by default), the pipeline against the loop it
replaced: read, segment and write one image at a time in the main process (what ``fcnseg predict`` did before
batching, decoding workers, the writer pool and the overlay's faster PNG compression), on the same model, images
and outputs (labels PNG + blended overlay with legend).

Each configuration writes into its own fresh folder; they run one after the other, ``--repeats`` times in turn
(so a change of machine load hits them alike), and the best wall time of each is reported with its ratio to the
loop's.

    python bench/predict_throughput.py --root /work/shared/data/camvid --split val --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.data.base import read_image
from fcnseg.data.palettes import colorize
from fcnseg.predict import iter_predictions, plan_predictions, predict_labels
from fcnseg.predict.pictures import overlay_picture
from fcnseg.predict.pipeline import fast_model

PIPELINES = {  # name -> (batch_size, workers, writers)
    "batch 1, 0 workers, 1 writer": (1, 0, 1),
    "batch 4, 0 workers, 2 writers (CLI defaults, 2 cores)": (4, 0, 2),
    "batch 4, 1 worker, 2 writers (CLI defaults, more cores)": (4, 1, 2),
}


def loop_once(model, meta, images: list[Path], out: Path) -> None:
    """The replaced loop: one image at a time, all in the main process, PNGs at Pillow's default compression."""
    runner = fast_model(model, device="cpu", dense=1, bf16=False, tta=None, example_size=(180, 240))
    for path in images:
        image = read_image(path)
        labels = predict_labels(runner, image, normalization=meta.normalization)
        overlay_picture(image, labels, meta, overlay="blend", alpha=0.5, legend="classes").save(
            out / f"{path.stem}_overlay.png")
        colorize(labels, meta.palette).save(out / f"{path.stem}_labels.png")


def pipeline_once(model, meta, folder: Path, out: Path, *, batch_size: int, workers: int, writers: int) -> None:
    plan = plan_predictions([folder], out)
    for _ in iter_predictions(model, meta, plan, overlay="blend", batch_size=batch_size, workers=workers,
                              writers=writers):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/work/shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.root) / args.split
    images = sorted(folder.glob("*.png"))
    model, meta = model_from_checkpoint(default_checkpoint_path())
    best: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="fcnseg-predict-bench-"))
    try:
        for _ in range(args.repeats):
            for name in ["loop (before)", *PIPELINES]:
                out = scratch / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                started = time.perf_counter()
                if name == "loop (before)":
                    loop_once(model, meta, images, out)
                else:
                    batch_size, workers, writers = PIPELINES[name]
                    pipeline_once(model, meta, folder, out, batch_size=batch_size, workers=workers, writers=writers)
                seconds = time.perf_counter() - started
                best[name] = min(best.get(name, float("inf")), seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(images)} images of {folder}, {args.threads} threads, best of {args.repeats}")
    print("| configuration | seconds | images/s | vs loop |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.1f} | {len(images) / seconds:.1f} | {best['loop (before)'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
