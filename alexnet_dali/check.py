"""`alexnet-dali check DATA`: is every image labelled, does every image decode? Every problem
is listed (path and reason) rather than the first one raised."""

from __future__ import annotations

from pathlib import Path

from .data import DataError, Problem, check_same_classes, images_root, index_dataset, is_image_name, split_folder
from .scan import CACHE_NAME, data_cache_dir, scan_images

TRAINING_SPLITS = ("train", "val")


def present_splits(data: str | Path) -> list[str]:
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Every image file under a split folder (class folders included), hidden entries skipped."""
    return sorted(str(p.resolve()) for p in folder.rglob("*")
                  if p.is_file() and is_image_name(p.name) and not any(part.startswith(".") for part in
                                                                        p.relative_to(folder).parts))


def check_dataset(data, labels=None, label_encoding=None, *, splits: list[str] | None = None, threads: int = 0,
                  cache: bool = True) -> dict:
    """{"ok": bool, "images": {split: count}, "classes": [class labels], "problems": [{"path", "reason"}]}
    The decode results are cached where train looks first (DATA/.alexnet-dali), so a train
    after a check decodes nothing again."""
    # Without a label JSON the splits may be ImageNet's, kept under ILSVRC/Data/CLS-LOC.
    root = images_root(data) if labels is None else Path(data)
    names = splits or present_splits(root)
    if not names:
        raise DataError(f"{data} has no split folders (expected train/, val/, ...)")
    problems: list[Problem] = []
    if splits is None:  # what training needs, even when the folder is not there
        problems += [Problem(str(root / name), f"missing split {name!r}: training needs {root}/train and {root}/val")
                     for name in TRAINING_SPLITS if name not in names]
    images: dict[str, int] = {}
    indexed = {}
    for name in names:
        split_folder(root, name)  # a split asked for by name but absent is a usage error, raised as such
        try:
            indexed[name] = index_dataset(data, labels, label_encoding, splits=(name,))[name]
        except DataError as e:
            problems += e.problems
    if len(indexed) > 1 and labels is None:
        try:
            check_same_classes(indexed)
        except DataError as e:
            problems += e.problems
    for name in names:
        # decode every image file of the split, labelled or not: a label problem hides no decode problem
        files = image_files(root / name)
        images[name] = len(files)
        problems += scan_images(files, num_threads=threads, cache_path=data_cache_dir(data) / CACHE_NAME if cache else None)
    first = next(iter(indexed.values()), None)
    return {
        "ok": not problems,
        "images": images,
        "classes": [first.class_label(i) for i in range(len(first.classes))] if first else [],
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
    }
