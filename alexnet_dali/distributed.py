"""torchrun's environment -> ranks and world size; the process group.

A plain `python -m alexnet_dali train ...` is one process with no process group at all; under
`torchrun` every process reads RANK / LOCAL_RANK / WORLD_SIZE and joins the group on its device
(placement.py): NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # global rank: shards the data
    local_rank: int = 0  # rank on this node: picks the GPU
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env() -> DistInfo:
    """This process's place among torchrun's processes (one process without torchrun)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def join(info: DistInfo, device: torch.device) -> None:
    """Join the process group once per process (NCCL on a GPU, gloo on the CPU); a no-op for one
    process or when already joined."""
    if not info.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=attempt_store(info.world_size),
                            rank=info.rank, world_size=info.world_size,
                            device_id=device if device.type == "cuda" else None)


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


def on_main(info: DistInfo, work):
    """work() on the main process only; its result, or the error it raised, on every process (one
    listing of a shared data set instead of one per process, and its warnings said once)."""
    if not info.distributed:
        return work()
    result = error = None
    if info.is_main:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank just below
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
