"""torchrun's environment -> device, rank, world size, process group.

A plain `python -m alexnet_dali train ...` is one process with no process group at all; under
`torchrun` every process reads RANK / LOCAL_RANK / WORLD_SIZE, takes one GPU (its local rank) or
the CPU, and joins the group: NCCL on GPUs, gloo on CPUs. Joining waits a bounded time
(--dist-timeout) for every rank, then stops with one line naming those that never came.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError, TrainConfig

DEFAULT_TIMEOUT_MIN = TrainConfig.dist_timeout  # how long joining the process group waits for every rank


class ProcessGroupTimeout(ConfigError):
    """Some ranks never joined the process group: the launch, not the training, went wrong."""


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank: shards the data
    local_rank: int  # rank on this node: picks the GPU
    world_size: int
    local_world_size: int
    device: torch.device
    restarted: bool = False  # a torchrun restart of the run's workers: they resume by themselves

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


def setup(preference: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Read torchrun's environment (if any), pick the device and join the process group.

    Joining waits at most `timeout_min` minutes for the other ranks, then raises
    ProcessGroupTimeout naming the ranks that never came, the store and the key prefix."""
    kind = resolve_device(preference)
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
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
        store, started_before = meeting_store(rank, world_size, timedelta(minutes=timeout_min))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                device_id=device if kind == "gpu" else None)
        restarted = restarted or started_before
    return DistInfo(rank, local_rank, world_size, local_world_size, device, restarted)


# -- Where the ranks of one start meet -------------------------------------------------------
#
# torchrun's agent hosts one TCPStore that outlives the workers' restarts, and torch (2.13) gives
# restarted workers no fresh key prefix: they read the dead workers' addresses and fail to connect
# ("connectFullMesh failed ... Connection refused", pytorch/pytorch#167288). So each start of the
# workers needs a prefix of its own, and every rank of that start must pick the same one.
# TORCHELASTIC_RESTART_COUNT cannot name it: on two nodes, the agent whose worker failed counts a
# restart, while the other agent restarts its healthy worker for the membership change and counts
# none (torch elastic does not count those), so the two workers would wait under different
# prefixes forever. Instead every worker adds 1 to a counter in the store once per start: all
# workers of one start arrive after every worker of the start before it has arrived (the agents
# stop all workers before the next rendezvous), so the k-th world_size arrivals are generation k.
# A start where some rank never arrived times out, and its ranks close the generation, so that the
# next start's ranks again meet in one.

STARTED_KEY = "alexnet-dali/started"  # set once a process group formed: any later start is a restart


def meeting_store(rank: int, world_size: int, timeout: timedelta) -> tuple[dist.Store, bool]:
    """The store under this start's own prefix, once every rank has arrived in it, and whether
    workers of this run started before (a torchrun restart, counted or not)."""
    address = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if None in address:
        raise ConfigError(f"WORLD_SIZE is {world_size} but MASTER_ADDR or MASTER_PORT is not set: launch with torchrun")
    host, port = address[0], int(address[1])
    deadline = time.monotonic() + timeout.total_seconds()
    # With TORCHELASTIC_USE_AGENT_STORE, torchrun's agent hosts the store; otherwise (env://) rank 0 does.
    hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0
    if not hosts_store:
        wait_for_listener(host, port, deadline, rank, timeout)
    store = dist.TCPStore(host, port, is_master=hosts_store, timeout=timeout, wait_for_workers=False,
                          multi_tenant=True)
    started_before = store.check([STARTED_KEY])  # read before arriving: see below
    counter = f"alexnet-dali/world{world_size}/starts"  # per world size, so an elastic resize cannot shift it
    generation = (store.add(counter, 1) - 1) // world_size
    prefix = f"alexnet-dali/world{world_size}/generation{generation}"
    store.set(f"{prefix}/arrived/rank{rank}", b"1")
    arrivals = store.add(f"{prefix}/arrivals", 1)
    # Polled rather than store.wait(): a store timeout prints C++ warnings around our one line.
    pause = 0.01
    while arrivals < world_size:
        if time.monotonic() > deadline:
            missing = [r for r in range(world_size) if not store.check([f"{prefix}/arrived/rank{r}"])]
            close_generation(store, counter, generation, world_size)
            raise ProcessGroupTimeout(
                f"rank {rank} waited {minutes(timeout)} for {describe_ranks(missing)} of {world_size} to join the "
                f"process group at store {host}:{port}, prefix {prefix}: start the same command on every node, "
                "or give --dist-timeout more minutes")
        time.sleep(pause)
        pause = min(2 * pause, 0.5)
        arrivals = store.add(f"{prefix}/arrivals", 0)
    # Every rank of this start has read STARTED_KEY by now (before it arrived), so it tells only later starts.
    store.set(STARTED_KEY, b"1")
    return dist.PrefixStore(prefix, store), started_before


def close_generation(store: dist.Store, counter: str, generation: int, world_size: int) -> None:
    """Move the counter to the end of a generation that will never fill (a rank of it never came),
    so that the next start's ranks again meet in one generation."""
    end = (generation + 1) * world_size
    current = int(store.add(counter, 0))
    while current < end:  # compare-and-set: several timed-out ranks may close the same generation
        current = int(store.compare_set(counter, str(current), str(end)))


def wait_for_listener(host: str, port: int, deadline: float, rank: int, timeout: timedelta) -> None:
    """Wait until the store accepts connections (checked here: TCPStore's own failure is a C++ trace)."""
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ProcessGroupTimeout(
                    f"rank {rank} waited {minutes(timeout)} for the rendezvous store at {host}:{port} (MASTER_ADDR, "
                    "MASTER_PORT), which never answered: start rank 0 (or torchrun's first node), or give "
                    "--dist-timeout more minutes") from None
            time.sleep(0.2)


def describe_ranks(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"


def minutes(timeout: timedelta) -> str:
    return f"{timeout.total_seconds() / 60:g} min"


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
