"""Training configuration: one frozen dataclass, a flat YAML file per experiment, ``key=value`` overrides.

Unknown keys and values of the wrong type are errors. ``resolve_recipe`` fills what the recipe
decides (the paper's learning rates and momentum, or modern defaults) for keys left unset.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

MODALITIES = ("color", "depth", "hha")  # as fcnseg.data.nyud; config imports no data code


@dataclass(frozen=True)
class TrainConfig:
    model: str = "fcn8s"
    dataset: str = "camvid"
    root: str = ""
    train_split: str = "train"
    train_splits: tuple[str, ...] | None = None  # train on these splits, concatenated (default: [train_split])
    val_split: str = "val"
    val_dataset: str | None = None  # validate on another data set (the paper: train sbd, validate voc seg11valid)
    val_root: str | None = None
    out: str = "runs/fcnseg"
    recipe: str = "modern"  # "paper" or "modern"
    iters: int = 1000
    batch_size: int | None = None  # paper: 1; modern: 8
    grad_accum: int | None = None  # batches per optimizer step (Caffe's iter_size)
    optimizer: str | None = None  # "sgd" or "adamw"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # "fixed", "poly" or "cosine"
    warmup_iters: int = 0
    loss: str | None = None  # "sum" over pixels (paper) or "mean"
    loss_sample: float | None = None  # keep each final-layer cell's loss with this probability (paper 4.4)
    class_weights: str | tuple[float, ...] | None = None  # "median_frequency", "enet" or num_classes floats
    ohem_threshold: float | None = None  # OHEM: keep pixels whose true-class probability is below this ...
    ohem_min_kept: int = 0  # ... but at least this many hardest counted pixels per micro-batch (and rank)
    crop_size: int | None = None  # 0 = whole images
    scale_range: tuple[float, float] | None = None
    hflip: bool | None = None
    color_jitter: float = 0.0
    hue_jitter: float = 0.0  # hue shift by up to this fraction of the colour wheel (0 to 0.5)
    ema_decay: float | None = None  # validate and save an exponential moving average of the weights (0.999)
    learnable_upsampling: bool = False
    bn_momentum: float | None = None  # batch-norm running-stat momentum while training (modern: 0.1)
    freeze_backbone_stride: int | None = None  # don't train the backbone up to its stride-N features (2/4/8/16)
    freeze_bn: bool = False  # batch norm in eval mode: running statistics used, not updated (fine-tuning; exact DDP)
    stochastic_layers: bool = True  # false: no dropout or stochastic depth while training (exact DDP equivalence)
    sync_bn: bool = True  # under DDP on GPUs, batch-norm statistics over the global batch (SyncBatchNorm)
    pretrained_backbone: bool = False
    init_weights: str | None = None  # a torchvision classifier .pth (VGG16/AlexNet) or an fcnseg checkpoint
    normalization: str | None = None  # input convention; default: the model's ("imagenet" after a torchvision init)
    modalities: tuple[str, ...] | None = None  # NYUDv2 inputs stacked in this order; default: the model's
    init_weights_hha: str | None = None  # fcn32s-nyud-rgbhha: the HHA stream's init_weights (default: init_weights)
    val_every: int = 500  # validate (and write best.pt on a new best) every this many steps
    checkpoint_every: int | None = None  # write last.pt every this many steps (no validation) ...
    checkpoint_minutes: float | None = 5.0  # ... and this long (wall clock) after the last one; null: never
    val_max_images: int | None = None
    log_every: int = 20
    workers: int = 2
    cache_images: bool = False  # decode the training samples once and keep them in memory (workers share them)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = False  # bf16 autocast where it is fast (CUDA, CPUs with AVX512-BF16 or AMX); elsewhere float32
    channels_last: bool = False  # channels_last weights and inputs (CPU FCN-8s step 3.38 s, not 3.79; performance.md)
    tensorboard: bool = False
    stop_after: int | None = None  # stop (as if killed) after this many steps; for tests and time budgets
    time_budget_minutes: float | None = None


# What each recipe decides, for keys the user leaves unset (None).
PAPER_DEFAULTS = dict(
    batch_size=1, grad_accum=1, optimizer="sgd", momentum=0.99, weight_decay=5e-4, schedule="fixed",
    loss="sum", hflip=False,
)
# The reference's fixed learning rates for its unnormalized (summed) loss, by model (voc-*/solver.prototxt).
PAPER_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
# voc-fcn-alexnet: a normalized loss, lr 1e-4, momentum 0.9, and 20 images per step (iter_size 20).
PAPER_ALEXNET = dict(lr=1e-4, momentum=0.9, grad_accum=20, loss="mean")
MODERN_DEFAULTS = dict(
    batch_size=8, grad_accum=1, optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=1e-4, schedule="poly",
    loss="mean", crop_size=320, scale_range=(0.5, 2.0), hflip=True, bn_momentum=0.1,
)


def resolve_recipe(config: TrainConfig) -> TrainConfig:
    if config.recipe == "paper":
        defaults = dict(PAPER_DEFAULTS)
        if config.model.startswith("fcn-alexnet"):
            defaults.update(PAPER_ALEXNET)
        else:
            defaults["lr"] = PAPER_LR.get(config.model, 1e-10)
    elif config.recipe == "modern":
        defaults = dict(MODERN_DEFAULTS)
    else:
        raise ValueError(f"unknown recipe {config.recipe!r}; expected 'paper' or 'modern'")
    updates = {key: value for key, value in defaults.items() if getattr(config, key) is None}
    resolved = dataclasses.replace(config, **updates)
    _check_choices(resolved)
    return resolved


CLASS_WEIGHT_RULES = ("median_frequency", "enet")  # as fcnseg.training.class_weights.RULES


def training_splits(config: TrainConfig) -> tuple[str, ...]:
    """The splits the training set concatenates: ``train_splits``, else ``train_split`` alone."""
    return config.train_splits or (config.train_split,)


def _check_choices(config: TrainConfig) -> None:
    choices = {"optimizer": ("sgd", "adamw"), "schedule": ("fixed", "poly", "cosine"), "loss": ("sum", "mean")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(config, key)!r}")
    if config.loss_sample is not None and not 0 < config.loss_sample <= 1:
        raise ValueError(f"loss_sample must be in (0, 1], got {config.loss_sample}")
    if config.batch_size < 1 or config.grad_accum < 1 or config.iters < 1:
        raise ValueError("batch_size, grad_accum and iters must be positive")
    for key in ("val_every", "log_every", "checkpoint_every", "checkpoint_minutes"):
        if getattr(config, key) is not None and not getattr(config, key) > 0:
            raise ValueError(f"{key} must be positive (or null, for the checkpoint keys), got {getattr(config, key)}")
    if config.modalities is not None and (not config.modalities or set(config.modalities) - set(MODALITIES)):
        raise ValueError(f"modalities must be a non-empty list of {MODALITIES}, got {list(config.modalities)}")
    if config.batch_size > 1 and not config.crop_size:
        raise ValueError("batch_size > 1 needs crop_size (whole images of different sizes cannot be batched)")
    _check_recipe_options(config)


def _check_recipe_options(config: TrainConfig) -> None:
    """``class_weights``, OHEM, colour jitter and ``train_splits``; the weights' length is checked against the data
    set later."""
    weights = config.class_weights
    if isinstance(weights, str) and weights not in CLASS_WEIGHT_RULES:
        raise ValueError(f"class_weights must be one of {CLASS_WEIGHT_RULES} or a list of floats, got {weights!r}")
    if isinstance(weights, tuple) and not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"class_weights must be finite and non-negative, got {list(weights)}")
    if config.ohem_threshold is not None and not 0 < config.ohem_threshold <= 1:
        raise ValueError(f"ohem_threshold must be a probability in (0, 1], got {config.ohem_threshold}")
    if config.ohem_min_kept < 0:
        raise ValueError(f"ohem_min_kept must be >= 0, got {config.ohem_min_kept}")
    if config.ohem_min_kept and config.ohem_threshold is None:
        raise ValueError("ohem_min_kept needs ohem_threshold (OHEM is on only with a threshold)")
    if config.ema_decay is not None and not 0 <= config.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (or null: no average), got {config.ema_decay}")
    if config.color_jitter < 0:
        raise ValueError(f"color_jitter must be >= 0, got {config.color_jitter}")
    if not 0 <= config.hue_jitter <= 0.5:
        raise ValueError(f"hue_jitter must be in [0, 0.5] (a fraction of the colour wheel), got {config.hue_jitter}")
    if config.freeze_backbone_stride not in (None, 2, 4, 8, 16):
        raise ValueError(f"freeze_backbone_stride must be 2, 4, 8, 16 or null, got {config.freeze_backbone_stride}")
    splits = config.train_splits
    if splits is not None and (not splits or len(set(splits)) != len(splits)):
        raise ValueError(f"train_splits must be a non-empty list of distinct split names, got {list(splits)}")


def _coerce(name: str, annotation, value):
    """``value`` converted to the field's type, or a ValueError naming the key."""
    hint = typing.get_type_hints(TrainConfig)[name]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is type(None):
            continue
        origin = typing.get_origin(kind)
        if origin is tuple and typing.get_args(kind)[-1] is Ellipsis:
            if isinstance(value, (list, tuple)):
                items = [_coerce_item(typing.get_args(kind)[0], item) for item in value]
                if None not in items:
                    return tuple(items)
            continue
        if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(typing.get_args(kind)):
            return tuple(float(v) for v in value)
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, str):
            return value
    raise ValueError(f"config key {name!r} expects {hint}, got {value!r}")


def _coerce_item(kind: type, value):
    """One element of a ``tuple[str, ...]`` or ``tuple[float, ...]`` key, or None if it does not fit."""
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:  # YAML 1.1 reads "1e-3" (no dot) as a string
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def make_config(values: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return TrainConfig(**{key: _coerce(key, None, value) for key, value in values.items()})


def parse_overrides(pairs: list[str]) -> dict:
    """``["lr=0.01", "crop_size=null"]`` -> ``{"lr": 0.01, "crop_size": None}`` (values parsed as YAML)."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} is not key=value")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"override {pair!r}: the value {text!r} is not valid YAML ({problem})") from None
    return values


def load_config(path: str | Path | None, overrides: dict) -> TrainConfig:
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (a config is YAML text)") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: YAML syntax error{where}: {problem}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of key: value")
        values.update(loaded)
    values.update(overrides)
    return make_config(values)


def config_to_yaml(config: TrainConfig) -> str:
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return yaml.safe_dump(values, sort_keys=False)
