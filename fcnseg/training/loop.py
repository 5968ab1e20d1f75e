"""End-to-end pixelwise training (paper, section 4): plain code, no hooks.

``train(config)`` builds the data, model and optimizer from a TrainConfig, trains for
``config.iters`` optimizer steps, validates every ``val_every`` steps with the four metrics (writing
``out/best.pt`` on a new best), writes ``out/last.pt`` every ``checkpoint_every`` steps or ``checkpoint_minutes``
of wall clock (both atomically; the one before stays as ``last.prev.pt``), a CSV log, the resolved config and a plot.
SIGINT and SIGTERM finish the step, write ``last.pt`` and raise ``TrainingInterrupted`` (``interrupts.py``).
When validation images are also training images (``val_split`` among ``train_splits``), a best score on them
selects nothing: no ``best.pt`` is written, only ``last.pt``, and the run says so.
With ``ema_decay``, validation and the checkpoints' ``state_dict`` are the moving average of the weights
(``weight_average.py``); ``last.pt`` keeps the optimizer's weights as ``trained_state_dict`` for ``--resume``.
``train(config, resume=True)`` continues a killed run exactly: same step, optimizer, RNG and data, and log.csv
cut back to the checkpoint's step (from ``last.prev.pt``, with a warning, when ``last.pt`` is unreadable).
Under ``torchrun`` it trains with DistributedDataParallel (``fcnseg.distributed`` says what is equal to
a single process); rank 0 logs and writes the files. Multi-task models (SIFT Flow) sum their heads' losses.

The loop's helpers take a ``Run`` (what stays fixed during training: model, optimizer, data, config, device)
and a ``TrainState`` (what a checkpoint saves and ``--resume`` restores).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fcnseg.checkpoint import CheckpointError, ModelMeta, load_checkpoint, make_checkpoint, save_atomically
from fcnseg.devices import bf16_supported
from fcnseg.distributed import (
    DistContext,
    any_rank,
    barrier,
    global_loss,
    no_sync_unless,
    pick_device,
    setup_distributed,
    teardown_distributed,
    unwrap,
    wrap_model,
)
from fcnseg.evaluate import evaluate
from fcnseg.inference.unfold_fc import unfold_large_convolutions
from fcnseg.models.layers import DropPath
from fcnseg.models.multimodal import early_fusion_from_rgb, late_fusion_from_streams
from fcnseg.training.class_weights import cached_class_weights
from fcnseg.training.config import TrainConfig, config_to_yaml, resolve_recipe, training_splits
from fcnseg.training.data import build_datasets, modalities_for, shared_images, train_label_counts, train_loader
from fcnseg.training.interrupts import StopRequest, TrainingInterrupted, stop_on_signals
from fcnseg.training.logs import append_row, drop_rows_after, tensorboard_writer
from fcnseg.training.losses import loss_terms
from fcnseg.training.setup import build_training_model, make_optimizer
from fcnseg.training.weight_average import WeightAverage, start_average, update_average

METRICS = ["pixel_acc", "mean_acc", "mean_iu", "fwavacc"]
LOG_FIELDS = ["step", "train_minutes", "lr", "loss", *METRICS]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """What changes as training goes, saved in every checkpoint and restored by ``--resume``."""

    step: int = 0  # optimizer steps done
    best_mean_iu: float = -1.0
    train_seconds: float = 0.0  # time in training steps (validation excluded)


@dataclass
class Run:
    """What stays fixed while training: built once by ``train`` and handed to the loop's helpers."""

    model: nn.Module  # wrapped for DDP under torchrun; ``unwrap(model)`` is the model
    optimizer: torch.optim.Optimizer
    val_set: object
    meta: ModelMeta
    config: TrainConfig
    device: torch.device
    context: DistContext
    out: Path
    stop: StopRequest  # what the signal handlers recorded
    class_weights: torch.Tensor | None = None  # (K,) on ``device``: the cross-entropy's class weights
    autocast: bool = False  # bf16 autocast: ``amp`` where ``device`` has fast bf16 kernels (``autocast_for``)
    val_in_train: int = 0  # validation images that are training images; > 0: no best.pt is selected
    average: WeightAverage | None = None  # ``ema_decay``: the averaged weights, validated and saved as the model


