"""Training data from a TrainConfig: the data sets (NYUDv2 modalities stacked for the multi-modal models)
and the sharded, resumable sample order of ``fcnseg.training.sampling``."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.data import DataLoader

from fcnseg.data import NYUDDataset, build_dataset, eval_transforms, normalize, normalize_nyud, train_transforms
from fcnseg.distributed import DistContext
from fcnseg.models.multimodal import MODALITY_CHANNELS
from fcnseg.training.config import TrainConfig
from fcnseg.training.sampling import SampleCounter, SeededSamples


def stack_nyud(inputs: dict, *, modalities: tuple[str, ...], normalization: str) -> torch.Tensor:
    """NYUDv2 modalities normalized (colour as ``normalization``, depth and HHA as the reference) and stacked
    in ``modalities`` order: ``(sum of their channels, H, W)``, the multi-modal models' input."""
    normalized = normalize_nyud({name: value for name, value in inputs.items() if name != "color"})
    if "color" in inputs:
        normalized["color"] = normalize(inputs["color"], normalization)
    return torch.cat([normalized[name] for name in modalities])


def _dataset(*, name: str, root: str, split: str, transforms, modalities):
    if name == "nyud":
        return NYUDDataset(root, split, transforms=transforms, modalities=modalities)
    return build_dataset(name, root=root, split=split, transforms=transforms)


def build_datasets(config: TrainConfig, normalization: str, modalities: tuple[str, ...]):
    """The training set (augmented) and the validation set (whole images), normalized as ``normalization``."""
    normalize_as = normalization
    if "nyud" in (config.dataset, config.val_dataset):  # a dict of modalities -> one stacked tensor
        normalize_as = functools.partial(stack_nyud, modalities=modalities, normalization=normalization)
    train_tf = train_transforms(
        crop_size=config.crop_size or None, scale_range=config.scale_range, hflip=config.hflip,
        color_jitter=config.color_jitter, normalization=normalize_as,
    )
    train_set = _dataset(name=config.dataset, root=config.root, split=config.train_split,
                         transforms=train_tf, modalities=modalities)
    val_set = _dataset(name=config.val_dataset or config.dataset, root=config.val_root or config.root,
                       split=config.val_split, transforms=eval_transforms(normalization=normalize_as),
                       modalities=modalities)
    if val_set.info.num_classes != train_set.info.num_classes:
        raise ValueError(
            f"validation set has {val_set.info.num_classes} classes, training set {train_set.info.num_classes}"
        )
    return train_set, val_set


def modalities_for(config: TrainConfig, model: nn.Module) -> tuple[str, ...]:
    """The NYUDv2 modalities to stack: ``config.modalities``, else the model's, else colour alone."""
    modalities = config.modalities or getattr(model, "modalities", ("color",))
    channels = sum(MODALITY_CHANNELS[name] for name in modalities)
    if "nyud" in (config.dataset, config.val_dataset) and channels != getattr(model, "in_channels", 3):
        raise ValueError(
            f"modalities {list(modalities)} stack {channels} channels; {config.model} takes {model.in_channels}"
        )
    return tuple(modalities)


def train_loader(train_set, config: TrainConfig, start_step: int, context: DistContext) -> DataLoader:
    # Rank r takes global samples r, r + W, ... from the step's first: the ranks' union is the global batch.
    start = start_step * config.batch_size * config.grad_accum * context.world_size + context.rank
    return DataLoader(
        SeededSamples(train_set, seed=config.seed),
        batch_size=config.batch_size,
        sampler=SampleCounter(start=start, stride=context.world_size),
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
    )
