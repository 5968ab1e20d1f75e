"""Import the reference's own Caffe weights (``.caffemodel``) into fcnseg models.

A ``.caffemodel`` is a binary ``NetParameter`` (see ``fcnseg.caffe.proto``): a list of layers,
each with a name and its parameter blobs. Our models keep the reference's layer names
(``conv1_1``..``fc7``, ``score_fr``, ``score_pool4``, ``upscore2``, ...), so a blob maps to a
parameter by name alone, and no transposition is needed: Caffe's Convolution weights are
``(out, in / groups, kh, kw)`` like ``nn.Conv2d``'s, and its Deconvolution weights are
``(in, out / groups, kh, kw)`` like ``nn.ConvTranspose2d``'s.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError
from torch import nn

from fcnseg.caffe import proto
from fcnseg.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, save_atomically
from fcnseg.models.registry import build_model

# Upsampling layers may be absent from a caffemodel: they keep the model's bilinear init.
OPTIONAL_LAYER_PREFIX = "upscore"


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs as float32 arrays, for every layer that has weights, in file order.

    Reads both the current ``layer`` list and the legacy V1 ``layers`` list. A blob's shape is
    its ``shape.dim``, or else the legacy 4-D ``(num, channels, height, width)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .caffemodel file")
    net = proto.NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except DecodeError as error:
        raise ValueError(f"{path}: not a binary Caffe NetParameter (.caffemodel): {error}") from error
    blobs: dict[str, list[np.ndarray]] = {}
    for layer in [*net.layers, *net.layer]:
        if not layer.blobs:
            continue
        if layer.name in blobs:
            raise ValueError(f"{path}: two layers named {layer.name!r} carry weights")
        blobs[layer.name] = [
            _blob_array(blob, where=f"{path}: layer {layer.name!r}, blob {index}")
            for index, blob in enumerate(layer.blobs)
        ]
    if not blobs:
        raise ValueError(f"{path}: no layer carries weights (a net definition rather than trained weights?)")
    return blobs


def _blob_array(blob, *, where: str) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (max(len(blob.data), len(blob.double_data)),)
    if len(blob.data):
        values = np.asarray(blob.data, dtype=np.float32)
    else:
        values = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    if values.size != math.prod(shape):
        raise ValueError(f"{where}: shape {shape} needs {math.prod(shape)} values, found {values.size}")
    return values.reshape(shape)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's convolutions and transposed convolutions by name: the layers a caffemodel fills."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    }


def unmatched_layers(blobs: dict[str, list[np.ndarray]], model: nn.Module) -> list[str]:
    """Caffe layers with weights that match no layer of ``model`` (e.g. a classifier's ``fc8``)."""
    layers = weight_layers(model)
    return [name for name, layer_blobs in blobs.items() if layer_blobs and name not in layers]


def caffe_to_state_dict(blobs: dict[str, list[np.ndarray]], model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s full state dict filled from Caffe blobs: ``blobs[name][0]`` -> ``name.weight``,
    ``blobs[name][1]`` -> ``name.bias``.

    Raises ``ValueError`` naming the layer when a shape differs (another ``num_classes`` or another
    model) or when a model layer has no weights in the caffemodel, except the upsampling layers
    (``upscore*``): absent ones keep the model's own (bilinear) weights. Caffe layers with weights
    that match no model layer are dropped with a warning; ``unmatched_layers`` lists them.
    """
    dropped = unmatched_layers(blobs, model)
    if dropped:
        warnings.warn(
            f"caffemodel layers with no counterpart in {type(model).__name__} were dropped: {', '.join(dropped)}",
            stacklevel=2,
        )
    state: dict[str, torch.Tensor] = {}
    for name, module in weight_layers(model).items():
        state.update(_layer_state(name, module, blobs.get(name, [])))
    missing = [key for key in model.state_dict() if key not in state]
    if missing:
        raise ValueError(f"a caffemodel cannot fill {type(model).__name__}'s {', '.join(missing)}")
    return state


def _layer_state(name: str, module: nn.Module, layer_blobs: list[np.ndarray]) -> dict[str, torch.Tensor]:
    if not layer_blobs:
        if name.startswith(OPTIONAL_LAYER_PREFIX):
            return {f"{name}.{key}": value.detach().clone() for key, value in module.state_dict().items()}
        raise ValueError(f"the caffemodel has no weights for layer {name!r} (a different model?)")
    params = [("weight", module.weight)] + ([("bias", module.bias)] if module.bias is not None else [])
    if len(layer_blobs) != len(params):
        raise ValueError(
            f"layer {name!r}: the caffemodel has {len(layer_blobs)} blobs, "
            f"the model expects {len(params)} ({', '.join(key for key, _ in params)})"
        )
    state = {}
    for (key, param), blob in zip(params, layer_blobs):
        array = _fit_shape(blob, tuple(param.shape), where=f"layer {name!r} {key}")
        state[f"{name}.{key}"] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a copy
    return state


def _fit_shape(blob: np.ndarray, expected: tuple[int, ...], *, where: str) -> np.ndarray:
    """``blob`` in the expected shape; legacy 4-D blobs differ only by leading 1s (bias ``(1, 1, 1, K)``)."""
    if blob.shape == expected:
        return blob
    if _strip_leading_ones(blob.shape) == _strip_leading_ones(expected):
        return blob.reshape(expected)
    raise ValueError(
        f"{where}: caffe shape {blob.shape} does not match the model's {expected} "
        "(a different num_classes or a different model?)"
    )


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    index = 0
    while index < len(shape) - 1 and shape[index] == 1:
        index += 1
    return tuple(shape[index:])


def infer_num_classes(blobs: dict[str, list[np.ndarray]]) -> int:
    """The first dim of ``score_fr``'s weight: the number of classes the caffemodel was trained for."""
    if "score_fr" not in blobs:
        raise ValueError("the caffemodel has no 'score_fr' layer to infer num_classes from; pass num_classes")
    return int(blobs["score_fr"][0].shape[0])


def convert_caffemodel(
    caffemodel_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model_name: str,
    num_classes: int | None = None,
) -> dict:
    """Convert a reference ``.caffemodel`` into an fcnseg checkpoint at ``out_path`` (written atomically).

    ``num_classes`` defaults to ``score_fr``'s output count. Returns a summary: the model, its
    ``num_classes``, the ``converted`` layers, the upsampling layers that ``kept_bilinear`` weights,
    the ``dropped`` caffe layers and ``out_path``.
    """
    caffemodel_path = Path(caffemodel_path)
    blobs = read_caffemodel(caffemodel_path)
    if num_classes is None:
        try:
            num_classes = infer_num_classes(blobs)
        except ValueError as error:
            raise ValueError(f"{caffemodel_path}: {error}") from error
    model = build_model(model_name, num_classes=num_classes)
    try:
        state = caffe_to_state_dict(blobs, model)
    except ValueError as error:
        raise ValueError(f"{caffemodel_path} -> {model_name}: {error}") from error
    model.load_state_dict(state, strict=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": model_name,
        "model_args": {"num_classes": num_classes},
        "state_dict": model.state_dict(),
        "source": f"caffe:{caffemodel_path.name}",
    }
    save_atomically(checkpoint, out_path)
    layers = weight_layers(model)
    return {
        "model": model_name,
        "num_classes": num_classes,
        "converted": [name for name in layers if blobs.get(name)],
        "kept_bilinear": [name for name in layers if not blobs.get(name)],
        "dropped": unmatched_layers(blobs, model),
        "out_path": str(out_path),
    }
