"""DALI pipelines as torch iterables: (images, labels) batches on the device that trains.

Epoch edges follow the reader (`reader_name`), never a hand-set size. Training uses FILL: the
shard's last batch is topped up with repeats of its last image, so every image is seen every
epoch and every rank takes the same number of steps; the repeats are trained on, but the
training metrics count each image once (`own_images`), and a batch larger than a shard is
refused (dataset.check_batch_fits). Evaluation uses PARTIAL: padded repeats are dropped, so each
image counts exactly once.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from .data import Split
from .distributed import DistInfo
from .pca import PCA
from .pipelines import READER_NAME, evaluation_pipeline, tencrop_pipeline, training_pipeline
from .placement import Placement


def derived_seed(seed: int, *stream: int) -> int:
    """A DALI seed (< 2**31) for one use of the run seed: decorrelated, reproducible."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0] & 0x7FFFFFFF)


class GpuHandOff:
    """Copies of DALI's zero-copy GPU outputs in torch's memory. DALI may give a released buffer to
    its next batch at once, while kernels queued on torch's stream still read it; torch's
    allocator reuses memory only in its stream's order. DALI's buffers are held until the copies
    have run. (A precaution: tests/test_gpu.py checks the hazard, which has not yet been seen on a
    GPU. One device-to-device copy per batch.)"""

    def __init__(self):
        self._lent = []  # (event, DALI's tensors) until torch's stream has copied them

    def own(self, *tensors):
        import torch

        if not tensors[0].is_cuda:
            return tensors  # CPU batches are read synchronously
        copies = tuple(tensor.clone() for tensor in tensors)
        copied = torch.cuda.Event()
        copied.record()
        self._lent = [(event, held) for event, held in self._lent if not event.query()] + [(copied, tensors)]
        return copies


class DaliLoader:
    """Wraps one pipeline and DALI's PyTorch iterator, as (images, labels) batches on the device."""

    def __init__(self, pipeline, policy: LastBatchPolicy, shard_images: int | None = None):
        self.pipeline = pipeline
        self.iterator = DALIGenericIterator([pipeline], ["images", "labels"], reader_name=READER_NAME,
                                            last_batch_policy=policy, auto_reset=True)
        self.hand_off = GpuHandOff()
        self.shard_images = shard_images  # FILL: the images of this rank's shard, repeats not counted

    def __len__(self) -> int:
        return len(self.iterator)

    def own_images(self, step: int) -> int:
        """How many rows of batch `step` (0-based, in the epoch) are images of this shard, each
        once: FILL tops up the shard's last batch (and, where another shard is longer, whole
        batches) with repeats of its last image, at the end of the batch."""
        batch = self.pipeline.max_batch_size
        if self.shard_images is None:
            return batch
        return max(0, min(batch, self.shard_images - step * batch))

    def __iter__(self):
        for batch in self.iterator:
            images, labels = batch[0]["images"], batch[0]["labels"]
            if images.shape[0] == 0:  # PARTIAL: a shard may have no image left for the last step
                continue
            images, labels = self.hand_off.own(images, labels)
            yield nchw_view(images), labels.view(-1).long()

    def state(self) -> bytes:
        """The reader's position and the random generators' state (DALI checkpointing)."""
        return self.iterator.checkpoints()[0]


def nchw_view(images):
    """The GPU pipelines give NHWC (and [B, 10, H, W, C] for ten views): an NCHW view of it, which
    is channels_last memory, the layout a channels_last model reads without a copy."""
    if images.shape[-1] != 3:
        return images
    return images.movedim(-1, -3)


def training_loader(split: Split, pca: PCA, placement: Placement, dist: DistInfo, *, batch_size: int, seed: int,
                    lighting: float, prefetch: int, state: bytes | None = None) -> DaliLoader:
    """The paper's augmentation over this rank's shard; `state` resumes a reader mid-epoch."""
    pipe = training_pipeline(
        split.files, split.labels, **placement.pipeline_args(), mean=pca.mean, eigval=pca.eigval, eigvec=pca.eigvec,
        lighting=lighting, shard_id=dist.rank, num_shards=dist.world_size, shuffle_seed=derived_seed(seed, 1),
        prepared=split.prepared,
        batch_size=batch_size, seed=derived_seed(seed, 2, dist.rank), prefetch_queue_depth=prefetch, checkpoint=state,
    )
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.FILL, shard_size(len(split), dist.rank, dist.world_size))


def shard_size(images: int, shard_id: int, num_shards: int) -> int:
    """The images of one shard: DALI's reader starts shard i at images x i // num_shards."""
    return images * (shard_id + 1) // num_shards - images * shard_id // num_shards


def evaluation_loader(split: Split, pca: PCA, placement: Placement, dist: DistInfo, *, batch_size: int,
                      prefetch: int, ten_crop: bool = False) -> DaliLoader:
    """The centre crop, or the paper's ten views ([B, 10, 3, 224, 224]), of this rank's shard."""
    make = tencrop_pipeline if ten_crop else evaluation_pipeline
    pipe = make(split.files, split.labels, **placement.pipeline_args(), mean=pca.mean, shard_id=dist.rank,
                num_shards=dist.world_size, batch_size=batch_size, prefetch_queue_depth=prefetch,
                prepared=split.prepared)
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.PARTIAL)
