"""`alexnet-dali check DATA`: is every image labelled, does every image decode? Every problem
is listed (path and reason) rather than the first one raised."""

from __future__ import annotations

from .data import check_root, images_root, index_splits
from .errors import DataError, Problem
from .scan import CACHE_NAME, scan_images
from .sources import join, open_source

TRAINING_SPLITS = ("train", "val")


def present_splits(tree, root: str) -> list[str]:
    return [name for name in tree.entries(root)[1] if not name.startswith(".")]


def image_files(tree, folder: str) -> list[str]:
    """Every image file under a split folder (class folders included), hidden entries skipped."""
    return sorted(tree.location(rel) for rel in tree.image_paths(folder))


def check_dataset(data, labels, label_encoding, placement, *, splits: list[str] | None = None,
                  cache: bool = True, rescan: bool = False) -> dict:
    """{"ok": bool, "images": {split: count}, "classes": [class labels], "problems": [{"path", "reason"}]}
    A local data set's decode results are cached where train looks first (DATA/.alexnet-dali),
    so a train after a check decodes nothing again. `rescan` decodes every image again, whatever
    the cache says, and caches the new verdicts."""
    tree = open_source(data)
    check_root(tree)
    # Without a label JSON the splits may be ImageNet's, kept under ILSVRC/Data/CLS-LOC.
    root = images_root(tree) if labels is None else ""
    names = splits or present_splits(tree, root)
    if not names:
        raise DataError(f"{tree.name(root)} has no split folders (expected train/, val/, ...)")
    for name in splits or ():  # a split asked for by name but absent is a usage error
        if not tree.is_dir(join(root, name)):
            raise DataError(f"missing split {name!r}: {tree.name(join(root, name))} does not exist")
    problems: list[Problem] = []
    if splits is None:  # what training needs, even when the folder is not there
        problems += [Problem(tree.name(join(root, name)), f"missing split {name!r}: training needs "
                                                         f"{tree.name(join(root, 'train'))} and {tree.name(join(root, 'val'))}")
                     for name in TRAINING_SPLITS if name not in names]
    indexed, found = index_splits(tree, labels, label_encoding, splits=tuple(names))
    problems += found
    images: dict[str, int] = {}
    shared = tree.cache_folder() if cache else None  # never in a bucket
    cache_path = shared / CACHE_NAME if shared else None
    for name in names:
        # decode every image file of the split, labelled or not: a label problem hides no decode problem
        files = image_files(tree, join(root, name))
        images[name] = len(files)
        problems += scan_images(files, placement, cache_path=cache_path, rescan=rescan)
    first = next(iter(indexed.values()), None)
    return {
        "ok": not problems,
        "images": images,
        "classes": [first.class_label(i) for i in range(len(first.classes))] if first else [],
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
    }
