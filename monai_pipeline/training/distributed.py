"""Distributed training under torchrun: the process group (nccl on GPUs, gloo on CPUs), the device of each rank,
and the record of each rank's final weights (diverged ranks are visible)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.distributed as dist

from monai_pipeline.errors import InputError
from monai_pipeline.io.writer import atomic_write_text
from monai_pipeline.networks import unwrap

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this process created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA with a GPU per process,
    gloo on CPU and when more processes than GPUs share a node (nccl refuses two ranks on one GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if cuda and torch.cuda.device_count() >= per_node else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend, owns)
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    # ignite sets up its own view of the process group lazily, with a collective (new_group), the first time
    # anything asks for the rank, e.g. a checkpoint saver that only rank 0 creates: do it now, on every rank
    idist.sync()
    return ctx


def resolve_device(device: str | None, ctx: DistContext | None = None) -> torch.device:
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "device must be 'cpu' when no CUDA GPU is available, got 'cuda'")
    if device == "cuda" and ctx is not None and ctx.world_size > 1:
        device = f"cuda:{ctx.local_rank % torch.cuda.device_count()}"  # ranks share GPUs when there are fewer
    return torch.device(device)


def weights_fingerprint(network: torch.nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (name order), to compare ranks or runs."""
    h = hashlib.sha256()
    for name, t in sorted(unwrap(network).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_rank_record(run: Path, ctx: DistContext, network: torch.nn.Module, epochs: int) -> None:
    atomic_write_text(run / "ranks" / f"rank{ctx.rank}.json", json.dumps(
        {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend, "epochs": epochs,
         "weights_sha256": weights_fingerprint(network)}))


def sync_ranks(network, run: Path, ctx: DistContext, epochs: int) -> None:
    """DDP broadcasts buffers (BatchNorm statistics) from rank 0 at each forward and each rank then updates its
    own: after the last step they differ. Broadcast once more so every rank holds the model rank 0 saves, and
    record a fingerprint per rank (diverged ranks are visible)."""
    for buf in unwrap(network).buffers():
        dist.broadcast(buf, src=0)
    write_rank_record(run, ctx, network, epochs)
