"""int8 files of a checkpoint scored on CamVid val against float32: which quantization choices keep its accuracy.

    python experiments/int8_camvid.py --root ../shared/data/camvid                   # the shipped model
    python experiments/int8_camvid.py --root ../shared/data/camvid --checkpoint runs/x/last.pt --variants default

Each variant is a ``fcnseg.quantize.quantize_checkpoint`` call (MinMax calibration on ``--images`` train images)
scored by ``fcnseg.evaluate.evaluate`` on every val image, in onnxruntime and in OpenVINO where installed, with
the share of pixels whose label equals float32's. The answer depends on the CPU: without VNNI, 8-bit weights
saturate int16 pair sums (``fcnseg/quantize.py``), so the script prints ``lscpu``'s flags first.
Needs the ``bench`` extra (onnxruntime, onnx; openvino optional).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {
    "8-bit": {"reduce_range": False, "keep_float": ()},
    "7-bit": {"reduce_range": True, "keep_float": ()},
    "default": {},  # 7-bit weights, ConvTranspose (the fixed upsamplings) in float
    "default+score-float": {"keep_float": ("ConvTranspose", "score_fr", "score_pool4", "score_pool3")},
    "8-bit+score-float": {"reduce_range": False,
                          "keep_float": ("ConvTranspose", "score_fr", "score_pool4", "score_pool3")},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--images", type=int, default=16, help="calibration images from train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import importlib.util

    from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.devices import cpu_description
    from fcnseg.evaluate import evaluate
    from fcnseg.inference.onnx_model import load_quantized
    from fcnseg.quantize import quantize_checkpoint

    checkpoint = args.checkpoint or default_checkpoint_path()
    model, meta = model_from_checkpoint(checkpoint)
    dataset = build_dataset("camvid", root=args.root, split="val",
                            transforms=eval_transforms(normalization=meta.normalization))
    runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_description()}; {args.threads} threads")
    print(f"# {checkpoint}; CamVid val, {len(dataset)} images; MinMax on {args.images} train images\n")
    print("| int8 file | runtime | mean IU | pixel acc. | labels = f32 | Pole IU |")
    print("|---|---|---:|---:|---:|---:|")
    reference: dict[int, torch.Tensor] = {}
    scores = evaluate(model, dataset, num_classes=meta.num_classes,
                      per_image=lambda index, prediction, mask: reference.__setitem__(index, prediction.clone()))
    print(f"| float32 | PyTorch | {scores['mean_iu']:.2%} | {scores['pixel_acc']:.2%} | 100% | "
          f"{scores['per_class_iu'][2]:.2%} |", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.variants.split(","):
            path = quantize_checkpoint(checkpoint, calibration=[Path(args.root) / "train"],
                                       out=Path(folder) / "int8.onnx", num_images=args.images, **VARIANTS[name])
            for runtime in runtimes:
                quantized, _ = load_quantized(path, runtime=runtime)
                same = [0, 0]

                def agree(index, prediction, mask, same=same):
                    same[0] += int((prediction == reference[index]).sum())
                    same[1] += prediction.numel()

                scores = evaluate(quantized, dataset, num_classes=meta.num_classes, per_image=agree)
                print(f"| {name} | {runtime} | {scores['mean_iu']:.2%} | {scores['pixel_acc']:.2%} | "
                      f"{same[0] / same[1]:.2%} | {scores['per_class_iu'][2]:.2%} |", flush=True)


if __name__ == "__main__":
    main()
