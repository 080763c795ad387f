"""Data-parallel training over torch.distributed: the one `Trainer`, N processes, one model.

`funnelrec train --nproc N` (cli_distributed.py) relaunches itself through torchrun
(``torch.distributed.run``); every worker runs the same fit, and the Trainer asks `current()`
whether it runs in a process group. If so, `DataParallel.wrap` turns its loss into a
DistributedDataParallel step:

- every rank builds the same training tensors and the same epoch permutation (same seeds), so the
  Trainer's global batch b (rows s..s+B of the permutation) is the same on every rank; rank r
  computes the loss on rows r, r+W, r+2W, … of it (W = world size) — the ranks split each batch,
  they do not each take a batch;
- DDP all-reduces (averages) the gradients during backward, so every rank steps its optimizer
  with the same gradient and the replicas stay bit-identical; with equal shards the averaged
  gradient is the gradient of the global batch's mean loss, which the 1-process run takes: the
  2-process run follows the 1-process trajectory up to float summation order (a batch smaller
  than W is computed whole on every rank, so no rank ever has an empty shard);
- the loss function runs *inside* DDP's forward (`_LossModule`), so a loss that calls the
  model's parts (the two-tower's `user_tower` / `item_tower`) is synchronised as well as one
  that calls ``model(batch)``.

Validation and early stopping run on every rank with identical weights, so every rank takes the
same decision (no extra collective); rank 0 alone writes checkpoints and the artifact.

Embedding tables are replicated and synchronised by DDP, not sharded by rows. Why: the
funnel's FID tables are dense row indices of the vocabulary actually seen (FeatureEncoder), a
few MB at ml-100k and ~100 MB at the 1M-item world, so every rank holds them whole; DDP's
bucketed all-reduce overlaps their gradient traffic with backward, and a table with
``sparse=True`` gradients (the two-tower's option) reduces only the touched rows (gloo). Row
sharding (TorchRec's model parallelism) pays an all-to-all of embeddings forward *and* backward
on every step, needs its own optimizer state per shard and a resharding checkpoint — worth it
only once a table outgrows one worker's memory, which none of ours does (docs/ARCHITECTURE.md).

Backend: gloo for CPU tensors; where CUDA is available with a GPU per local rank, NCCL for
CUDA tensors as well (``"cpu:gloo,cuda:nccl"``: a collective goes by its tensor's device). Each
worker takes cores // local world size intra-op threads (torchrun's OMP_NUM_THREADS=1
otherwise), unless FUNNELREC_THREADS says otherwise.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from funnelrec.core.errors import ConfigError

Batch = dict[str, torch.Tensor]


def launched() -> bool:
    """True inside a worker started by torchrun (it sets WORLD_SIZE / RANK / MASTER_ADDR)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "MASTER_ADDR" in os.environ


def init_from_env(timeout_s: float = 600.0) -> int:
    """Join the process group torchrun describes in the environment; returns this rank (0 when
    not launched by torchrun: one process, nothing to join). Idempotent."""
    if not launched():
        return 0
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        backend = "gloo"
        if torch.cuda.is_available() and dist.is_nccl_available() and torch.cuda.device_count() >= local:
            # collectives go by tensor device: a model on the GPU reduces over NCCL, one on the CPU
            # (the Trainer's default) over gloo
            backend = "cpu:gloo,cuda:nccl"
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        os.environ.setdefault("FUNNELREC_THREADS", str(max(1, (os.cpu_count() or 1) // local)))
        # a rank that fails leaves the others waiting in a collective: bounded, not torch's 30 min
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _LossModule(nn.Module):
    """The model and its loss as one module, so DDP's forward covers whatever the loss calls."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Batch], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


@dataclass
class DataParallel:
    """This process's place in the group: rank r of W."""

    rank: int
    world: int

    def shard(self, batch: Batch) -> Batch:
        """Rows r, r+W, … of the global batch (all of it when it has fewer than W rows)."""
        n = next(iter(batch.values())).shape[0]
        if n < self.world:
            return batch
        return {k: v[self.rank :: self.world] for k, v in batch.items()}

    def wrap(self, model: nn.Module, loss_fn: Callable[[nn.Module, Batch], torch.Tensor]
             ) -> Callable[[nn.Module, Batch], torch.Tensor]:
        """A loss_fn(model, global batch) that computes this rank's shard under DDP."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("data-parallel training: the model has no trainable parameters")
        device = next(model.parameters()).device
        ddp = DDP(_LossModule(model, loss_fn), device_ids=[device.index] if device.type == "cuda" else None,
                  # the same parameters take part in every step (no data-dependent branches): DDP
                  # records which once, so a head or table the loss never reaches is allowed, at no
                  # per-step graph traversal (find_unused_parameters's cost)
                  static_graph=True)

        def step(_model: nn.Module, batch: Batch) -> torch.Tensor:
            return ddp(self.shard(batch))

        return step


def current() -> DataParallel | None:
    """The process group this process trains in, or None (one process: train alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())