def lr_at(step: int, *, base_lr: float, iters: int, schedule: str, warmup_iters: int = 0) -> float:
    """The learning rate at optimizer step ``step`` (0-based): a pure function of the step."""
    if warmup_iters and step < warmup_iters:
        return base_lr * (step + 1) / warmup_iters
    progress = min(1.0, (step - warmup_iters) / max(1, iters - warmup_iters))
    if schedule == "fixed":
        return base_lr
    if schedule == "poly":
        return base_lr * (1 - progress) ** 0.9
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def _masks_to(masks: torch.Tensor | list[torch.Tensor], device: torch.device):
    if isinstance(masks, (list, tuple)):
        return tuple(mask.to(device, non_blocking=True) for mask in masks)
    return masks.to(device, non_blocking=True)


def _build_model(config: TrainConfig) -> tuple[nn.Module, str]:
    """``build_training_model``; the NYUDv2 fusion models start from colour FCN-32s (and HHA, for late fusion)
    initialized from ``init_weights`` (``init_weights_hha``), with the reference's surgery."""
    if not config.init_weights or config.model not in ("fcn32s-nyud-rgbd", "fcn32s-nyud-rgbhha"):
        return build_training_model(config)
    color, normalization = build_training_model(dataclasses.replace(config, model="fcn32s"))
    if config.model == "fcn32s-nyud-rgbd":
        return early_fusion_from_rgb(color), normalization
    hha_init = config.init_weights_hha or config.init_weights
    hha, _ = build_training_model(dataclasses.replace(config, model="fcn32s", init_weights=hha_init))
    return late_fusion_from_streams(color, hha), normalization


