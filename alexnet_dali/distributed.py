"""torchrun's environment -> device, rank, world size, process group.

A plain `python -m alexnet_dali train ...` is one process with no process group at all; under
`torchrun` every process reads RANK / LOCAL_RANK / WORLD_SIZE, takes one GPU (its local rank) or
the CPU, and joins the group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank: shards the data
    local_rank: int  # rank on this node: picks the GPU
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dali_device(self) -> str:
        return "gpu" if self.device.type == "cuda" else "cpu"

    @property
    def dali_device_id(self) -> int | None:
        """DALI's device_id: the local GPU, or None for a CPU-only pipeline."""
        return self.local_rank if self.device.type == "cuda" else None


def resolve_device(preference: str) -> str:
    """'auto' | 'cpu' | 'gpu' -> 'cpu' | 'gpu', refusing 'gpu' where there is none."""
    if preference == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if preference == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--device gpu was asked for, but torch sees no CUDA GPU on this machine")
    if preference not in ("cpu", "gpu"):
        raise ConfigError(f"device must be auto, cpu or gpu, got {preference!r}")
    return preference


def setup(preference: str = "auto") -> DistInfo:
    """Read torchrun's environment (if any), pick the device and join the process group."""
    kind = resolve_device(preference)
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if kind == "gpu":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most one process per GPU (torchrun --nproc_per_node=gpu)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if kind == "gpu" else "gloo"
        dist.init_process_group(backend, store=attempt_store(world_size), rank=rank, world_size=world_size,
                                device_id=device if kind == "gpu" else None)
    return DistInfo(rank, local_rank, world_size, local_world_size, device)


def attempt_store(world_size: int):
    """The rendezvous store for this attempt, or None for init_process_group's default (env://).

    torchrun's agent hosts one TCPStore that outlives a worker restart, and torch (2.13) gives the
    restarted workers no fresh key prefix: they read the dead workers' addresses and fail to
    connect ("connectFullMesh failed ... Connection refused", pytorch/pytorch#167288). A prefix
    per restart keeps each attempt's keys apart, so `--max-restarts` works.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"alexnet-dali/attempt_{attempt}", store)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place; a no-op for a single process."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
