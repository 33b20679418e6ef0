"""DALI pipelines as torch iterables: (images, labels) batches on the device that trains.

Epoch edges follow the reader (`reader_name`), never a hand-set size. Training uses FILL: the
shard's last batch is topped up with repeats of its last image, so every image is seen every
epoch and every rank takes the same number of steps (at most batch-1 repeats per rank and
epoch). Evaluation uses PARTIAL: padded repeats are dropped, so each image counts exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from .data import Split
from .distributed import DistInfo
from .pca import PCA
from .pipelines import READER_NAME, evaluation_pipeline, training_pipeline


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_per_process(dist_info: DistInfo) -> int:
    return max(1, cpu_count() // max(1, dist_info.local_world_size))


# On a GPU the CPU threads only feed the decoders (nvJPEG's Huffman stage for the images the
# hardware decoder does not take), and each reserves decoder buffers (pipelines/common.py: about
# 200 MiB of GPU and 270 MiB of pinned memory), so their number is capped.
MAX_GPU_PIPELINE_THREADS = 8


def dali_threads(requested: int, dist_info: DistInfo) -> int:
    """DALI worker threads per process while training: the request, or this process's share of
    the cores. On a CPU-only machine the model needs the cores too, so DALI gets half of them."""
    if requested > 0:
        return requested
    share = cores_per_process(dist_info)
    if dist_info.dali_device == "cpu":
        return max(1, share // 2)
    return min(MAX_GPU_PIPELINE_THREADS, max(2, share - 1))


def derived_seed(seed: int, *stream: int) -> int:
    """A DALI seed (< 2**31) for one use of the run seed: decorrelated, reproducible."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int  # images per process per step
    num_threads: int
    prefetch: int
    seed: int  # the run seed
    lighting: float
    hw_decoder_load: float = 0.65


class DaliLoader:
    """Wraps one pipeline and DALI's PyTorch iterator. Each batch is used before the next is asked
    for (the iterator reuses its output buffers)."""

    def __init__(self, pipeline, policy: LastBatchPolicy):
        self.pipeline = pipeline
        self.iterator = DALIGenericIterator([pipeline], ["images", "labels"], reader_name=READER_NAME,
                                            last_batch_policy=policy, auto_reset=True)

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self):
        for batch in self.iterator:
            images, labels = batch[0]["images"], batch[0]["labels"]
            if images.shape[0] == 0:  # PARTIAL: a shard may have no image left for the last step
                continue
            if images.dim() == 4 and images.shape[-1] == 3:  # NHWC (GPU): an NCHW view, channels_last memory
                images = images.permute(0, 3, 1, 2)
            yield images, labels.view(-1).long()

    def state(self) -> bytes:
        """The reader's position and the random generators' state (DALI checkpointing)."""
        return self.iterator.checkpoints()[0]


def training_loader(split: Split, pca: PCA, settings: LoaderSettings, dist_info: DistInfo,
                    state: bytes | None = None) -> DaliLoader:
    pipe = training_pipeline(
        split.files, split.labels, device=dist_info.dali_device, mean=pca.mean, eigval=pca.eigval,
        eigvec=pca.eigvec, lighting=settings.lighting, shard_id=dist_info.rank, num_shards=dist_info.world_size,
        shuffle_seed=derived_seed(settings.seed, 1), hw_decoder_load=settings.hw_decoder_load,
        batch_size=settings.batch_size, num_threads=settings.num_threads, device_id=dist_info.dali_device_id,
        seed=derived_seed(settings.seed, 2, dist_info.rank), prefetch_queue_depth=settings.prefetch,
        checkpoint=state,
    )
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.FILL)


def evaluation_loader(split: Split, pca: PCA, settings: LoaderSettings, dist_info: DistInfo) -> DaliLoader:
    pipe = evaluation_pipeline(
        split.files, split.labels, device=dist_info.dali_device, mean=pca.mean, shard_id=dist_info.rank,
        num_shards=dist_info.world_size, hw_decoder_load=settings.hw_decoder_load, batch_size=settings.batch_size,
        num_threads=settings.num_threads, device_id=dist_info.dali_device_id, prefetch_queue_depth=settings.prefetch,
    )
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.PARTIAL)
