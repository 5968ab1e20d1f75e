"""int8 post-training quantization of a checkpoint into one ONNX file that predict, eval and serve read.

``quantize_checkpoint`` exports the float32 model to ONNX (``fcnseg.export``), runs onnxruntime's shape
inference and graph pre-processing, feeds a few calibration images (each at its own size) through it and writes
a QDQ graph: int8 weights per output channel, uint8 activations per tensor, the layers in ``keep_float`` left in
float. fcnseg's metadata (``fcnseg.inference.onnx_model``) goes into the file's ``metadata_props``.

Two defaults keep the file accurate on every x86 CPU, not only on those with VNNI:
- Weights use 7 of their 8 bits (``reduce_range``). Without VNNI (AVX2-only CPUs) an int8 convolution multiplies
  uint8 activations by int8 weights with ``vpmaddubsw``, which adds pairs of products into int16 with saturation:
  two products of 255 x 127 overflow it, and the result is wrong, not merely rounded. With 7-bit weights the
  pair stays below 2^15. On a 2-core AMD EPYC without AVX512 (2026-12-04) 8-bit weights cost the shipped model
  1.6 (onnxruntime) and 2.4 (OpenVINO) CamVid val mean IU, 7-bit weights 0.8 (docs/performance.md).
- The fixed bilinear upsamplings (``ConvTranspose``) stay in float: quantizing their input, the class scores,
  cost another 0.5 mean IU there; kept in float the loss is 0.26.

Why onnxruntime's static quantizer rather than PyTorch's PT2E route with the x86 inductor quantizer: the PT2E
result is a ``torch.export`` program that must be ``torch.compile``d at every load (tens of seconds on two
cores) and is not a plain data file; the QDQ ONNX file is data, loads in a fraction of a second and runs in
onnxruntime or OpenVINO (docs/performance.md has the measurements).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.data.base import DataError, read_image
from fcnseg.data.transforms import normalize
from fcnseg.inference.onnx_model import METADATA_KEY, metadata_json, require_onnxruntime
from fcnseg.outputs import require_writable_file, write_atomically
from fcnseg.predict.plan import GLOB_CHARACTERS, IMAGE_SUFFIXES, expand_glob, walk_folder

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"
# module names (ONNX nodes "/<name>/...") or op types left in float: measured on CamVid val (docs/performance.md)
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("ConvTranspose",)


def calibration_images(inputs: Sequence[str | os.PathLike], *, num_images: int) -> list[Path]:
    """``num_images`` images spread evenly over the sorted images that ``inputs`` (files, folders walked with
    their subfolders, quoted globs) name: every k-th, the same ones on every run."""
    if num_images < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {num_images}")
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += walk_folder(path, out_dir=path / ".no-output")[0]  # no output folder to pass over
        elif path.is_file():
            found.append(path)
        elif any(character in str(item) for character in GLOB_CHARACTERS):
            found += [match for match in expand_glob(str(item)) if match.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise DataError(f"{path}: no such calibration file or folder")
    images = sorted(dict.fromkeys(found))
    if not images:
        raise DataError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    step = len(images) / min(num_images, len(images))
    return [images[int(index * step)] for index in range(min(num_images, len(images)))]


class ImageReader:
    """onnxruntime's ``CalibrationDataReader`` protocol: one normalized ``(1, 3, H, W)`` image per call."""

    def __init__(self, paths: Sequence[Path], *, normalization: str):
        self.paths = list(paths)
        self.normalization = normalization
        self.index = 0

    def get_next(self) -> dict | None:
        if self.index == len(self.paths):
            return None
        image = normalize(read_image(self.paths[self.index]), self.normalization).unsqueeze(0)  # (1, 3, H, W)
        self.index += 1
        return {"image": image.numpy()}

    def rewind(self) -> None:
        self.index = 0


def quantize_checkpoint(
    checkpoint: str | os.PathLike | None,
    *,
    calibration: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    num_images: int = 16,
    method: str = DEFAULT_METHOD,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    reduce_range: bool = True,
) -> Path:
    """Write ``out``: the checkpoint's model (the shipped one when ``None``) as an int8 QDQ ONNX file, calibrated
    on ``num_images`` of the ``calibration`` images with ``method`` ("minmax", "percentile" or "entropy").
    ``reduce_range``: 7-bit weights, exact on CPUs without VNNI (module docstring); ``False`` uses all 8 bits,
    for files that will only run on CPUs with VNNI or AMX.

    ``DataError`` when there are no calibration images, ``OutputError`` when ``out`` cannot be written,
    ``CheckpointError`` for a bad checkpoint, ``MissingPackageError`` without onnxruntime and onnx.
    """
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    require_onnxruntime("fcnseg quantize")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fcnseg.export import export_onnx

    out = require_writable_file(out)
    images = calibration_images(calibration, num_images=num_images)
    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint_path()
    model, meta = model_from_checkpoint(checkpoint)
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="fcnseg-quantize-") as temp:
        float_path, prepared_path, quantized_path = (Path(temp) / name for name in ("f32.onnx", "pre.onnx",
                                                                                    "int8.onnx"))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on size arithmetic: export_onnx checks the result
            export_onnx(model, float_path, example_size=(1, meta.in_channels, 64, 96))
        # onnxruntime's symbolic shape inference fails on the exported crops; ONNX's own inference suffices
        quant_pre_process(str(float_path), str(prepared_path), skip_symbolic_shape=True)
        prepared = onnx.load(str(prepared_path))
        quantize_static(
            str(prepared_path), str(quantized_path), ImageReader(images, normalization=meta.normalization),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
            nodes_to_exclude=float_node_names(prepared.graph, keep_float=keep_float), reduce_range=reduce_range,
        )
        quantized = onnx.load(str(quantized_path))
        calibration_record = {"method": method, "images": [str(path) for path in images],
                              "keep_float": list(keep_float), "reduce_range": reduce_range,
                              "checkpoint": str(checkpoint)}
        _set_metadata(quantized, metadata_json(meta, calibration=calibration_record))
        onnx.save(quantized, str(quantized_path))
        write_atomically(out, lambda stream: stream.write(quantized_path.read_bytes()))  # never half a file
    return out


def float_node_names(graph, *, keep_float: Sequence[str]) -> list[str]:
    """The names of the graph's nodes to leave in float: those of an op type in ``keep_float`` (``ConvTranspose``)
    or inside a module it names (``score_fr`` matches the nodes ``/score_fr/...``)."""
    return [node.name for node in graph.node
            if any(node.op_type == entry or node.name.startswith(f"/{entry}/") for entry in keep_float)]


def _set_metadata(model, text: str) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