def set_training_modes(model: nn.Module, config: TrainConfig) -> None:
    """Train mode, but frozen batch norm (``freeze_bn``, and the layers ``freeze_backbone_stride`` froze: their
    running statistics stay ImageNet's) and no dropout or stochastic depth (``stochastic_layers``)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (config.freeze_bn or _frozen(module)):
            module.eval()
        if not config.stochastic_layers and isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
        if not config.stochastic_layers and isinstance(module, DropPath):
            module.eval()  # EfficientNet-Lite's per-sample stochastic depth


def _frozen(module: nn.Module) -> bool:
    parameters = list(module.parameters(recurse=False))
    return bool(parameters) and not any(parameter.requires_grad for parameter in parameters)


def _scored_model(run: Run) -> nn.Module:
    """The weights validation scores and checkpoints hold as the model: the average under ``ema_decay``."""
    return run.average.model if run.average is not None else unwrap(run.model)


def _save(run: Run, state: TrainState, name: str) -> None:
    extra = {}
    if run.average is not None:  # the optimizer's own weights, for --resume
        trained = unwrap(run.model).state_dict()
        extra["trained_state_dict"] = {key: value.detach().cpu() for key, value in trained.items()}
    checkpoint = make_checkpoint(
        _scored_model(run), run.meta, optimizer=run.optimizer.state_dict(), step=state.step,
        best_mean_iu=state.best_mean_iu, train_seconds=state.train_seconds, rng_state=torch.get_rng_state(),
        config=config_to_yaml(run.config), **extra,
    )
    keep_previous = run.out / "last.prev.pt" if name == "last.pt" else None
    save_atomically(checkpoint, run.out / name, keep_previous=keep_previous)


def _resume_checkpoint(out: Path, *, is_main: bool) -> tuple[Path, dict] | None:
    """``out/last.pt``, or ``out/last.prev.pt`` (with a one-line warning) when last.pt is unreadable or missing;
    None when neither exists. Rank 0 renames an unreadable last.pt, so that the next save keeps last.prev.pt."""
    last, previous = out / "last.pt", out / "last.prev.pt"
    if not last.exists() and not previous.exists():
        return None
    try:
        return last, load_checkpoint(last)
    except CheckpointError as error:
        if not previous.is_file():
            raise
        checkpoint = load_checkpoint(previous)
        if is_main:
            kept = ""
            if last.exists():
                os.replace(last, out / "last.unreadable.pt")
                kept = f"; the unreadable file is now {out / 'last.unreadable.pt'}"
            reason = str(error).splitlines()[0].removeprefix(f"{last}: ")
            print(f"warning: {last} is unreadable ({reason}); resuming from {previous} (step {checkpoint['step']})"
                  f"{kept}", file=sys.stderr)
        return previous, checkpoint


def _restore(path: Path, checkpoint: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
             config: TrainConfig, average: WeightAverage | None) -> TrainState:
    if checkpoint["model"] != config.model:
        raise ValueError(f"{path} holds a {checkpoint['model']} run; this config trains {config.model}")
    averaged = "trained_state_dict" in checkpoint
    if averaged != (average is not None):
        raise ValueError(f"{path} was written {'with' if averaged else 'without'} ema_decay; resume it "
                         f"{'with the same ema_decay' if averaged else 'with ema_decay: null'}")
    if average is not None:
        average.model.load_state_dict(checkpoint["state_dict"])
        model.load_state_dict(checkpoint["trained_state_dict"])
    else:
        model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng_state"])
    return TrainState(step=int(checkpoint["step"]), best_mean_iu=float(checkpoint["best_mean_iu"]),
                      train_seconds=float(checkpoint["train_seconds"]))


def _validate(run: Run, state: TrainState) -> dict:
    """Score on every rank (each its share of the images); rank 0 writes best.pt on a new best."""
    scores = evaluate(
        _scored_model(run), run.val_set, num_classes=run.meta.num_classes, device=run.device,
        ignore_index=run.meta.ignore_index, max_images=run.config.val_max_images,
        workers=min(run.config.workers, 2), context=run.context,
    )
    new_best = scores["mean_iu"] > state.best_mean_iu  # the same on every rank: the scores are reduced
    if new_best:
        state.best_mean_iu = scores["mean_iu"]
    if run.context.is_main and new_best and not run.val_in_train:
        _save(run, state, "best.pt")
    return scores


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Train as ``config`` says; returns ``{"step", "best_mean_iu", "last_scores", "out", "best_checkpoint",
    "val_images_in_train"}``: ``best_checkpoint`` is None when no best.pt is selected (validation images that are
    training images, ``val_images_in_train`` > 0, make ``best_mean_iu`` a training score).

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process calls this; ``batch_size`` is per rank.
    """
    config = resolve_recipe(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    # Denormal floats make CPU kernels many times slower late in training; flushing them costs nothing.
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    context, device = setup_distributed(pick_device(config.device))
    try:
        # Under torchrun every Ctrl-C reaches the ranks twice (the terminal's, and torchrun's forwarded copy).
        with stop_on_signals(force_on_second_sigint=not context.distributed) as stop:
            return _train(config, resume=resume, progress=progress and context.is_main, device=device,
                          context=context, stop=stop)
    finally:
        if context.owns_group:
            teardown_distributed()


def _train(config: TrainConfig, *, resume: bool, progress: bool, device, context: DistContext,
           stop: StopRequest) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "last.prev.pt"):
        if not resume and (out / name).exists():
            raise FileExistsError(f"{out / name} exists: pass --resume to continue it, or choose another --out")
    model, normalization = _build_model(config)
    normalization = config.normalization or normalization
    modalities = modalities_for(config, model)
    train_set, val_set = build_datasets(config, normalization, modalities)
    info = train_set.info
    val_in_train = shared_images(train_set, val_set)
    if val_in_train and context.is_main:
        print(f"note: {val_in_train} of the {len(val_set)} validation images ({config.val_split}) are training "
              f"images ({'+'.join(training_splits(config))}): best.pt is not written, only last.pt")
    meta = ModelMeta(
        model=config.model, num_classes=info.num_classes, class_names=info.class_names, palette=info.palette,
        normalization=normalization, ignore_index=info.ignore_index,
        learnable_upsampling=config.learnable_upsampling, in_channels=getattr(model, "in_channels", 3),
    )
    if getattr(model, "num_classes", info.num_classes) != info.num_classes:
        raise ValueError(f"model has {model.num_classes} classes, data set {info.name} has {info.num_classes}")
    model.to(device)
    unfold_large_convolutions(model)  # fc6 as one GEMM on the CPU (same parameters; docs/performance.md)
    set_training_modes(model, config)
    optimizer = make_optimizer(model, config)
    average = start_average(model, decay=config.ema_decay) if config.ema_decay is not None else None
    state = TrainState()
    found = _resume_checkpoint(out, is_main=context.is_main) if resume else None
    if found is not None:
        state = _restore(*found, model, optimizer, config, average)
    del found
    if context.is_main:
        (out / "config.yaml").write_text(config_to_yaml(config))
        drop_rows_after(out / "log.csv", state.step)  # a killed run's rows past its checkpoint: replayed below
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if average is not None:
            average.model.to(memory_format=torch.channels_last)
    model = wrap_model(model, context=context, device=device, sync_bn=config.sync_bn)
    class_weights = _class_weights(config, num_classes=info.num_classes, ignore_index=info.ignore_index,
                                   modalities=modalities, out=out, context=context)
    run = Run(model=model, optimizer=optimizer, val_set=val_set, meta=meta, config=config, device=device,
              context=context, out=out, stop=stop, val_in_train=val_in_train, average=average,
              autocast=autocast_for(config, device, announce=context.is_main),
              class_weights=None if class_weights is None else torch.tensor(class_weights, device=device))
    result = _loop(run, state, train_set=train_set, progress=progress)
    barrier()  # every rank returns once rank 0 has written its files
    return result


