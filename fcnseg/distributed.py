"""Data-parallel training over processes (``torchrun``): process group, sharding and reductions.

``torchrun --nproc_per_node=N -m fcnseg train ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in their environment; ``setup_distributed`` joins them (NCCL on GPUs, gloo on CPUs). Without
those variables, or with ``WORLD_SIZE=1``, everything here is a no-op and training is a single process.

Equivalence. With W ranks each taking ``batch_size`` B per micro-batch and ``grad_accum`` A:

- rank r takes the global sample counters ``r, r + W, r + 2W, ...`` from ``step * W * B * A``
  (``SampleCounter(start=..., stride=W)``), so the union of the ranks' micro-batch ``m`` of step ``s`` is the
  single-process micro-batch of batch size W * B: counters ``W * B * (s * A + m) + j`` for ``j < W * B``, with
  the same augmentation (``SeededSamples`` seeds sample ``g`` by ``g`` alone);
- ``global_loss`` normalizes by the pixel count summed over all ranks (``reduction="mean"``) and multiplies by
  W, so DDP's gradient average over ranks equals the single-process gradient of the whole micro-batch, for any
  distribution of ignored pixels; the summed loss (the paper's) is likewise W times each rank's sum.

The gradients are then equal up to the order of floating-point summation, provided the model treats the
samples of a batch independently and deterministically: no batch statistics (``freeze_bn=true``, or
SyncBatchNorm, which ``wrap_model`` uses on GPUs) and no random layers (``stochastic_layers=false`` turns off
dropout and stochastic depth); ``loss_sample < 1`` draws per-rank random cells and is not covered either, nor is
OHEM (``ohem_threshold``), which picks each rank's hard pixels. Class weights are: their sum over counted pixels is
the mean loss's normalizer, reduced like the pixel count.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def pick_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run; ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process initialized the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context_from_env(env: dict[str, str] | None = None) -> DistContext:
    """The ``torchrun`` variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, or a single process without them."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistContext()
    return DistContext(
        rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0))
    )


def setup_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group the environment describes; returns the context and this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK`` and NCCL; on the CPU, gloo. The rendezvous address comes
    from ``MASTER_ADDR``/``MASTER_PORT`` (set by ``torchrun``). A group that is already initialized is reused.
    """
    context = context_from_env()
    if not context.distributed:
        return context, device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
        context = dataclasses.replace(context, owns_group=True)
    return context, device


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all ranks (``tensor`` itself when single-process)."""
    if not _active():
        return tensor
    summed = tensor.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def all_reduce_counts(counts: torch.Tensor) -> torch.Tensor:
    """Confusion-matrix counts (int64) summed over ranks: exact, so sharded scores equal unsharded ones."""
    return all_reduce_sum(counts)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank: decisions that end the loop (a time budget) must agree."""
    if not _active():
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=_collective_device())).item() > 0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(count: int, context: DistContext) -> range:
    """The indices ``rank, rank + W, ...`` below ``count`` that this rank evaluates."""
    return range(context.rank, count, context.world_size)


def global_loss(
    terms: list[tuple[torch.Tensor, torch.Tensor]], *, reduction: str, grad_accum: int, context: DistContext
) -> tuple[torch.Tensor, float]:
    """This rank's loss to back-propagate, and the loss of the whole (global) micro-batch as a number.

    ``terms`` holds one ``(loss summed over pixels, number of counted pixels)`` per head (multi-task models
    sum their heads' losses; with class weights, the weighted sum and the counted pixels' summed weights). One
    ``all_reduce`` gives every head's global sum and count, so every rank reports the same value (and stops
    together on a NaN). The returned loss is ``W * local_sum / global_count`` (``"mean"``) or ``W * local_sum``
    (``"sum"``), divided by ``grad_accum`` as Caffe's ``iter_size``: DDP's average over ranks of its gradient is
    the gradient of the single-process loss.
    """
    local = torch.stack([torch.stack([total.detach().float(), count.float()]) for total, count in terms])  # (H, 2)
    reduced = all_reduce_sum(local)
    loss = terms[0][0].new_zeros(())
    value = 0.0
    for (total, _), (global_total, global_count) in zip(terms, reduced):
        denominator = global_count.clamp(min=1) if reduction == "mean" else torch.ones_like(global_count)
        loss = loss + total * context.world_size / denominator
        value += float(global_total / denominator)
    return loss / grad_accum, value / grad_accum


def wrap_model(model: nn.Module, *, context: DistContext, device: torch.device, sync_bn: bool) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (batch norm synchronized on GPUs if ``sync_bn``).

    SyncBatchNorm needs GPUs; on the CPU, batch norm in training mode keeps per-rank statistics (use
    ``freeze_bn=true`` for exact equivalence). Returns ``model`` itself when single-process.
    """
    if not context.distributed:
        return model
    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif context.is_main and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                 for m in model.modules()):
        warnings.warn("batch norm computes statistics over each rank's batch, not the global batch: use "
                      "freeze_bn=true (or SyncBatchNorm on GPUs, sync_bn=true) for a single process's updates")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (for saving, evaluating, exporting)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_sync_unless(last: bool, model: nn.Module):
    """DDP's ``no_sync`` for all but the last micro-batch of a step: gradients are all-reduced once per step."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
