"""Turning a TrainConfig into a device, a model (with its initial weights) and an optimizer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fcnseg.models.registry import build_model, model_spec
from fcnseg.models.transplant import copy_shared_layers
from fcnseg.training.config import TrainConfig
from fcnseg.training.frozen_layers import run_frozen_blocks_fused


def build_training_model(config: TrainConfig) -> tuple[nn.Module, str]:
    """The model to train and its input normalization, initialized as ``config.init_weights`` says.

    ``init_weights`` may be a torchvision classifier state dict (VGG16 or AlexNet, keys ``features.*``):
    the trunk is transplanted and the input convention becomes torchvision's ("imagenet"); or an fcnseg
    checkpoint of a coarser model (staged training, e.g. FCN-32s -> FCN-16s): every layer of matching
    name and shape is copied except the upsampling layers, which stay bilinear.
    """
    from fcnseg.data.dataset_info import num_classes_of

    num_classes = num_classes_of(config.dataset, config.root)
    extra = {"pretrained_backbone": True} if config.pretrained_backbone else {}
    model = build_model(config.model, num_classes=num_classes, learnable_upsampling=config.learnable_upsampling, **extra)
    normalization = model_spec(config.model).normalization
    if config.bn_momentum is not None:
        # TF-ported backbones keep running statistics almost frozen (0.01); fine-tuning adapts them faster.
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    if config.init_weights:
        normalization = _initialize(model, Path(config.init_weights), model_name=config.model)
    if config.freeze_backbone_stride is not None:
        freeze_backbone_layers(model, config.freeze_backbone_stride, model_name=config.model)
    return model, config.normalization or normalization


def freeze_backbone_layers(model: nn.Module, stride: int, *, model_name: str, fused: bool = True
                           ) -> list[nn.Module]:
    """Stop training the backbone's layers up to its stride-``stride`` features (Detectron2's ``FREEZE_AT``):
    their parameters stop requiring gradients, so autograd neither keeps their activations nor runs their
    backward pass, and ``make_optimizer`` leaves them out. Their batch norm must also stay in eval mode (the
    training loop puts every batch norm whose weight is frozen there). With ``fused``, frozen EfficientNet-Lite
    blocks run in their inference form (``FrozenMBConv``: same parameters and state dict, same outputs up to
    float rounding, faster). Returns the frozen layers."""
    if not hasattr(model, "backbone_layers_to_stride"):
        raise ValueError(f"freeze_backbone_stride: {model_name} has no separate backbone to freeze; it works for "
                         "the models on fcnseg.models.backbones (fcn*-lite*, fcn*-resnet*, fcn*-vgg16-compact)")
    layers = model.backbone_layers_to_stride(stride)
    for layer in layers:
        layer.requires_grad_(False)
    if fused and run_frozen_blocks_fused(model, layers):
        layers = model.backbone_layers_to_stride(stride)  # the swapped blocks in place of the plain ones
    return layers


def _initialize(model: nn.Module, path: Path, *, model_name: str) -> str:
    from fcnseg.checkpoint import load_checkpoint, meta_from_checkpoint, read_torch_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such init_weights file")
    state = read_torch_file(path, what="init_weights file")
    if isinstance(state, dict) and state.get("format") == "fcnseg-checkpoint":
        checkpoint = load_checkpoint(path)
        # Staged training copies every tensor but the upsampling and (for other classes) the score layers.
        offered = [key for key in checkpoint["state_dict"] if not key.startswith("upscore")]
        copied = copy_shared_layers(model, checkpoint["state_dict"])
        if copied < len(offered) / 2:
            raise ValueError(
                f"{path}: only {copied} of the {len(offered)} tensors of this {checkpoint['model']} checkpoint fit "
                f"{model_name} (same name and shape); init_weights takes a checkpoint of the same family, such as "
                "a coarser stage (fcn32s for fcn16s)"
            )
        return meta_from_checkpoint(checkpoint).normalization
    if isinstance(state, dict) and "features.0.weight" in state:
        transplant = model_spec(model_name).imagenet_transplant
        if transplant is None:
            raise ValueError(f"{path}: a torchvision classifier fits only the VGG16 FCNs and fcn-alexnet-tv")
        transplant(model, state)
        return "imagenet"
    raise ValueError(f"{path}: neither an fcnseg checkpoint nor a torchvision VGG16/AlexNet state dict")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Parameter groups as the recipe says: the paper doubles the biases' learning rate and does not
    decay them (the reference's ``lr_mult: 2, decay_mult: 0``); the modern recipe does not decay biases
    or normalization weights. Frozen (fixed bilinear) upsampling weights are left out."""
    weights, biases = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (biases if param.ndim <= 1 else weights).append(param)
    bias_lr_mult = 2.0 if config.recipe == "paper" else 1.0
    groups = [
        {"params": weights, "weight_decay": config.weight_decay, "lr_mult": 1.0},
        {"params": biases, "weight_decay": 0.0, "lr_mult": bias_lr_mult},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)