def autocast_for(config: TrainConfig, device: torch.device, *, announce: bool) -> bool:
    """Whether to train under bf16 autocast: ``amp`` on a device with fast bf16 kernels. Elsewhere (a CPU without
    AVX512-BF16 or AMX) bf16 is emulated and several times slower than float32, so the run trains in float32 and
    says so (``announce``: this rank prints)."""
    if not config.amp or bf16_supported(device):
        return config.amp
    if announce:
        print(f"note: amp=true, but {device.type} has no fast bf16 kernels (CPUs need AVX512-BF16 or AMX): "
              "training in float32, which is several times faster here")
    return False


def _class_weights(config: TrainConfig, *, num_classes: int, ignore_index: int, modalities: tuple[str, ...],
                   out: Path, context: DistContext) -> list[float] | None:
    """``config.class_weights``: None, the given list, or a rule's weights from the training masks, computed by
    rank 0 into ``out/class_weights.json`` (or read from it, on resume) and read from there by the other ranks."""
    if config.class_weights is None:
        return None
    if isinstance(config.class_weights, tuple):
        if len(config.class_weights) != num_classes:
            raise ValueError(f"class_weights lists {len(config.class_weights)} weights; the data set has "
                             f"{num_classes} classes")
        return list(config.class_weights)
    key = {"dataset": config.dataset, "root": str(Path(config.root).resolve()), "splits": training_splits(config),
           "ignore_index": ignore_index}
    weights = None
    for turn in ("main", "others"):  # rank 0 writes the cache before the other ranks read it
        if context.is_main == (turn == "main"):
            weights = cached_class_weights(
                path=out / "class_weights.json", key=key, rule=config.class_weights, num_classes=num_classes,
                per_image_counts=lambda: train_label_counts(config, modalities=modalities),
            )
        barrier()
    if context.is_main:
        print(f"class weights ({config.class_weights}, {out / 'class_weights.json'}): "
              + " ".join(f"{w:.3g}" for w in weights))
    return weights


def _train_step(run: Run, batches, *, step: int) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the global batch's loss."""
    model, optimizer, config, device = run.model, run.optimizer, run.config, run.device
    optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for micro in range(config.grad_accum):
        images, masks = next(batches)
        with no_sync_unless(micro == config.grad_accum - 1, model):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.autocast):
                images = images.to(device, non_blocking=True)
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                outputs = model(images)
            terms = loss_terms(outputs, _masks_to(masks, device), ignore_index=run.meta.ignore_index,
                               loss_sample=config.loss_sample, class_weights=run.class_weights,
                               ohem_threshold=config.ohem_threshold, ohem_min_kept=config.ohem_min_kept)
            loss, value = global_loss(terms, reduction=config.loss, grad_accum=config.grad_accum,
                                      context=run.context)
            if not math.isfinite(value):
                raise TrainingDiverged(_diverged_message(value, step=step + 1, out=Path(config.out)))
            loss.backward()
        step_loss += value
    optimizer.step()
    return step_loss


def _diverged_message(value: float, *, step: int, out: Path) -> str:
    last = out / "last.pt"
    if last.is_file():
        return (f"loss became {value} at step {step}; stopped. The last good checkpoint is {last}; lower the "
                f"learning rate (lr=...) and --resume")
    return (f"loss became {value} at step {step}; stopped. No checkpoint was written yet; lower the learning rate "
            f"(lr=...) and start again")


def _log_row(state: TrainState, *, lr: float, step_loss: float) -> dict:
    return {"step": state.step, "train_minutes": f"{state.train_seconds / 60:.3f}", "lr": f"{lr:.4g}",
            "loss": f"{step_loss:.6g}"}


