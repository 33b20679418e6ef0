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
from .s3 import is_s3_url
from .scan import (CACHE_NAME, ScanCache, ScanInterrupted, data_cache_dir, decode_check, pixel_bounded_batch,
                   save_scanned)

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
    """Caches (PCA, scan results) live next to the data so runs share them, or in the run
    directory where the data folder is read-only. Never in a bucket: s3:// data keeps them in
    --cache-dir (one folder per data set) or the run directory."""
    if is_s3_url(data_root):
        from .remote import cache_folder_name

        shared = [Path(config.cache_dir).expanduser() / cache_folder_name(data_root)] if config.cache_dir else []
        return shared + [Path(config.out) / "cache"]
    return [data_cache_dir(data_root), Path(config.out) / "cache"]


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
    from .remote import local_copy

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


def scan_splits(splits: list[Split], dist_info: DistInfo, placement: Placement, cache_dir: Path | None) -> dict[str, str]:
    """path -> reason for every image that cannot be decoded. Rank 0 holds the cache; the ranks
    share the decoding of what it does not know."""
    files = sorted({f for s in splits for f in s.files})
    cache = ScanCache(cache_dir / CACHE_NAME if cache_dir else None) if dist_info.is_main else None
    known, todo = cache.split(files) if cache else ({}, [])
    known, todo = distributed.broadcast_object((known, todo))
    if todo and dist_info.is_main:
        logger.info(f"checking that {len(todo)} images decode ({len(files) - len(todo)} known from the cache)")
    mine = todo[dist_info.rank::dist_info.world_size]
    try:
        results = decode_check(mine, placement) if mine else {}
    except ScanInterrupted as stop:  # Ctrl-C: keep what this process checked (rank 0 holds the cache)
        if cache is not None:
            save_scanned(cache, stop.results, len(todo))
        raise ScanInterrupted(stop.results, len(todo)) from None
    merged: dict[str, str | None] = {}
    for part in distributed.gather_objects(results):
        merged.update(part)
    if cache is not None and merged:
        save_scanned(cache, merged, len(todo))
    return {**known, **{path: reason for path, reason in merged.items() if reason}}


def load_training_data(config: TrainConfig, dist_info: DistInfo, placement: Placement) -> TrainingData:
    for option, value in (("--out", config.out), ("--cache-dir", config.cache_dir)):
        if is_s3_url(value):  # Path() would quietly make a local folder named "s3:"
            raise ConfigError(f"{option} {value} is in a bucket: checkpoints, logs and caches need a local or shared "
                              "file system path (the data may stay in the bucket)")
    splits, root, not_images = index(config, dist_info)
    train, val = splits["train"], splits[config.val_split]
    cache_dir = distributed.broadcast_object(writable_cache(cache_dirs(config, root)) if dist_info.is_main else None)
    undecodable = scan_splits([train, val], dist_info, placement, cache_dir)
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
    pca = training_pca(train, config, dist_info, placement, cache_dir)
    return TrainingData(train, val, pca, bad, cache_dir / CACHE_NAME if cache_dir else None)


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
    try:
        pca = compute_pca(files, placement, batch_size=pixel_bounded_batch(files, 64), rank=dist_info.rank,
                          world_size=dist_info.world_size, all_reduce=all_reduce_int64(placement))
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
