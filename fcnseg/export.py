"""Export a model to ONNX (dynamic batch, height and width) or TorchScript, checked at several sizes.

ONNX uses the TorchScript-based exporter (``dynamo=False``) with ``dynamic_axes``: it records tensor
shapes as graph values, so the crops (``crop_like``) follow the input's size. Two things it cannot see
through are Python arithmetic on sizes (``math.ceil``, ``max``), which it bakes in as constants:

- ``BackboneFCN``'s ``pad_to_multiple`` (``-width % 32``, passed to ``F.pad`` as ints). Under tracing it pads by
  31 and slices to ``ceil(H / 32) * 32`` instead, which traces symbolically (``fcnseg.models.layers``).
- EfficientNet-Lite's ``SameConv2d`` ("same" padding from ``math.ceil``). Inside ``BackboneFCN`` every input
  side is a multiple of 32, where these paddings are the same for every size, so the baked constants are right.

``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export) was tried as well: on the shipped
fcn8s-lite0 it had not finished after several minutes on two CPU cores (docs/performance.md), so it is not used.

Every export is verified: the exported model runs at ``check_sizes`` (and the example size) against PyTorch,
and :class:`ExportError` is raised when any differs by more than ``tolerance``; a model whose graph only
holds for the example's size fails there rather than later.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.models.efficientnet_lite import SameConv2d
from fcnseg.models.layers import same_padding
from fcnseg.outputs import require_writable_file

DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((45, 71), (97, 130))


class ExportError(RuntimeError):
    """The exported model does not reproduce PyTorch's outputs at some input size."""


def same_conv_with_constant_padding(conv: SameConv2d, x: torch.Tensor) -> torch.Tensor:
    """``SameConv2d.forward`` with its padding taken as constants from the traced example's sizes.

    Left to itself the tracer records ``F.pad`` with size-derived pads in a way that freezes the output size
    to the example's; constant pads are right for every size whose sides are even at every stride-2 layer
    (all sizes inside ``BackboneFCN``, which pads to a multiple of 32). The export check catches the rest.
    """
    (top, bottom), (left, right) = (same_padding(int(size), kernel, stride)
                                    for size, kernel, stride in zip(x.shape[-2:], conv.kernel_size, conv.stride))
    return nn.Conv2d.forward(conv, F.pad(x, [left, right, top, bottom]))


@contextlib.contextmanager
def traceable_shapes() -> Iterator[None]:
    """Swap in ``SameConv2d`` padding taken as constants while exporting."""
    original_same = SameConv2d.forward
    SameConv2d.forward = same_conv_with_constant_padding
    try:
        yield
    finally:
        SameConv2d.forward = original_same


def export_onnx(
    model: nn.Module, path: str | os.PathLike, *, example_size: Sequence[int] = (1, 3, 64, 96),
    check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES, tolerance: float = 1e-4, opset: int = 17,
) -> str:
    """Write ``model`` (eval mode, on the CPU) as ONNX, input ``image`` ``(N, C, H, W)`` -> ``logits``.

    Batch, height and width are dynamic. Returns the path; ``OutputError`` when it cannot be written. Needs ``onnxruntime`` for the check; without it
    the check is skipped with a warning.
    """
    require_writable_file(path)  # before the export's minutes of work
    model = model.eval().cpu()
    example = torch.randn(*example_size)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with traceable_shapes(), torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": dynamic, "logits": dynamic},
        )
    check_onnx(model, path, sizes=[tuple(example_size[2:]), *check_sizes], channels=example_size[1],
               tolerance=tolerance)
    return str(path)


def check_onnx(model: nn.Module, path: str | os.PathLike, *, sizes: Sequence[tuple[int, int]], channels: int = 3,
               tolerance: float = 1e-4) -> None:
    try:
        import onnxruntime
    except ImportError:
        import warnings

        warnings.warn("onnxruntime is not installed: the ONNX export was not checked", stacklevel=3)
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in sizes:
        x = torch.randn(2, channels, height, width)
        with torch.no_grad():
            expected = model(x)
        (got,) = session.run(["logits"], {"image": x.numpy()})
        _compare(torch.from_numpy(got), expected, f"ONNX at {height}x{width}", tolerance)


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, *, check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
    tolerance: float = 1e-4, in_channels: int = 3,
) -> str:
    """Write ``model`` (eval mode, CPU) with ``torch.jit.script``; falls back to ``torch.jit.trace`` only if
    the traced module matches at every ``check_sizes`` (tracing bakes Python size arithmetic in). Returns the path.
    """
    require_writable_file(path)
    model = model.eval().cpu()
    try:
        scripted = torch.jit.script(model)
    except Exception:  # noqa: BLE001 - scripting rejects much Python; tracing is the fallback
        example = torch.randn(1, in_channels, 64, 96)
        with traceable_shapes(), torch.no_grad():
            scripted = torch.jit.trace(model, example, check_trace=False)
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    for height, width in check_sizes:
        x = torch.randn(1, in_channels, height, width)
        with torch.no_grad():
            _compare(loaded(x), model(x), f"TorchScript at {height}x{width}", tolerance)
    return str(path)


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float) -> None:
    if got.shape != expected.shape:
        raise ExportError(f"{what}: output {tuple(got.shape)}, expected {tuple(expected.shape)}; "
                          "this model exports only for its example size")
    error = (got - expected).abs().max().item()
    if error > tolerance * max(1.0, expected.abs().max().item()):
        raise ExportError(f"{what}: outputs differ by {error:.3g}; this model exports only for its example size")
