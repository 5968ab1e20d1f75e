"""Start an FCN from an ImageNet classifier in torchvision's state-dict format (paper, section 3.1/4.1).

The classifier's convolutions are copied; its fully connected fc6 and fc7 are transplanted into
the FCN's convolutional fc6 (7x7 for VGG16, 6x6 for AlexNet) and fc7 (1x1) by reshaping their
weights, as the reference's ``surgery.transplant`` does. The final 1000-way classifier is dropped;
the score layers start at zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.vgg import VGG16FCN, vgg16_conv_names

# Indices of the convolutions in torchvision's ``vgg16().features`` and ``alexnet().features``.
TORCHVISION_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
# Indices of fc6 and fc7 in the classifiers (VGG16: Linear, ReLU, Dropout, Linear, ...;
# AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ...).
TORCHVISION_VGG16_FC_INDICES = (0, 3)
TORCHVISION_ALEXNET_FC_INDICES = (1, 4)


def load_classifier_state_dict(weights, *, arch: str) -> dict[str, torch.Tensor]:
    """A torchvision classifier state dict from a dict, a ``.pth`` path, or a torchvision weights enum.

    A weights enum (e.g. ``torchvision.models.VGG16_Weights.IMAGENET1K_V1``) downloads when online;
    a path is read with ``weights_only=True``.
    """
    if isinstance(weights, dict):
        return weights
    if isinstance(weights, (str, Path)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such {arch} weights file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, nn.Module):  # pragma: no cover - weights_only forbids this
            state = state.state_dict()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a {arch} state dict, found {type(state).__name__}")
        return state
    if hasattr(weights, "get_state_dict"):
        return weights.get_state_dict(progress=True)
    raise TypeError(f"cannot read {arch} weights from {type(weights).__name__}")


def _copy(target: nn.Conv2d, state: dict, key: str, source_name: str) -> None:
    weight_key, bias_key = f"{key}.weight", f"{key}.bias"
    if weight_key not in state or bias_key not in state:
        raise KeyError(f"{source_name} weights lack {weight_key!r}: not a torchvision state dict?")
    weight = state[weight_key]
    if weight.numel() != target.weight.numel():
        raise ValueError(
            f"{source_name} {weight_key} has shape {tuple(weight.shape)}, "
            f"which cannot fill {tuple(target.weight.shape)}"
        )
    with torch.no_grad():
        # A Linear's (out, in_c * kh * kw) weight is the same numbers as a conv's (out, in_c, kh, kw).
        target.weight.copy_(weight.reshape(target.weight.shape))
        target.bias.copy_(state[bias_key])


def transplant_vgg16(model: VGG16FCN, weights) -> VGG16FCN:
    """Fill ``model``'s conv1_1..conv5_3, fc6 and fc7 from a torchvision VGG16 (in place; returns it)."""
    state = load_classifier_state_dict(weights, arch="VGG16")
    for name, index in zip(vgg16_conv_names(), TORCHVISION_VGG16_CONV_INDICES):
        _copy(getattr(model, name), state, f"features.{index}", "VGG16")
    for name, index in zip(("fc6", "fc7"), TORCHVISION_VGG16_FC_INDICES):
        _copy(getattr(model, name), state, f"classifier.{index}", "VGG16")
    return model


def transplant_alexnet(model: FCNAlexNet, weights) -> FCNAlexNet:
    """Fill a ``layout="torchvision"`` FCN-AlexNet's conv1..conv5, fc6, fc7 from torchvision's AlexNet."""
    if model.layout != "torchvision":
        raise ValueError("torchvision AlexNet weights need FCNAlexNet(layout='torchvision')")
    state = load_classifier_state_dict(weights, arch="AlexNet")
    for i, index in enumerate(TORCHVISION_ALEXNET_CONV_INDICES, start=1):
        _copy(getattr(model, f"conv{i}"), state, f"features.{index}", "AlexNet")
    for name, index in zip(("fc6", "fc7"), TORCHVISION_ALEXNET_FC_INDICES):
        _copy(getattr(model, name), state, f"classifier.{index}", "AlexNet")
    return model


def staged_from(cls: type[VGG16FCN], coarser: VGG16FCN) -> VGG16FCN:
    """Staged training (FCN-32s -> FCN-16s -> FCN-8s): a ``cls`` with ``coarser``'s trunk and score layers."""
    finer = cls(
        num_classes=coarser.num_classes,
        learnable_upsampling=coarser.learnable_upsampling,
        in_channels=coarser.in_channels,
        layout=coarser.layout,
    )
    copy_shared_layers(finer, coarser.state_dict())
    return finer.to(next(coarser.parameters()).device)


def copy_shared_layers(model: nn.Module, state_dict: dict[str, torch.Tensor], *, prefix: str = "") -> int:
    """Staged training's transfer: copy every tensor of matching name (``prefix`` + its key) and shape into
    ``model``, except the upsampling layers, which stay bilinear (``surgery.interp``, as the reference's
    solve.py does). New score layers keep their zero init. Returns the number of tensors copied."""
    own = model.state_dict()
    shared = {
        prefix + key: value
        for key, value in state_dict.items()
        if prefix + key in own and not key.startswith("upscore") and value.shape == own[prefix + key].shape
    }
    model.load_state_dict(shared, strict=False)
    return len(shared)
