"""Run an int8 ONNX file written by ``fcnseg quantize`` as a module: ``OnnxSegmenter`` and ``load_quantized``.

The file is data, not code: an ONNX graph of quantize/dequantize pairs around int8 weights, whose
``metadata_props`` hold fcnseg's JSON (``METADATA_KEY``): a format marker and version, the checkpoint's
``ModelMeta`` fields and how it was calibrated. ``load_quantized`` validates that before any runtime reads the
graph, so predict, eval and serve get a ``ModelMeta`` as from a checkpoint.

The graph runs in OpenVINO when it is installed (it fuses the QDQ pairs into int8 kernels: 24 ms against
onnxruntime's 34 ms for the shipped model at 360x480 on two Zen 4 cores, docs/performance.md), else in
onnxruntime; ``runtime=`` picks one. Both get ``torch.get_num_threads()`` threads. OpenVINO compiles the graph
once per input shape for the first few shapes, then once for dynamic shapes; onnxruntime runs the dynamic
graph as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.checkpoint import CheckpointError, ModelMeta, model_from_checkpoint

QUANTIZED_FORMAT = "fcnseg-int8-onnx"
QUANTIZED_FORMAT_VERSION = 1
METADATA_KEY = "fcnseg"  # the metadata_props entry holding fcnseg's JSON
RUNTIMES = ("auto", "openvino", "onnxruntime")
ONNX_MAGIC_PREFIX = b"\x08"  # a serialized ModelProto starts with field 1 (ir_version), a varint


class MissingPackageError(ValueError):
    """A package this feature needs is not installed; the message says which ``pip install`` adds it."""


def require_onnxruntime(what: str):
    """``onnxruntime``, imported; ``MissingPackageError`` naming the ``export`` extra when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingPackageError(f"{what} needs onnxruntime and onnx: pip install 'fcnseg[export]'") from None
    return onnxruntime


def metadata_json(meta: ModelMeta, *, calibration: dict) -> str:
    """fcnseg's entry in an int8 file's ``metadata_props``: format, version, the model's meta, the calibration."""
    fields = asdict(meta)
    fields["class_names"] = list(meta.class_names)
    fields["palette"] = [list(color) for color in meta.palette]
    return json.dumps({"format": QUANTIZED_FORMAT, "format_version": QUANTIZED_FORMAT_VERSION, "meta": fields,
                       "calibration": calibration})


