"""torchrun's environment -> ranks and world size; the process group.

A plain `python -m alexnet_dali train ...` is one process with no process group at all; under
`torchrun` every process reads RANK / LOCAL_RANK / WORLD_SIZE and joins the group on its device
(placement.py): NCCL on GPUs, gloo on CPUs. Joining waits a bounded time (--dist-timeout) for
every rank, then stops with one line naming those that never came.
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


def join(info: DistInfo, device: torch.device, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> None:
    """Join the process group once per process (NCCL on a GPU, gloo on the CPU); a no-op for one
    process or when already joined. Waits at most `timeout_min` minutes for the other ranks, then
    raises ProcessGroupTimeout naming the ranks that never came, the store and the key prefix."""
    global _started_before
    if not info.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store, _started_before = meeting_store(info.rank, info.world_size, timedelta(minutes=timeout_min))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=info.rank, world_size=info.world_size,
                            device_id=device if device.type == "cuda" else None)


_started_before = False  # set by join(): workers of this torchrun run formed a process group before


def restarted() -> bool:
    """Is this process a torchrun restart, which resumes its run by itself? Its agent may not have
    counted it (TORCHELASTIC_RESTART_COUNT 0: a restart for another node's failure), but the store
    tells whether workers of this run started before."""
    return _started_before or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


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