def _loop(run: Run, state: TrainState, *, train_set, progress: bool) -> dict:
    config, context, out = run.config, run.context, run.out
    samples_per_step = config.batch_size * config.grad_accum * context.world_size
    batches = iter(train_loader(train_set, config, state.step, context))
    heads = getattr(unwrap(run.model), "head_names", ())[1:]  # further heads are logged as <head>_<metric>
    log_fields = LOG_FIELDS + [f"{head}_{metric}" for head in heads for metric in METRICS]
    if run.val_in_train:  # the validation columns score training images: the log says how many
        log_fields.append("val_images_in_train")
    last_scores: dict = {}
    bar = tqdm(total=config.iters, initial=state.step, disable=not progress, desc="train", unit="step")
    running_loss = None
    writer = tensorboard_writer(out, start_step=state.step) if context.is_main and config.tensorboard else None
    last_saved = time.monotonic()
    stop_signal = None
    while state.step < config.iters:
        started = time.perf_counter()
        lr = lr_at(state.step, base_lr=config.lr, iters=config.iters, schedule=config.schedule,
                   warmup_iters=config.warmup_iters)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        step_loss = _train_step(run, batches, step=state.step)
        if run.average is not None:
            update_average(run.average, unwrap(run.model), step=state.step + 1)
        state.step += 1
        state.train_seconds += time.perf_counter() - started
        running_loss = step_loss if running_loss is None else 0.9 * running_loss + 0.1 * step_loss
        bar.update(1)
        bar.set_postfix(avg_loss=f"{running_loss:.4g}",  # log.csv's loss is the step's own
                        img_s=f"{samples_per_step / (time.perf_counter() - started):.1f}")
        row = _log_row(state, lr=lr, step_loss=step_loss)
        out_of_time = config.time_budget_minutes is not None and any_rank(
            state.train_seconds >= 60 * config.time_budget_minutes
        )
        finished = state.step == config.iters or out_of_time
        if state.step % config.val_every == 0 or finished:
            last_scores = _validate(run, state)
            _add_scores(row, last_scores, heads=heads, val_in_train=run.val_in_train)
            if context.is_main:
                others = "".join(f", {head} mean IU {100 * last_scores[head]['mean_iu']:.2f}" for head in heads)
                bar.write(f"step {state.step}: mean IU {100 * last_scores['mean_iu']:.2f}{others}")
        if context.is_main and (state.step % config.log_every == 0 or "mean_iu" in row):
            _log(out / "log.csv", writer, row, log_fields, step=state.step)
        stop_signal = _agreed_stop_signal(run.stop)  # every rank stops at the same step
        stopping = (finished or stop_signal is not None
                    or (config.stop_after is not None and state.step >= config.stop_after))
        if context.is_main and (stopping or _checkpoint_due(config, state.step, time.monotonic() - last_saved)):
            _save(run, state, "last.pt")
            last_saved = time.monotonic()
        if stopping:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if stop_signal is not None:
        barrier()  # the other ranks wait for rank 0's last.pt
        raise TrainingInterrupted(state.step, stop_signal)
    if context.is_main and (state.step == config.iters or config.stop_after is None):
        from fcnseg.training.plots import plot_training_log

        plot_training_log(out / "log.csv", out / "curves.png")
    best = out / "best.pt"
    return {"step": state.step, "best_mean_iu": state.best_mean_iu, "last_scores": last_scores, "out": str(out),
            "best_checkpoint": str(best) if best.is_file() and not run.val_in_train else None,
            "val_images_in_train": run.val_in_train}


def _add_scores(row: dict, scores: dict, *, heads: tuple[str, ...], val_in_train: int) -> None:
    row.update({key: f"{scores[key]:.6f}" for key in METRICS})
    row["val_images_in_train"] = val_in_train
    row.update({f"{head}_{key}": f"{scores[head][key]:.6f}" for head in heads for key in METRICS})


def _log(path: Path, writer, row: dict, fields: list[str], *, step: int) -> None:
    append_row(path, row, fields)
    if writer is not None:
        for key in ("loss", "lr", "mean_iu", "pixel_acc"):
            if row.get(key):
                writer.add_scalar(key, float(row[key]), step)


def _checkpoint_due(config: TrainConfig, step: int, seconds_since_last: float) -> bool:
    """Whether ``checkpoint_every`` or ``checkpoint_minutes`` asks for last.pt after ``step`` (rank 0 decides)."""
    if config.checkpoint_every is not None and step % config.checkpoint_every == 0:
        return True
    return config.checkpoint_minutes is not None and seconds_since_last >= 60 * config.checkpoint_minutes


def _agreed_stop_signal(stop: StopRequest) -> int | None:
    """The signal every rank stops on (SIGINT if any rank's first signal was one), or None: keep training."""
    if not any_rank(stop.signum is not None):
        return None
    return signal.SIGINT if any_rank(stop.signum == signal.SIGINT) else signal.SIGTERM