def read_metadata(path: str | os.PathLike) -> dict:
    """The parsed fcnseg entry of an int8 ONNX file; ``CheckpointError`` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such int8 ONNX file")
    try:
        import onnx
    except ImportError:
        raise MissingPackageError("reading an int8 ONNX file needs onnx and onnxruntime: "
                                  "pip install 'fcnseg[export]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's decode errors: the file is at fault
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None
    entries = {prop.key: prop.value for prop in model.metadata_props}
    if METADATA_KEY not in entries:
        raise CheckpointError(f"{path}: not an fcnseg int8 ONNX file (no {METADATA_KEY!r} metadata; "
                              "write one with fcnseg quantize)")
    try:
        stored = json.loads(entries[METADATA_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its {METADATA_KEY!r} metadata is not JSON") from None
    if not isinstance(stored, dict) or stored.get("format") != QUANTIZED_FORMAT:
        raise CheckpointError(f"{path}: not an fcnseg int8 ONNX file (no format marker {QUANTIZED_FORMAT!r})")
    version = stored.get("format_version")
    if not isinstance(version, int) or version > QUANTIZED_FORMAT_VERSION:
        raise CheckpointError(f"{path}: int8 ONNX format version {version!r} is newer than this fcnseg reads "
                              f"({QUANTIZED_FORMAT_VERSION}); upgrade fcnseg")
    return stored


def meta_from_metadata(stored: dict, *, path: str | os.PathLike) -> ModelMeta:
    fields = stored.get("meta")
    try:
        return ModelMeta(
            model=str(fields["model"]), num_classes=int(fields["num_classes"]),
            class_names=tuple(str(name) for name in fields["class_names"]),
            palette=tuple(tuple(int(v) for v in color) for color in fields["palette"]),
            normalization=str(fields["normalization"]), ignore_index=int(fields.get("ignore_index", 255)),
            learnable_upsampling=bool(fields.get("learnable_upsampling", False)),
            in_channels=int(fields.get("in_channels", 3)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its fcnseg metadata lacks or garbles the model's fields ({error})") from None


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like an ONNX file rather than a PyTorch checkpoint (a zip archive): by content."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(2)
    except OSError:
        return Path(path).suffix.lower() == ".onnx"
    return head.startswith(ONNX_MAGIC_PREFIX)


class OnnxSegmenter(nn.Module):
    """An ONNX segmentation graph as a module: ``forward((N, C, H, W) float) -> (N, K, H, W)`` float logits.

    It has no parameters; it runs on the CPU whatever ``.to()`` says, and returns logits on the input's device.
    """

    def __init__(self, path: str | os.PathLike, *, runtime: str = "auto", threads: int | None = None,
                 max_shapes: int = 4):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.path = str(path)
        self.threads = threads or torch.get_num_threads()
        self.max_shapes = max_shapes
        if runtime == "auto":
            runtime = "openvino" if _has_openvino() else "onnxruntime"
        self.runtime = runtime
        self._compiled: dict[tuple, object] = {}  # OpenVINO: one compiled request per input shape
        self._session = None
        if runtime == "openvino":
            import openvino

            self._core = openvino.Core()
            self._network = self._core.read_model(self.path)
        else:
            onnxruntime = require_onnxruntime("running an int8 ONNX file")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            self._session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())  # (N, C, H, W)
        if self._session is not None:
            (logits,) = self._session.run(["logits"], {"image": image})
        else:
            request = self._request(tuple(image.shape))
            request.infer({0: image})
            logits = np.array(request.get_output_tensor(0).data)  # a copy: the request reuses its buffer
        return torch.from_numpy(logits).to(x.device)  # (N, K, H, W)

    def _request(self, shape: tuple[int, ...]):
        """A request compiled for ``shape`` (static shapes get faster kernels) for the first ``max_shapes``
        shapes; any other shape (a data set of many sizes) runs on one compiled for dynamic shapes."""
        if shape in self._compiled:
            return self._compiled[shape]
        if len(self._compiled) >= self.max_shapes:
            shape = ("dynamic",)
            if shape in self._compiled:
                return self._compiled[shape]
        network = self._network.clone()
        if shape != ("dynamic",):
            network.reshape(list(shape))
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}  # the float parts in float32, as calibrated and measured
        self._compiled[shape] = self._core.compile_model(network, "CPU", config).create_infer_request()
        return self._compiled[shape]

    def extra_repr(self) -> str:
        return f"{self.path!r}, runtime={self.runtime!r}, threads={self.threads}"


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def load_quantized(path: str | os.PathLike, *, runtime: str = "auto") -> tuple[OnnxSegmenter, ModelMeta]:
    """An int8 ONNX file from ``fcnseg quantize`` as ``(OnnxSegmenter, ModelMeta)``; ``CheckpointError`` naming
    the file when it is missing or not such a file (a plain ``fcnseg export`` included)."""
    stored = read_metadata(path)
    meta = meta_from_metadata(stored, path=path)
    return OnnxSegmenter(path, runtime=runtime).eval(), meta


def load_model_file(path: str | os.PathLike) -> tuple[nn.Module, ModelMeta]:
    """A PyTorch checkpoint (``model_from_checkpoint``) or an int8 ONNX file from ``fcnseg quantize``
    (``load_quantized``), told apart by content (a checkpoint is a zip archive)."""
    return load_quantized(path) if is_onnx_file(path) else model_from_checkpoint(path)
