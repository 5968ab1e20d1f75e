"""Checkpoints are data, never code: a dict of tensors and plain values, saved atomically, loaded
with ``torch.load(weights_only=True)`` and validated before any tensor reaches a model.

A checkpoint carries what eval and predict need without extra flags: the model's name and
constructor arguments, the class names, palette, input normalization and ignore label. Training
checkpoints add the optimizer, step, RNG states and config, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fcnseg.models.registry import MODEL_SPECS, build_model, model_spec

CHECKPOINT_FORMAT = "fcnseg-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

ASSETS = Path(__file__).parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "fcn4s-lite1-camvid.pt"  # the model that ships inside the package


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another format or version, or does not fit its model."""


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint says about its model, beyond the weights."""

    model: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    normalization: str
    ignore_index: int = 255
    learnable_upsampling: bool = False
    in_channels: int = 3


def save_atomically(
    obj: object, out_path: str | os.PathLike, *, keep_previous: str | os.PathLike | None = None
) -> None:
    """``torch.save`` to a temporary file beside ``out_path``, then rename: never a half-written file.

    With ``keep_previous``, an existing ``out_path`` is renamed to that path once the new file is complete, just
    before the new one takes its place (a reader that finds no ``out_path`` in between reads ``keep_previous``).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp's 0600 would be surprising on a shared weights file
        if keep_previous is not None and out_path.exists():
            os.replace(out_path, keep_previous)
        os.replace(temp_name, out_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def make_checkpoint(model: nn.Module, meta: ModelMeta, **extra) -> dict:
    """The checkpoint dict for ``model``; ``extra`` holds training state (optimizer, step, ...)."""
    meta_dict = asdict(meta)
    meta_dict["class_names"] = list(meta.class_names)
    meta_dict["palette"] = [list(color) for color in meta.palette]
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": meta.model,
        "model_args": {
            "num_classes": meta.num_classes,
            "learnable_upsampling": meta.learnable_upsampling,
            "in_channels": meta.in_channels,
        },
        "meta": meta_dict,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        **extra,
    }


def read_torch_file(path: Path, *, what: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one ``CheckpointError`` naming the file:
    missing, unreadable, not a PyTorch file, truncated, or holding Python objects beyond tensors and plain values
    (refused: loading those runs code, so PyTorch's advice to pass ``weights_only=False`` is not repeated)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the {what} file: {error.strerror or error}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is at fault
        raise CheckpointError(f"{path}: not a readable {what}: {_load_problem(error, head=head)}") from None


def _load_problem(error: Exception, *, head: bytes) -> str:
    """What is wrong with a file ``torch.load`` refused, in a few words, without PyTorch's multi-line advice."""
    text = str(error)
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return f"the file holds a Python object ({unsupported.group(1)}) beyond tensors and plain values"
    if head.startswith(b"PK"):  # a zip archive: torch.save's format, but incomplete or damaged
        return "the file is truncated or corrupt (its zip archive cannot be read)"
    if not head:
        return "the file is empty"
    return "the file is not a PyTorch file (garbage, or another format)"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint file (format, version, model name); tensors stay on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    checkpoint = read_torch_file(path, what="fcnseg checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an fcnseg checkpoint (no format marker {CHECKPOINT_FORMAT!r})")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this fcnseg reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade fcnseg"
        )
    if checkpoint.get("model") not in MODEL_SPECS:
        known = ", ".join(MODEL_SPECS)
        raise CheckpointError(f"{path}: unknown model {checkpoint.get('model')!r} (known: {known})")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint has no state_dict")
    return checkpoint


def meta_from_checkpoint(checkpoint: dict) -> ModelMeta:
    """The checkpoint's ModelMeta; older or converted checkpoints get defaults for what they lack."""
    args = checkpoint.get("model_args", {})
    num_classes = int(args.get("num_classes", 0))
    stored = dict(checkpoint.get("meta") or {})
    if num_classes < 1:
        raise CheckpointError("checkpoint lacks model_args.num_classes")
    from fcnseg.data.palettes import generated_palette, voc_palette
    from fcnseg.data.voc import VOC_CLASSES

    default_names = VOC_CLASSES if num_classes == 21 else tuple(f"class{i}" for i in range(num_classes))
    default_palette = voc_palette(num_classes) if num_classes == 21 else generated_palette(num_classes)
    default_normalization = model_spec(checkpoint["model"]).normalization
    return ModelMeta(
        model=checkpoint["model"],
        num_classes=num_classes,
        class_names=tuple(stored.get("class_names") or default_names),
        palette=tuple(tuple(int(v) for v in color) for color in (stored.get("palette") or default_palette)),
        normalization=stored.get("normalization") or default_normalization,
        ignore_index=int(stored.get("ignore_index", 255)),
        learnable_upsampling=bool(args.get("learnable_upsampling", False)),
        in_channels=int(args.get("in_channels", 3)),
    )


def model_from_checkpoint(checkpoint: dict | str | os.PathLike) -> tuple[nn.Module, ModelMeta]:
    """Build the checkpoint's model and load its weights, with clear errors when they do not fit."""
    source = "checkpoint"
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint)
    meta = meta_from_checkpoint(checkpoint)
    with torch.device("meta"):
        model = build_model(
            meta.model,
            num_classes=meta.num_classes,
            learnable_upsampling=meta.learnable_upsampling,
            in_channels=meta.in_channels,
        )
    check_state_dict_fits(model, checkpoint["state_dict"], source=source)
    model = model.to_empty(device="cpu")
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval(), meta


def check_state_dict_fits(model: nn.Module, state_dict: dict, *, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("shape mismatch " + "; ".join(wrong[:5]))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit model {type(model).__name__}: " + "; ".join(problems))


def inference_checkpoint(checkpoint: dict, *, half: bool = True, **extra) -> dict:
    """A copy of ``checkpoint`` without training state (optimizer, RNG, ...), floats stored as fp16 when ``half``.

    fp16 storage halves the file; weights are cast back to the model's fp32 when loaded.
    """
    keep = ("format", "format_version", "model", "model_args", "meta")
    slim = {key: checkpoint[key] for key in keep if key in checkpoint}
    slim["state_dict"] = {
        key: value.half() if half and value.is_floating_point() else value
        for key, value in checkpoint["state_dict"].items()
    }
    slim.update(extra)
    return slim


def default_checkpoint_path() -> Path:
    """The shipped model (FCN-8s on EfficientNet-Lite1, trained on CamVid), inside the package."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"no --checkpoint given and the shipped model {DEFAULT_CHECKPOINT} is missing from this install"
        )
    return DEFAULT_CHECKPOINT
