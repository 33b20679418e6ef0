"""Everything between a data location and a training step: index the splits, decode-check every
image, compute (or load) the PCA. Each problem surfaces here, named, before any training step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import ConfigError, TrainConfig
from .data import SkippableProblem, Split, index_splits
from .distributed import DistInfo
from .errors import DataError, Problem
from .jsonio import write_json
from .log import logger
from .pca import PCA, compute_pca, load_pca, pca_cache_name, sample_files, save_pca
from .pipeline_errors import data_changed_error, is_pipeline_error
from .placement import Placement
from .scan import CACHE_NAME, pixel_bounded_batch, scan_images
from .schedule import batch_plan
from .sources import cache_folder, local_copy, not_on_file_system

EXCLUDED_FILE = "excluded.json"
FIX_AND_RERUN = "restore or replace it and run the same command again, or add --skip-bad to train without it"


@dataclass(frozen=True)
class TrainingData:
    train: Split
    val: Split
    pca: PCA
    excluded: dict  # path -> reason, for files left out by --skip-bad (undecodable, or not images)
    scan_cache: Path | None = None  # the scan's cache file, where a verdict found later is recorded too


def cache_dirs(config: TrainConfig, data_root: str) -> list[Path]:
    """Caches (PCA, scan results) live where runs on the data share them (sources.cache_folder:
    beside local data, in --cache-dir for a bucket), or in the run directory where that folder
    is read-only or there is none."""
    shared = cache_folder(data_root, config.cache_dir)
    return ([shared] if shared else []) + [Path(config.out) / "cache"]


def writable_cache(dirs: list[Path]) -> Path | None:
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            return folder
        except OSError:
            continue
    return None


def index(config: TrainConfig, dist_info: DistInfo) -> tuple[dict[str, Split], str, dict[str, str]]:
    """The train and validation splits, the local data root, and the files beside the images
    that --skip-bad leaves out (path -> reason). Every node fetches a URL data set into its own
    cache; the main process alone lists the data and shares the index."""
    splits = ("train", config.val_split)
    root, labels, encoding = local_copy(config.data, config.labels, config.label_encoding, cache_dir=config.cache_dir,
                                        splits=splits, refresh=config.refresh)
    indexed, problems = distributed.on_main(dist_info, lambda: index_splits(root, labels, encoding, splits=splits))
    passed = [p for p in problems if config.skip_bad and isinstance(p, SkippableProblem)]
    problems = [p for p in problems if p not in passed]
    if problems:
        raise DataError(problems, "problems in the data set")
    for name in splits:
        if name not in indexed:  # every file of the split was left out
            raise DataError(f"split {name!r} holds no image files: all its files are left out by --skip-bad")
    return indexed, root, {p.path: p.reason for p in passed}


def load_training_data(config: TrainConfig, dist_info: DistInfo, placement: Placement) -> TrainingData:
    for option, value in (("--out", config.out), ("--cache-dir", config.cache_dir)):
        where = not_on_file_system(value)
        if where:  # Path() would quietly make a local folder named "s3:"
            raise ConfigError(f"{option} {value} is {where}: checkpoints, logs and caches need a local or shared "
                              "file system path (the data may stay where it is)")
    splits, root, not_images = index(config, dist_info)
    train, val = splits["train"], splits[config.val_split]
    check_batch_fits(train, config, dist_info.world_size)  # before the scan and the PCA pass
    cache_dir = distributed.broadcast_object(writable_cache(cache_dirs(config, root)) if dist_info.is_main else None)
    # prepare decoded and verified every file of a prepared set: nothing to scan. Otherwise the
    # ranks share the decoding of what rank 0's cache does not know.
    scanned = [] if train.prepared and val.prepared else scan_images(
        sorted({*train.files, *val.files}), placement, dist_info=dist_info, announce=True,
        cache_path=cache_dir / CACHE_NAME if cache_dir else None)
    undecodable = {problem.path: problem.reason for problem in scanned}
    if undecodable and not config.skip_bad:
        raise DataError([Problem(path, reason) for path, reason in sorted(undecodable.items())],
                        f"{len(undecodable)} image(s) cannot be decoded and would stop training mid-epoch; fix or "
                        "remove them, or pass --skip-bad to train without them")
    bad = {**not_images, **undecodable}
    if bad:
        train, val = train.without(set(undecodable)), val.without(set(undecodable))
        if dist_info.is_main:
            out = Path(config.out)
            out.mkdir(parents=True, exist_ok=True)
            write_json(bad, out / EXCLUDED_FILE, indent=2, sort_keys=True)
            left_out = [f"{len(undecodable)} undecodable image(s)" if undecodable else "",
                        f"{len(not_images)} file(s) that are not images" if not_images else ""]
            logger.warning(f"--skip-bad left out {' and '.join(filter(None, left_out))}, listed in "
                           f"{out / EXCLUDED_FILE}")
        if not len(train) or not len(val):
            raise DataError(f"no decodable images left in split {'train' if not len(train) else val.name!r}")
        emptied = sorted(set(splits["train"].labels) - set(train.labels))
        if emptied:  # the network would keep an output that no image ever trains
            names = ", ".join(repr(train.classes[i]) for i in emptied)
            raise DataError(f"--skip-bad left class(es) {names} without a training image: every one of their "
                            f"images is undecodable (listed in {Path(config.out) / EXCLUDED_FILE}); fix or "
                            "replace them, or remove the class")
        check_batch_fits(train, config, dist_info.world_size)
    pca = training_pca(train, config, dist_info, placement, cache_dir)
    return TrainingData(train, val, pca, bad, cache_dir / CACHE_NAME if cache_dir else None)


def check_batch_fits(train: Split, config: TrainConfig, world_size: int) -> None:
    """ConfigError where a process's batch is larger than its shard of the training split: DALI
    would fill each step with repeats of the shard's last image (1000 at batch 1000 on 30 images),
    at the lr of the whole batch."""
    per_process = batch_plan(config, world_size)[0]
    shard = len(train) // world_size  # the smallest shard (DALI's reader cuts at len x rank // world)
    if per_process > shard:
        share = f", {per_process} a process, more than its share of {shard}" if world_size > 1 else ""
        largest = shard if config.per_gpu_batch else shard * world_size
        raise ConfigError(f"batch_size {config.batch_size}{share} is larger than the training split "
                          f"({len(train)} images): the largest batch that fits is {largest}")


def training_pca(train: Split, config: TrainConfig, dist_info: DistInfo, placement: Placement,
                 cache_dir: Path | None) -> PCA:
    """The cached PCA if rank 0 has one (all ranks then use it), else computed by all ranks."""
    files = sample_files(train.files, config.pca_images, config.seed)
    path = cache_dir / pca_cache_name(files) if cache_dir else None
    pca = load_pca(path) if dist_info.is_main and path else None
    pca = distributed.broadcast_object(pca)
    if pca is not None:
        return pca
    if dist_info.is_main:
        logger.info(f"computing the RGB PCA over {len(files)} training images (cached for later runs)")
    # a batch of at most MAX_SCAN_PIXELS pixels, as the scan's: a folder of huge photos stays in bounded memory
    # (a prepared set's images are all 256×256: no header to read)
    batch_size = 64 if train.prepared else pixel_bounded_batch(files, 64)
    try:
        pca = compute_pca(files, placement, batch_size=batch_size, rank=dist_info.rank, world_size=dist_info.world_size,
                          all_reduce=all_reduce_int64(placement), prepared=train.prepared)
    except RuntimeError as e:  # a file changed since the scan (deleted, rewritten): name it
        if not is_pipeline_error(e):
            raise
        raise data_changed_error(e, files[dist_info.rank::dist_info.world_size], placement,
                                 where="the RGB PCA pass stopped", advice=FIX_AND_RERUN,
                                 cache_path=cache_dir / CACHE_NAME if cache_dir else None, log=logger.info) from None
    if dist_info.is_main and path:
        save_pca(pca, path)
    return pca


def all_reduce_int64(placement: Placement):
    def reduce(values: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(values.astype(np.int64)).to(placement.device)
        return distributed.all_reduce_sum(tensor).cpu().numpy()

    return reduce
