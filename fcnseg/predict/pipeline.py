"""Segment a plan's images: decoded in DataLoader workers, images of one size batched through the fast inference
module, outputs encoded and written by a small thread pool (Pillow's PNG encoder releases the GIL), a manifest
line appended per image, results yielded in the plan's order. Memory stays bounded: at most a few batches of
images are in flight, so a folder of 100 000 images streams through.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcnseg.checkpoint import ModelMeta
from fcnseg.data.base import DataError, read_image
from fcnseg.data.transforms import normalize
from fcnseg.dense import rarefy
from fcnseg.inference import inference_model
from fcnseg.inference.onnx_model import OnnxSegmenter
from fcnseg.predict.manifest import ManifestWriter, merge_manifests, record_from_outputs
from fcnseg.predict.pictures import LEGENDS, OVERLAYS, write_outputs
from fcnseg.predict.plan import PredictionPlan, plan_predictions
from fcnseg.tta import TTAConfig, TTAModel


class ImageFiles(Dataset):
    """``index -> (index, (3, H, W) uint8 image or None, error message or None)``: bad files are reported, not
    raised, so one unreadable image never stops a worker."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, read_image(self.paths[index]), None
        except DataError as error:
            return index, None, str(error)


@torch.inference_mode()
def predict_labels(model: nn.Module, image: torch.Tensor, *, normalization: str,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``(3, H, W)`` or ``(N, 3, H, W)`` uint8 RGB -> ``(H, W)`` or ``(N, H, W)`` int64 labels on the CPU: the
    arg-max of the model's scores."""
    batch = image.unsqueeze(0) if image.dim() == 3 else image
    x = normalize(batch.to(device), normalization)  # (N, 3, H, W)
    labels = model(x).argmax(1).cpu()  # (N, H, W)
    return labels[0] if image.dim() == 3 else labels


TUNING_PIXELS = 180 * 240  # the largest example inference_model times its rewrites on


def tuning_size(height: int, width: int) -> tuple[int, int]:
    """The example size for ``inference_model``: the images' own shape, scaled down (never up) to at most
    ``TUNING_PIXELS``, so the rewrites are timed at the proportions they will run at, in a second or two."""
    scale = min(1.0, (TUNING_PIXELS / (height * width)) ** 0.5)
    return max(32, round(height * scale)), max(32, round(width * scale))


def fast_model(model: nn.Module, *, device: torch.device | str, dense: int, bf16: bool, tta: TTAConfig | None,
               example_size: tuple[int, int] = (64, 96)) -> nn.Module:
    """The module predict runs: rarefied (``dense > 1``) or the fast inference module, checked and timed on a
    random ``(1, C, *example_size)`` input (``fcnseg.inference_model``), run in TTA views."""
    if dense < 1:
        raise ValueError(f"dense must be a positive integer (1: no rarefaction), got {dense}")
    if isinstance(model, OnnxSegmenter):  # an int8 ONNX graph: already a tuned runtime, no PyTorch layers
        if dense > 1:
            raise ValueError(f"--dense {dense} rarefies PyTorch layers; an int8 ONNX model ({model.path}) runs "
                             "at its own stride only: use the float checkpoint")
        if bf16:
            raise ValueError(f"--bf16 does not apply to an int8 ONNX model ({model.path}): it runs in int8")
        model = model.eval()
        return TTAModel(model, flip=tta.flip, scales=tta.scales) if tta is not None else model
    model = model.to(device).eval()
    if dense > 1:
        model = rarefy(model, dense)
    else:
        in_channels = getattr(model, "in_channels", 3)
        example = torch.randn(1, in_channels, *example_size, device=device)
        model = inference_model(model, example, bf16=bf16)
    if tta is not None:
        model = TTAModel(model, flip=tta.flip, scales=tta.scales)
    return model


def size_batches(items, *, batch_size: int) -> Iterator[list[tuple[int, torch.Tensor | None, str | None]]]:
    """Group decoded items into batches of equal image size (at most ``batch_size``), in arrival order as far as
    sizes allow: a batch is sent when full, when more than ``2 * batch_size`` images wait, or at the end. An
    unreadable image travels alone."""
    waiting: dict[tuple[int, int], list] = {}
    for item in items:
        _, image, _ = item
        if image is None:
            yield [item]
            continue
        group = waiting.setdefault(tuple(image.shape[-2:]), [])
        group.append(item)
        if len(group) == batch_size:
            yield waiting.pop(tuple(image.shape[-2:]))
        elif sum(len(g) for g in waiting.values()) > 2 * batch_size:  # many sizes: send the oldest group
            yield waiting.pop(next(iter(waiting)))
    yield from waiting.values()


def iter_predictions(
    model: nn.Module,
    meta: ModelMeta,
    plan: PredictionPlan,
    *,
    device: torch.device | str = "cpu",
    overlay: str = "blend",
    alpha: float = 0.5,
    legend: str = "classes",
    dense: int = 1,
    bf16: bool = False,
    tta: TTAConfig | None = None,
    batch_size: int = 1,
    workers: int = 0,
    writers: int = 1,
    manifest: bool = True,
    progress: bool = False,
) -> Iterator[dict]:
    """Segment the plan's images; yields ``{"input", "labels", "overlay", "height", "width", "classes", "ms",
    "error"}`` per image, in the plan's order (``error`` is ``None``, or the message of an image that could not
    be read, whose ``labels`` and ``overlay`` are then ``None``; ``classes`` maps each class present to its share
    of the pixels; ``ms`` is the model's time for the image).

    ``overlay`` is ``"blend"`` (colours over the photo), ``"side-by-side"`` (photo | colours | blend) or
    ``"none"``; ``alpha`` in [0, 1] is the colours' opacity; ``legend`` ``"classes"`` (the classes present),
    ``"shares"`` (with their share of the pixels) or ``"none"``. ``dense > 1`` scores with the model's stride-32
    score_fr path made ``dense`` times denser by filter rarefaction (``fcnseg.dense.rarefy``: shift-and-stitch in
    one pass; skip layers unused). ``bf16``: bf16 autocast where the hardware has fast bf16 kernels
    (``fcnseg.inference_model``; ignored with ``dense``). ``tta``: test-time augmentation (``fcnseg.tta``).

    ``batch_size`` images of one size run together; ``workers`` DataLoader processes decode (0: the main
    process); ``writers`` threads encode and write PNGs. ``manifest``: append each result to
    ``plan.manifest_path`` (and, for the plan's ``done`` images without a line there, a line rebuilt from their
    label PNG). ``progress``: a tqdm bar with images per second on stderr.
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be 'blend', 'side-by-side' or 'none', got {overlay!r}")
    if legend not in LEGENDS:
        raise ValueError(f"legend must be 'classes', 'shares' or 'none', got {legend!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the overlay's opacity) must be in [0, 1], got {alpha}")
    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0), ("writers", writers, 1)):
        if value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    if dense < 1:
        raise ValueError(f"dense must be a positive integer (1: no rarefaction), got {dense}")

    def build_runner(height: int, width: int) -> nn.Module:  # at the first image: its shape decides (batch 1)
        return fast_model(model, device=device, dense=dense, bf16=bf16, tta=tta,
                          example_size=tuning_size(height, width))

    writer = ManifestWriter(plan.manifest_path) if manifest else None
    try:
        if writer is not None:
            for image_path, stem in plan.done:
                if str(image_path) not in writer.recorded:
                    writer.write(record_from_outputs(image_path, stem, meta.class_names))
        results = _run(build_runner, meta, plan, device=device, overlay=overlay, alpha=alpha, legend=legend,
                       batch_size=batch_size, workers=workers, writers=writers)
        with tqdm(total=len(plan.jobs), unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for result in results:
                if writer is not None:
                    writer.write(result)
                bar.update(1)
                yield result
    finally:
        if writer is not None:
            writer.close()


def _run(build_runner, meta: ModelMeta, plan: PredictionPlan, *, device, overlay: str, alpha: float,
         legend: str, batch_size: int, workers: int, writers: int) -> Iterator[dict]:
    # spawned, not forked: a forked worker inherits the locks that runtime thread pools (OpenVINO's, for an int8
    # file) may hold at that moment, and can hang on them; a spawned one starts clean (a second or two, once)
    loader = DataLoader(ImageFiles([path for path, _ in plan.jobs]), batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_as_is,
                        multiprocessing_context="spawn" if workers > 0 else None)
    pending: deque[Future | dict] = deque()  # results in plan order: written (Future) or failed (dict)
    finished: dict[int, Future | dict] = {}
    next_index = 0
    runner = None
    limit = 2 * batch_size + 2 * writers  # images in flight, past which the oldest result is awaited
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="fcnseg-write") as pool:
        for batch in size_batches(loader, batch_size=batch_size):
            index, image, error = batch[0]
            if image is None:
                finished[index] = {"input": str(plan.jobs[index][0]), "labels": None, "overlay": None,
                                   "height": None, "width": None, "classes": {}, "ms": None, "error": error}
            else:
                if runner is None:
                    runner = build_runner(*image.shape[-2:])
                started = time.perf_counter()
                labels = predict_labels(runner, torch.stack([item[1] for item in batch]),
                                        normalization=meta.normalization, device=device)  # (N, H, W)
                ms = 1000 * (time.perf_counter() - started) / len(batch)
                for (index, image, _), image_labels in zip(batch, labels):
                    path, stem = plan.jobs[index]
                    finished[index] = pool.submit(write_outputs, image, image_labels, meta, path=path, stem=stem,
                                                  overlay=overlay, alpha=alpha, legend=legend, ms=ms)
            while next_index in finished:  # the plan's order, whatever order batching ran them in
                pending.append(finished.pop(next_index))
                next_index += 1
            while pending and (len(pending) + len(finished) > limit or _ready(pending[0])):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _as_is(item):
    return item  # no collation: each item is one image, batched by size afterwards


def _ready(item: Future | dict) -> bool:
    return isinstance(item, dict) or item.done()


def _result(item: Future | dict) -> dict:
    return item if isinstance(item, dict) else item.result()


def predict_paths(
    model: nn.Module,
    meta: ModelMeta,
    inputs: list[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    overlay: str = "blend",
    alpha: float = 0.5,
    legend: str = "classes",
    dense: int = 1,
    bf16: bool = False,
    tta: TTAConfig | None = None,
    batch_size: int = 1,
    workers: int = 0,
    writers: int = 1,
    manifest: bool = True,
) -> list[dict]:
    """Segment every input image into ``out_dir`` now and return one result per image, as ``iter_predictions``
    yields them (the options are its own).

    The run is planned first (``plan_predictions``: inputs, output names, the folder's permissions); an image
    that cannot be read gets ``"error"`` in its result and the others are still written. ``OUT/manifest.jsonl``
    is then merged: one line per input, this run's results replacing an earlier run's.
    """
    plan = plan_predictions(inputs, out_dir)
    results = list(iter_predictions(model, meta, plan, device=device, overlay=overlay, alpha=alpha, legend=legend,
                                    dense=dense, bf16=bf16, tta=tta, batch_size=batch_size, workers=workers,
                                    writers=writers, manifest=manifest))
    if manifest:
        merge_manifests(plan.out_dir)  # one line per input, sorted, also after earlier runs into the same folder
    return results
