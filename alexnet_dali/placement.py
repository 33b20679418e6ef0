"""Where one process decodes and computes: built once per process, passed to every pipeline
factory and to the model, so training, validation, the scan, the PCA pass and prediction all run
on the same device with the same decoder settings and thread count."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import ConfigError, bound_problem, check_values

# On a GPU the CPU threads only feed the decoders (nvJPEG's Huffman stage for the images the
# hardware decoder does not take), and each reserves decoder buffers (pipelines/common.py: about
# 200 MiB of GPU and 270 MiB of pinned memory), so their number is capped.
MAX_GPU_PIPELINE_THREADS = 8


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Placement:
    device: torch.device  # cuda:N or cpu: the model's device and the pipelines' output device
    threads: int  # DALI CPU worker threads of every pipeline this process builds
    hw_decoder_load: float  # GPU: share of the JPEGs for the hardware decoder

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dali_device(self) -> str:
        """The pipelines' `device`: "gpu" (mixed decoder, GPU kernels) or "cpu"."""
        return "gpu" if self.on_gpu else "cpu"

    def put_model(self, net: torch.nn.Module) -> torch.nn.Module:
        """`net`, moved to this device in place; on a GPU in channels_last memory, since the GPU
        pipelines give NHWC batches, which such a model reads without a copy."""
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.on_gpu else net

    def pipeline_args(self) -> dict:
        """The keyword arguments every pipeline factory in alexnet_dali.pipelines takes from here."""
        return dict(device=self.dali_device, device_id=self.device.index if self.on_gpu else None,
                    num_threads=self.threads, hw_decoder_load=self.hw_decoder_load)


def gpu_for(local_rank: int) -> torch.device:
    """This process's GPU: its local rank's, or cuda:0 where the launcher shows each process only
    its own GPU (CUDA_VISIBLE_DEVICES per rank, SLURM --gpus-per-task=1)."""
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise ConfigError(f"local rank {local_rank} has no GPU: this process sees {visible}; start at most one "
                          "process per GPU (torchrun --nproc_per_node=gpu)")
    return torch.device("cuda", local_rank)


def place(preference: str, *, threads: int, hw_decoder_load: float, local_rank: int = 0,
          local_world_size: int = 1) -> Placement:
    """The placement for `--device auto|cpu|gpu`; threads=0 chooses for the machine."""
    check_values({"device": preference, "hw_decoder_load": hw_decoder_load})  # predict and evaluate build no config
    problem = bound_problem("dali_threads", threads)  # the one check of --dali-threads, for every verb
    if problem:
        raise ConfigError(f"--dali-threads {problem.split(' ', 1)[1]} (0: chosen for the machine)")
    if preference == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--device gpu was asked for, but torch sees no CUDA GPU on this machine")
    on_gpu = preference == "gpu" or (preference == "auto" and torch.cuda.is_available())
    device = gpu_for(local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:  # every model here sees fixed shapes: cuDNN times its algorithms once per shape, keeps the fastest
        torch.backends.cudnn.benchmark = True
    return Placement(device, threads if threads > 0 else default_threads(on_gpu, local_world_size), hw_decoder_load)


def default_threads(on_gpu: bool, local_world_size: int) -> int:
    """DALI threads per process: its share of the cores; on a CPU-only machine half of it (the
    model needs the cores too); on a GPU machine that share less one (the training loop's), at
    most MAX_GPU_PIPELINE_THREADS."""
    share = max(1, cpu_count() // max(1, local_world_size))
    return min(MAX_GPU_PIPELINE_THREADS, max(2, share - 1)) if on_gpu else max(1, share // 2)
