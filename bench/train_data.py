"""What one CamVid training sample costs the CPU, file to tensor: decoding against ``cache_images``, and the
shipped recipe's transforms.

    python bench/train_data.py --root ../shared/data/camvid

On a 2-core CPU the DataLoader workers run on the training step's cores, so every millisecond here is taken from
the step (batch 8: eight samples a step). One thread, like a worker; each row is the median per sample over
``--rounds`` passes over the first ``--samples`` training images. Rows:

  read files         ``load_pair`` from the PNG files: decode, void -> ignore, size and label checks
  read kept          ``load_pair`` after ``keep_decoded()`` (``cache_images=true``): copies out of memory
  spatial            random scale 0.75-1.5 (bilinear, antialiased; masks nearest), 320x320 crop, flip
  photometric        colour jitter 0.2 (brightness, contrast, saturation) on the uint8 crop
  normalization      uint8 -> float32 ``(x - 127) / 128`` (EfficientNet-Lite's)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fcnseg.data import build_dataset, normalize, train_transforms
from fcnseg.devices import cpu_description


def per_sample_ms(function, items, rounds: int) -> float:
    """Median over `rounds` of the mean time of `function(item)` over `items`, in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            function(item)
        times.append((time.perf_counter() - start) / len(items) * 1e3)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from_files = build_dataset("camvid", root=args.root, split="train")
    kept = build_dataset("camvid", root=args.root, split="train")
    indices = range(min(args.samples, len(kept)))
    start = time.perf_counter()
    kept_bytes = kept.keep_decoded()
    keep_seconds = time.perf_counter() - start
    transform = train_transforms(crop_size=320, scale_range=(0.75, 1.5), color_jitter=0.2, normalization="lite")
    pairs = [from_files.load_pair(index) for index in indices]
    crops = [transform.spatial(image, mask) for image, mask in pairs]
    jittered = [transform.photometric(image) for image, _ in crops]
    rows = {
        "read files": per_sample_ms(from_files.load_pair, indices, args.rounds),
        "read kept": per_sample_ms(kept.load_pair, indices, args.rounds),
        "spatial": per_sample_ms(lambda pair: transform.spatial(*pair), pairs, args.rounds),
        "photometric": per_sample_ms(lambda crop: transform.photometric(crop[0]), crops, args.rounds),
        "normalization": per_sample_ms(lambda image: normalize(image, "lite"), jittered, args.rounds),
    }
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_description()}, torch {torch.__version__}, "
          f"1 thread, {len(indices)} CamVid train samples, medians of {args.rounds} passes")
    print(f"# keep_decoded: {len(kept)} samples, {kept_bytes / 2**20:.0f} MiB, {keep_seconds:.1f} s")
    print("| part | ms a sample |")
    print("|---|---:|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    transforms = rows["spatial"] + rows["photometric"] + rows["normalization"]
    for name in ("read files", "read kept"):
        print(f"| **total, {name}** | **{rows[name] + transforms:.2f}** |")


if __name__ == "__main__":
    main()
