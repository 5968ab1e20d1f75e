"""Training data from a TrainConfig: the data sets (NYUDv2 modalities stacked for the multi-modal models; the
training splits concatenated), the sharded, resumable sample order of ``fcnseg.training.sampling``, and the
untransformed training masks' pixel counts that class weights are computed from."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from fcnseg.data import NYUDDataset, build_dataset, eval_transforms, normalize, normalize_nyud, train_transforms
from fcnseg.data.base import SegmentationDataset, check_labels
from fcnseg.distributed import DistContext
from fcnseg.models.multimodal import MODALITY_CHANNELS
from fcnseg.training.class_weights import class_pixel_counts
from fcnseg.training.config import TrainConfig, training_splits
from fcnseg.training.sampling import SampleCounter, SeededSamples


class ConcatSplits(ConcatDataset):
    """Several splits of one data set, one after another (``train_splits``): their samples and shared ``info``."""

    def __init__(self, datasets: list[SegmentationDataset]):
        infos = {dataset.info for dataset in datasets}
        if len(infos) != 1:
            raise ValueError(f"the training splits describe different labels: {sorted(i.name for i in infos)}")
        super().__init__(datasets)
        self.info = datasets[0].info
        self.samples = [sample for dataset in datasets for sample in dataset.samples]


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
        color_jitter=config.color_jitter, hue_jitter=config.hue_jitter, normalization=normalize_as,
    )
    parts = [_dataset(name=config.dataset, root=config.root, split=split, transforms=train_tf, modalities=modalities)
             for split in training_splits(config)]
    if config.cache_images:
        decoded_bytes = sum(part.keep_decoded() for part in parts)
        print(f"cache_images: {sum(len(part) for part in parts)} training samples decoded, "
              f"{decoded_bytes / 2**20:.0f} MiB kept in memory", flush=True)
    train_set = parts[0] if len(parts) == 1 else ConcatSplits(parts)
    val_set = _dataset(name=config.val_dataset or config.dataset, root=config.val_root or config.root,
                       split=config.val_split, transforms=eval_transforms(normalization=normalize_as),
                       modalities=modalities)
    if val_set.info.num_classes != train_set.info.num_classes:
        raise ValueError(
            f"validation set has {val_set.info.num_classes} classes, training set {train_set.info.num_classes}"
        )
    return train_set, val_set


def shared_images(train_set, val_set) -> int:
    """How many validation samples are also training samples (the same image file; 0 where unknown)."""
    def files(dataset) -> set[Path]:
        return {Path(sample[0]).resolve() for sample in getattr(dataset, "samples", ())}

    train_files = files(train_set)
    return sum(path in train_files for path in files(val_set))


class _LabelCounts(Dataset):
    """Item i: ``class_pixel_counts`` of sample i's (first) label map, untransformed, as a tensor."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        dataset = self.dataset
        if dataset.reads_one_pair():  # one mask file a sample: read only it
            path = dataset.samples[index][1]
            labels = dataset.load_mask(path)
            check_labels(labels, info=dataset.info, path=path)
        else:  # several inputs (NYUDv2) or label maps (SIFT Flow): the whole sample
            _, labels = dataset[index]
            labels = labels[0] if isinstance(labels, (list, tuple)) else labels
        counts = class_pixel_counts(np.asarray(labels), num_classes=dataset.info.num_classes,
                                    ignore_index=dataset.info.ignore_index)
        return torch.from_numpy(counts)


def train_label_counts(config: TrainConfig, *, modalities: tuple[str, ...]) -> Iterator[np.ndarray]:
    """Each training image's labelled pixels per class, ``(num_classes,)`` int64, from its untransformed mask
    (``config.workers`` processes read them)."""
    for split in training_splits(config):
        dataset = _dataset(name=config.dataset, root=config.root, split=split, transforms=None,
                           modalities=modalities[:1])  # NYUDv2: read one input besides the labels
        loader = DataLoader(_LabelCounts(dataset), batch_size=None, num_workers=config.workers)
        yield from (counts.numpy() for counts in loader)


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
