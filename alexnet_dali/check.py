"""`alexnet-dali check DATA`: is every image labelled, does every image decode? Every problem
is listed (path and reason) rather than the first one raised."""

from __future__ import annotations

from pathlib import Path

from .data import DataError, Problem, images_root, index_dataset, split_folder
from .scan import scan_images


def present_splits(data: str | Path) -> list[str]:
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_dataset(data, labels=None, label_encoding=None, *, splits: list[str] | None = None, threads: int = 0) -> dict:
    """{"ok": bool, "images": {split: count}, "classes": [class labels], "problems": [{"path", "reason"}]}"""
    # Without a label JSON the splits may be ImageNet's, kept under ILSVRC/Data/CLS-LOC.
    root = images_root(data) if labels is None else Path(data)
    names = splits or present_splits(root)
    if not names:
        raise DataError(f"{data} has no split folders (expected train/, val/, ...)")
    problems: list[Problem] = []
    images: dict[str, int] = {}
    indexed = {}
    for name in names:
        split_folder(root, name)  # a missing split is a usage error, raised as such
        try:
            indexed[name] = index_dataset(data, labels, label_encoding, splits=(name,))[name]
        except DataError as e:
            problems += e.problems
            continue
    if len(indexed) > 1 and labels is None:
        try:
            from .data import check_same_classes

            check_same_classes(indexed)
        except DataError as e:
            problems += e.problems
    for name, split in indexed.items():
        images[name] = len(split)
        problems += scan_images(split.files, num_threads=threads)
    first = next(iter(indexed.values()), None)
    return {
        "ok": not problems,
        "images": images,
        "classes": [first.class_label(i) for i in range(len(first.classes))] if first else [],
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
    }
