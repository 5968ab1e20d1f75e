"""End-to-end pixelwise training (paper, section 4): plain code, no hooks.

``train(config)`` builds the data, model and optimizer from a TrainConfig, trains for
``config.iters`` optimizer steps, validates every ``val_every`` steps with the four metrics, and
writes ``out/last.pt`` and ``out/best.pt`` atomically, a CSV log, the resolved config and a plot.
``train(config, resume=True)`` continues a killed run exactly: same step, optimizer, RNG and data.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fcnseg.checkpoint import ModelMeta, load_checkpoint, make_checkpoint, save_atomically
from fcnseg.config import TrainConfig, config_to_yaml, resolve_recipe
from fcnseg.data import build_dataset, eval_transforms, train_transforms
from fcnseg.evaluate import evaluate
from fcnseg.sampling import SampleCounter, SeededSamples
from fcnseg.training_setup import build_training_model, make_optimizer, pick_device

LOG_FIELDS = ["step", "train_minutes", "lr", "loss", "pixel_acc", "mean_acc", "mean_iu", "fwavacc"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str,
    ignore_index: int = 255,
    loss_sample: float | None = None,
    cell_size: int = 32,
) -> torch.Tensor:
    """Pixelwise cross-entropy ``(N, K, H, W), (N, H, W) -> scalar``, ignoring ``ignore_index``.

    ``reduction="sum"`` is the paper's unnormalized loss; ``"mean"`` averages over counted pixels.
    ``loss_sample=P`` keeps each ``cell_size`` x ``cell_size`` cell of the final layer with probability P,
    the paper's emulation of patch sampling (section 4.4).
    """
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # (N, H, W)
    counted = (target != ignore_index).float()
    if loss_sample is not None and loss_sample < 1:
        n, height, width = target.shape
        cells = torch.rand(n, -(-height // cell_size), -(-width // cell_size), device=target.device) < loss_sample
        keep = cells.repeat_interleave(cell_size, 1).repeat_interleave(cell_size, 2)[:, :height, :width]
        counted = counted * keep.float()
    total = (per_pixel * counted).sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1)


def _datasets(config: TrainConfig, normalization: str):
    train_tf = train_transforms(
        crop_size=config.crop_size or None,
        scale_range=config.scale_range,
        hflip=config.hflip,
        color_jitter=config.color_jitter,
        normalization=normalization,
    )
    train_set = build_dataset(config.dataset, root=config.root, split=config.train_split, transforms=train_tf)
    val_set = build_dataset(
        config.val_dataset or config.dataset,
        root=config.val_root or config.root,
        split=config.val_split,
        transforms=eval_transforms(normalization=normalization),
    )
    if val_set.info.num_classes != train_set.info.num_classes:
        raise ValueError(f"validation set has {val_set.info.num_classes} classes, training set {train_set.info.num_classes}")
    return train_set, val_set


def _train_loader(train_set, config: TrainConfig, start_sample: int) -> DataLoader:
    return DataLoader(
        SeededSamples(train_set, seed=config.seed),
        batch_size=config.batch_size,
        sampler=SampleCounter(start=start_sample),
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
    )


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({key: row.get(key, "") for key in LOG_FIELDS})


def _save(out: Path, name: str, model: nn.Module, meta: ModelMeta, optimizer, state: dict, config) -> None:
    checkpoint = make_checkpoint(
        model,
        meta,
        optimizer=optimizer.state_dict(),
        step=state["step"],
        best_mean_iu=state["best_mean_iu"],
        train_seconds=state["train_seconds"],
        rng_state=torch.get_rng_state(),
        config=config_to_yaml(config),
    )
    save_atomically(checkpoint, out / name)


def _restore(out: Path, model: nn.Module, optimizer, config: TrainConfig) -> dict:
    checkpoint = load_checkpoint(out / "last.pt")
    if checkpoint["model"] != config.model:
        raise ValueError(f"{out / 'last.pt'} holds a {checkpoint['model']} run; this config trains {config.model}")
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng_state"])
    return {
        "step": int(checkpoint["step"]),
        "best_mean_iu": float(checkpoint["best_mean_iu"]),
        "train_seconds": float(checkpoint["train_seconds"]),
    }


def _tensorboard(config: TrainConfig, out: Path):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _validate(model, val_set, meta: ModelMeta, config: TrainConfig, device) -> dict:
    return evaluate(
        model, val_set, num_classes=meta.num_classes, device=device, ignore_index=meta.ignore_index,
        max_images=config.val_max_images, workers=min(config.workers, 2),
    )


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Train as ``config`` says; returns ``{"step", "best_mean_iu", "last_scores", "out"}``."""
    config = resolve_recipe(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    # Denormal floats make CPU kernels many times slower late in training; flushing them costs nothing.
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and (out / "last.pt").exists():
        raise FileExistsError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")

    model, normalization = build_training_model(config)
    train_set, val_set = _datasets(config, normalization)
    info = train_set.info
    meta = ModelMeta(
        model=config.model, num_classes=info.num_classes, class_names=info.class_names, palette=info.palette,
        normalization=normalization, ignore_index=info.ignore_index,
        learnable_upsampling=config.learnable_upsampling, in_channels=getattr(model, "in_channels", 3),
    )
    if getattr(model, "num_classes", info.num_classes) != info.num_classes:
        raise ValueError(f"model has {model.num_classes} classes, data set {info.name} has {info.num_classes}")
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    state = {"step": 0, "best_mean_iu": -1.0, "train_seconds": 0.0}
    if resume and (out / "last.pt").exists():
        state = _restore(out, model, optimizer, config)
    (out / "config.yaml").write_text(config_to_yaml(config))
    return _loop(model, optimizer, train_set, val_set, meta, config, device, state, out, progress)


def _loop(model, optimizer, train_set, val_set, meta, config, device, state, out, progress) -> dict:
    samples_per_step = config.batch_size * config.grad_accum
    batches = iter(_train_loader(train_set, config, state["step"] * samples_per_step))
    last_scores: dict = {}
    bar = tqdm(total=config.iters, initial=state["step"], disable=not progress, desc="train", unit="step")
    running_loss = None
    writer = _tensorboard(config, out)
    while state["step"] < config.iters:
        started = time.perf_counter()
        lr = lr_at(state["step"], base_lr=config.lr, iters=config.iters, schedule=config.schedule,
                   warmup_iters=config.warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(config.grad_accum):
            images, masks = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = model(images.to(device, non_blocking=True))
            loss = segmentation_loss(
                logits.float(), masks.to(device), reduction=config.loss, ignore_index=meta.ignore_index,
                loss_sample=config.loss_sample,
            ) / config.grad_accum  # Caffe's iter_size divides the accumulated gradient likewise
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {state['step'] + 1}; stopped. The last good checkpoint "
                    f"is {out / 'last.pt'}; lower the learning rate (lr=...) and --resume"
                )
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        state["step"] += 1
        state["train_seconds"] += time.perf_counter() - started
        running_loss = step_loss if running_loss is None else 0.9 * running_loss + 0.1 * step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{running_loss:.4g}", img_s=f"{samples_per_step / (time.perf_counter() - started):.1f}")
        row = {"step": state["step"], "train_minutes": f"{state['train_seconds'] / 60:.3f}", "lr": f"{lr:.4g}",
               "loss": f"{step_loss:.6g}"}
        out_of_time = config.time_budget_minutes is not None and state["train_seconds"] >= 60 * config.time_budget_minutes
        finished = state["step"] == config.iters or out_of_time
        if state["step"] % config.val_every == 0 or finished:
            last_scores = _validate(model, val_set, meta, config, device)
            row.update({key: f"{last_scores[key]:.6f}" for key in ("pixel_acc", "mean_acc", "mean_iu", "fwavacc")})
            if last_scores["mean_iu"] > state["best_mean_iu"]:
                state["best_mean_iu"] = last_scores["mean_iu"]
                _save(out, "best.pt", model, meta, optimizer, state, config)
            _save(out, "last.pt", model, meta, optimizer, state, config)
            bar.write(f"step {state['step']}: mean IU {100 * last_scores['mean_iu']:.2f}")
        if state["step"] % config.log_every == 0 or "mean_iu" in row:
            _append_log(out / "log.csv", row)
            if writer is not None:
                for key in ("loss", "lr", "mean_iu", "pixel_acc"):
                    if row.get(key):
                        writer.add_scalar(key, float(row[key]), state["step"])
        if finished or (config.stop_after is not None and state["step"] >= config.stop_after):
            if not (state["step"] % config.val_every == 0 or finished):
                _save(out, "last.pt", model, meta, optimizer, state, config)
            break
    bar.close()
    if writer is not None:
        writer.close()
    if state["step"] == config.iters or config.stop_after is None:
        from fcnseg.plots import plot_training_log

        plot_training_log(out / "log.csv", out / "curves.png")
    return {"step": state["step"], "best_mean_iu": state["best_mean_iu"], "last_scores": last_scores, "out": str(out)}
