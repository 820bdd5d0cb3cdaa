"""torch.distributed plumbing for DashCLIP: the process group torchrun describes, each rank's shard of a global
batch, feature gathering with gradients, DistributedDataParallel around a training step, rank-0-only side effects.

    torchrun --nproc_per_node 2 -m embeddings.train --stage 2 --config CONFIG --data DATA
    torchrun --nproc_per_node 2 -m embeddings.precompute --data DATA --checkpoint CKPT

Launched without torchrun (WORLD_SIZE unset or 1) nothing here touches torch.distributed: `Ranks()` is one process,
its shard is the whole batch and `gather` returns its input, so single-process training is what it always was.

Data parallelism as in open_clip: the configured batch is the global batch, drawn identically on every rank from
(seed, epoch, step); rank r encodes rows `shard(B, ranks).rows` of it (np.array_split's contiguous split: the first
B % W ranks take one row more), the features are gathered in rank order, so the gathered batch is the batch one
process would see, and every rank computes the single-process loss on it. The gather's backward sums the ranks'
gradients of their shard's rows (each rank's loss is the whole loss, so that sum is W times the one-process
gradient through those rows) and DDP then averages over the W ranks: the parameters get exactly the gradient of one
process on the concatenated batch. This is open_clip's `gather_with_grad=True, local_loss=False`; its
`local_loss=True` (each rank scores only its own rows against all candidates) would save a [B, B(+K)] matmul per
rank, at the price of row offsets in every loss, mask and hard-negative draw, which here stay the one-process ones.
Backend: gloo (the training and precompute loops run on the CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: rank in [0, world)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and tables, logs to MLflow and prints."""
        return self.rank == 0


def init_from_env() -> Ranks:
    """The process group torchrun's environment describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): one
    process, untouched, when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def close(ranks: Ranks) -> None:
    """Leave the process group (at the end of an entry point)."""
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


class Shard(NamedTuple):
    """One rank's part of a global batch of sum(counts) rows."""

    rows: slice  # the rows this rank encodes: its own, or row 0 as a stand-in when its share is empty
    counts: tuple[int, ...]  # rows each rank contributes to the gathered batch, in rank order


def shard(batch: int, ranks: Ranks) -> Shard:
    """Rank r's contiguous share of a global batch (np.array_split: the first batch % W ranks take one row more).

    A batch smaller than the world (an epoch's last batch) leaves some ranks no row: such a rank still encodes one
    stand-in row, which the gather drops, because every rank must run the same collectives in forward and backward.
    """
    counts = tuple(len(part) for part in np.array_split(np.arange(batch), ranks.world))
    start = sum(counts[: ranks.rank])
    rows = slice(start, start + counts[ranks.rank]) if counts[ranks.rank] else slice(0, 1)
    return Shard(rows, counts)


class _GatherRows(torch.autograd.Function):
    """All ranks' shards concatenated in rank order, [sum(counts), ...]; backward: the sum over ranks of the
    gradient of the gathered rows, restricted to this rank's rows (zero for a stand-in row). all_gather needs equal
    shapes, so shards are padded to the largest and trimmed after."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.counts, ctx.rank, ctx.rows = counts, rank, len(x)
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[: counts[rank]] = x[: counts[rank]]
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every row: the rows' gradient is the sum over the ranks
        start, n = sum(ctx.counts[: ctx.rank]), ctx.counts[ctx.rank]
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        out[:n] = grad[start : start + n]
        return out, None, None


def gather(x: torch.Tensor, part: Shard, ranks: Ranks) -> torch.Tensor:
    """This rank's rows x [n, ...] -> the global batch's [sum(part.counts), ...], differentiable (see the module
    docstring for the gradient it gives). One process: x itself.

    With gradients on, the result always takes part in backward, even when x does not need a gradient here (no
    hard negatives in this shard): every rank must reach the backward all_reduce, or the others wait for ever."""
    if ranks.world == 1:
        return x
    if torch.is_grad_enabled() and not x.requires_grad:
        x = x.detach().requires_grad_()
    return _GatherRows.apply(x, part.counts, ranks.rank)


class _Step(nn.Module):
    """A training step's loss as a module's forward: DDP synchronises the gradients of what its forward computed,
    so the whole loss (features, gathers, loss terms) runs inside it."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *args):
        return self.loss_fn(*args)


def data_parallel(model: nn.Module, loss_fn: Callable[..., Any], ranks: Ranks) -> Callable[..., Any]:
    """loss_fn (which reads model's parameters) under DistributedDataParallel; loss_fn itself for one process.

    static_graph: the set of trained parameters a step uses is fixed by the config (some never take part: the
    cross-attention layers when a shared text tower encodes queries), so DDP finds the unused ones in the first
    step once instead of searching the graph every step. DDP's constructor broadcasts rank 0's weights and buffers,
    so every rank starts equal; later forwards do not resend the buffers (position ids, which never change)."""
    if ranks.world == 1:
        return loss_fn
    return DistributedDataParallel(_Step(model, loss_fn), static_graph=True, forward_sync_buffers=False)


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if ranks.world > 1:
        dist.barrier()


def on_main(fn: Callable[[], Any], ranks: Ranks) -> Any:
    """fn() computed by rank 0 and sent to every rank (a validation row: decisions such as early stopping must be
    the same everywhere, and float results of two machines need not be)."""
    if ranks.world == 1:
        return fn()
    box = [fn() if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collect(items: dict[int, Any], ranks: Ranks) -> dict[int, Any] | None:
    """Every rank's {index: item} merged on rank 0 (None on the others): the pieces of one table."""
    if ranks.world == 1:
        return items
    parts = [None] * ranks.world if ranks.is_main else None
    dist.gather_object(items, parts, dst=0)
    return {k: v for part in parts for k, v in part.items()} if ranks.is_main else None
