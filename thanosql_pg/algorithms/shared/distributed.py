"""Data-parallel training over torch.distributed, for the shared training loop.

A BUILD/FIT with ``workers`` > 1 runs the family's ``train`` in each of ``workers``
processes (thanosql_pg.workers), one rank each; the process group (gloo on the CPU,
NCCL on GPUs) is set up before ``train`` runs, so a family sees nothing of it. The
Trainer asks ``World.current()``: None in a backend (never distributed), else this
rank's place. Each rank reads its share of every global batch (``batch_size`` stays
the global batch, whatever ``workers`` is), and:

- the ranks start from rank 0's weights (``share_weights``): a pretrained or FIT base
  model is then read by rank 0 alone;
- after each backward pass, ``average_gradients`` makes every rank's gradients the
  mean over the *global* batch: each rank's gradient of its own mean loss is weighted
  by its item count, summed over the ranks, and divided by the global count, which is
  exactly the gradient one process gets from the whole batch for a mean loss. A rank
  whose share is empty (the last, short batch; unreadable rows) contributes zeros, so
  every rank takes part in every collective and none waits forever;
- a pass's sums (loss, metric, items) are summed over the ranks (``reduce_sums``), so
  every rank, and the history rank 0 reports, sees the whole epoch;
- BatchNorm: on GPUs the layers become SyncBatchNorm (statistics over the global
  batch). torch has no SyncBatchNorm on the CPU: there each rank normalizes its share
  of the batch, and ``average_buffers`` makes the running statistics the ranks' mean
  after every pass, so all ranks (and the stored model) keep the same ones.

Nothing here starts a process or knows where rows come from. Every collective has the
process group's timeout (thanosql_pg.workers sets it): a rank that dies makes the
others fail, never hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int

    @staticmethod
    def current() -> World | None:
        """The process group's, when this process is one of several ranks; else None."""
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch without distributed support
            return None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return World(dist.get_rank(), dist.get_world_size())


def prepare(net: Any, device: Any) -> None:
    """Before training: SyncBatchNorm where torch has it (GPUs), then rank 0's weights and
    buffers everywhere."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        for name, child in list(net.named_children()):
            net.add_module(name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))  # type: ignore[no-untyped-call]
    for tensor in [*net.parameters(), *net.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[Any], items: int, device: Any) -> int:
    """Make each of ``params``' gradients the global batch's mean gradient, in one
    all-reduce. ``items``: this rank's samples in the step (0 when it had none: its
    gradients count as zeros). Returns the global batch's items (0: nobody had any,
    and no rank should step)."""
    import torch
    import torch.distributed as dist

    pieces = [(p.grad.reshape(-1) * items if p.grad is not None and items else torch.zeros(
        p.numel(), device=device, dtype=p.dtype)) for p in params]
    flat = torch.cat([*(x.float() for x in pieces), torch.tensor([float(items)], device=device)])
    dist.all_reduce(flat)
    total = round(flat[-1].item())
    if total == 0:
        return 0
    flat /= total
    start = 0
    for p in params:
        n = p.numel()
        grad = flat[start:start + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = grad.clone()
        else:
            p.grad.copy_(grad)
        start += n
    return total


def reduce_sums(values: list[float], device: Any) -> list[float]:
    """``values`` summed over the ranks (one all-reduce)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def average_buffers(net: Any) -> None:
    """The ranks' mean of every floating-point buffer (BatchNorm's running statistics)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for buf in net.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf.data)
            buf.data /= world

