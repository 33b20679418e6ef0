"""RGB statistics of the training set -> PCA(mean, eigval, eigvec), for the lighting noise of
section 4.1 and the channel mean the pixels are centred with.

The statistics pass runs the same decode and centre 256×256 as training through DALI, which
reduces every image on the device to exact integer sums of R, G, B and of their six products;
here they become the channel mean and the 3×3 covariance over all pixels of all images (each
image weighs the same: it has 256×256 pixels), then its eigen-decomposition.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

PIXELS_PER_IMAGE = 256 * 256
CACHE_VERSION = 1


@dataclass(frozen=True)
class PCA:
    """In [0, 1] pixel units. eigvec[:, i] (column i) belongs to eigval[i]; eigval descending."""

    mean: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]  # row-major 3×3
    images: int = 0  # images the statistics cover

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PCA:
        return cls(tuple(values["mean"]), tuple(values["eigval"]), tuple(tuple(r) for r in values["eigvec"]),
                   int(values.get("images", 0)))

    @property
    def eigvec_array(self) -> np.ndarray:
        return np.asarray(self.eigvec, dtype=np.float64)


def pca_from_moments(pixels: int, sums: np.ndarray, cross: np.ndarray, images: int) -> PCA:
    """From the pixel count, the channel sums [3] and the cross-product sums [6] (upper triangle,
    0-255 units) to the PCA in [0, 1] units."""
    sums = np.asarray(sums, dtype=np.float64)
    cross = np.asarray(cross, dtype=np.float64)
    second = np.empty((3, 3))
    second[np.triu_indices(3)] = cross
    second = np.triu(second) + np.triu(second, 1).T
    mean = sums / pixels
    covariance = second / pixels - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(covariance / 255.0**2)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    return PCA(tuple((mean / 255.0).tolist()), tuple(eigval.tolist()), tuple(map(tuple, eigvec.tolist())), images)


def sample_files(files: Sequence[str], limit: int, seed: int) -> list[str]:
    """All files, or `limit` of them drawn without replacement (same draw for the same seed)."""
    if limit <= 0 or len(files) <= limit:
        return list(files)
    picked = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
    return [files[i] for i in sorted(picked)]


def image_moments(files: Sequence[str], placement, *, batch_size: int = 64,
                  prepared: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 sums over `files`: channel sums [3] and cross products [6] (`prepared`: the
    files are prepare's 256×256 squares, read as they are)."""
    from .pipelines.stats import statistics_pipeline

    sums = np.zeros(3, dtype=np.int64)
    cross = np.zeros(6, dtype=np.int64)
    if not files:
        return sums, cross
    batch_size = min(batch_size, len(files))
    on_gpu = placement.dali_device == "gpu"  # there the pixels never leave the device
    pipe = statistics_pipeline(list(files), **placement.pipeline_args(), batch_size=batch_size, prefetch_queue_depth=2,
                               prepared=prepared, reduce=on_gpu)
    pipe.build()
    remaining = len(files)  # the reader pads the last batch with repeats: count them out
    while remaining > 0:
        outputs = [out.as_cpu() if hasattr(out, "as_cpu") else out for out in pipe.run()]
        take = min(remaining, len(outputs[0]))
        if on_gpu:
            sums += np.stack([np.asarray(outputs[0][i]) for i in range(take)]).sum(axis=0)
            cross += np.stack([np.asarray(outputs[1][i]) for i in range(take)]).sum(axis=0)
        for i in range(take if not on_gpu else 0):
            sums_i, cross_i = square_moments(np.asarray(outputs[0][i]))
            sums += sums_i
            cross += cross_i
        remaining -= take
    del pipe
    return sums, cross


def square_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact channel sums [3] and cross-product sums [6] (CROSS_PRODUCTS' order) of one uint8 HWC
    image: a product of two uint8 values fits uint16, and the sums are taken in uint64."""
    from .pipelines.stats import CROSS_PRODUCTS

    channels = [np.ascontiguousarray(pixels[:, :, c]).astype(np.uint16) for c in range(3)]
    sums = np.array([c.sum(dtype=np.uint64) for c in channels], dtype=np.int64)
    cross = np.array([np.multiply(channels[a], channels[b]).sum(dtype=np.uint64) for a, b in CROSS_PRODUCTS],
                     dtype=np.int64)
    return sums, cross


def compute_pca(files: Sequence[str], placement, *, batch_size: int = 64, rank: int = 0, world_size: int = 1,
                all_reduce: Callable[[np.ndarray], np.ndarray] | None = None, prepared: bool = False) -> PCA:
    """PCA over `files`, decoded where `placement` (placement.py) says. Under several processes
    each takes every world_size-th file and `all_reduce` (a sum over ranks of an int64 array)
    combines the sums."""
    mine = list(files)[rank::world_size]
    sums, cross = image_moments(mine, placement, batch_size=batch_size, prepared=prepared)
    totals = np.concatenate([sums, cross])
    if all_reduce is not None and world_size > 1:
        totals = all_reduce(totals)
    return pca_from_moments(PIXELS_PER_IMAGE * len(files), totals[:3], totals[3:], len(files))


def pca_cache_name(files: Sequence[str]) -> str:
    """Cache file name keyed by the exact list of files the PCA covers."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    for f in files:
        digest.update(os.fsencode(f) + b"\n")
    return f"pca-{digest.hexdigest()[:20]}.json"


def load_pca(path: Path) -> PCA | None:
    """A cached PCA, or None when there is none or it is damaged (then it is recomputed)."""
    try:
        return PCA.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_pca(pca: PCA, path: Path) -> None:
    from .jsonio import write_json

    try:
        write_json(pca.to_dict(), path, indent=2)
    except OSError:
        pass  # an unwritable cache only costs a recomputation next time
