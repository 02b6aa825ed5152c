"""Data-parallel training across processes (``torchrun``), with one object to pass around.

Single-process code receives :data:`SINGLE` and every method is a no-op there, so the trainer
has one code path.  Under ``torchrun --nproc-per-node N -m itkm_engine.train ...`` each process
gets a :class:`DistContext` from :func:`init_from_env`:

* extraction is sharded (each rank embeds every N-th missing image) and gathered, so every rank
  holds the same features and computes the same pseudo-labels (clustering is deterministic);
* Stage I/III wrap the image encoder in ``DistributedDataParallel``; Stage II all-reduces the
  prompt gradients; cluster memories are updated with the batch features of *all* ranks, so
  they stay identical everywhere;
* only rank 0 writes to the workspace (epoch log, checkpoints, caches); the others open it
  read-only.

Backend: NCCL when CUDA is available, gloo otherwise (that is how the tests run it on a CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ----------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_mean_grads(self, params) -> None:
        """Average gradients over ranks (for modules not wrapped in DDP)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x`` (first dimension may differ per rank) from all ranks, in rank order."""
        if not self.enabled:
            return x
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        top = max(sizes)
        pad = torch.zeros((top - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        parts = [torch.zeros((top,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(self.world)]
        dist.all_gather(parts, torch.cat([x, pad]))
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def gather_numpy(self, a: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return a
        return self.gather_rows(torch.from_numpy(np.ascontiguousarray(a))).numpy()

    def shard(self, n: int) -> np.ndarray:
        """This rank's share of ``range(n)`` (every ``world``-th item)."""
        return np.arange(self.rank, n, self.world)


SINGLE = DistContext()


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (or stay single)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ImageForward(torch.nn.Module):
    """``forward(x, s, g, prefix) = model.forward_image(x, s, g, prefix)``: what DDP wraps, since DDP synchronises
    gradients only through its module's ``forward``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, scenario_idx, group_idx, prefix: bool = False):
        return self.model.forward_image(x, scenario_idx, group_idx, prefix)


def image_forward(model, ctx: DistContext):
    """A callable ``(x, s, g, prefix=False) -> ImageOutput`` that synchronises gradients across ranks."""
    if not ctx.enabled:
        return model.forward_image
    device_ids = [ctx.local_rank] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(
        ImageForward(model), device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False
    )
