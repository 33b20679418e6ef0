"""Where the images are and what they are labelled: data location + label files -> Split.

No DALI here. DALI's own file reader, given a root, labels sub-folders by sorted index, counts
empty folders, does not recurse and silently skips files it does not know; so we never let it
discover files. This module builds the file and label lists, checks them, and the pipelines get
`files=` / `labels=`.

Layouts (see README):
1. the original project's: DATA/<split>/ holds image files; a JSON maps image id -> label, an
   optional second JSON maps label -> index (labels.py).
2. class folders: DATA/<split>/<class>/<image>; classes sorted by name unless an encoding JSON
   maps folder name -> index. ImageNet (imagenet.py) is this layout but for its validation split:
   one flat folder whose ground truth is LOC_val_solution.csv (in DATA or in the folder). The
   download's own tree, DATA/ILSVRC/Data/CLS-LOC/{train,val}, is read where it lies.

The data set is read through a source (sources.py), so the same code indexes a local folder or
a bucket. Every problem found is collected: `index_splits` returns them beside the splits (check
reports them), `index_dataset` raises them together in one DataError (training refuses them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from .errors import DataError, Problem
from .imagenet import IMAGENET_TREE, SYNSET_MAPPING, parse_solution_csv, parse_synset_mapping, solution_name
from .labels import (class_label, classes_from_encoding, encoding_from_labels, image_id, parse_label_encoding,
                     parse_labels)
from .log import logger
from .sources import join, open_source, read_label_text

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pnm", ".ppm", ".pgm"}
)
MANIFEST = "files.txt"  # names a split's files where a web server gives no listing (see remote.py)


@dataclass(frozen=True)
class Split:
    """One split of a data set: parallel lists of image files and integer labels."""

    name: str
    files: tuple[str, ...]  # what DALI reads (absolute paths), sorted
    labels: tuple[int, ...]  # class index of each file
    classes: tuple[str, ...]  # class index -> class name (the folder name, the label, the synset id)
    class_names: tuple[str, ...] = ()  # class index -> human-readable name where the data gives one, else ""
    prepared: bool = False  # the files are `alexnet-dali prepare`'s 256×256 squares (pipelines crop, no resize)

    def __len__(self) -> int:
        return len(self.files)

    def without(self, excluded: set[str]) -> Split:
        """This split minus the given files (used by --skip-bad)."""
        kept = [(f, y) for f, y in zip(self.files, self.labels) if f not in excluded]
        return replace(self, files=tuple(f for f, _ in kept), labels=tuple(y for _, y in kept))

    def class_label(self, index: int) -> str:
        return class_label(self.classes, self.class_names, index)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_metadata_name(name: str) -> bool:
    """Files a layout keeps beside its images: a files.txt manifest, ImageNet's LOC_* files."""
    return name == MANIFEST or re.fullmatch(r"LOC_\w+\.(csv|txt)", name) is not None


# -- Listing ---------------------------------------------------------------------------------

# Files that operating systems and data sets keep beside images, never images themselves: left
# out of the index without a word, as hidden entries (.DS_Store, macOS's ._foo) are. Any other
# file that is not an image is a SkippableProblem.
IGNORED_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})  # compared in lower case
IGNORED_PREFIXES = ("readme", "license", "licence", "copying")  # README.md, LICENSE.txt, ...
IGNORED_EXTENSIONS = frozenset({".txt", ".md"})  # notes


def is_ignored_file_name(name: str) -> bool:
    """A file left out of the index silently (an image file name never is, unless hidden)."""
    if name.startswith("."):
        return True
    lower = name.lower()
    return not is_image_name(name) and (lower in IGNORED_NAMES or lower.startswith(IGNORED_PREFIXES)
                                        or os.path.splitext(lower)[1] in IGNORED_EXTENSIONS)


class SkippableProblem(Problem):
    """A file beside the images that is not one: train --skip-bad leaves it out (and lists it in
    excluded.json, like an undecodable image) instead of refusing to start."""


def list_dir(tree, folder: str) -> tuple[list[str], list[str], list[Problem]]:
    """Image files and sub-folders of one folder (paths relative to the tree); any other file is
    a problem. Hidden entries, the layouts' metadata files and the IGNORED_* files are ignored."""
    names, folders = tree.entries(folder)
    images, problems = [], []
    for name in names:
        if is_ignored_file_name(name) or is_metadata_name(name):
            continue
        if is_image_name(name):
            images.append(join(folder, name))
        else:
            problems.append(SkippableProblem(tree.name(join(folder, name)), "not an image file name (extension "
                                             f"{os.path.splitext(name)[1] or 'none'!r}; --skip-bad leaves it out)"))
    return images, [join(folder, f) for f in folders if not f.startswith(".")], problems


def check_root(tree) -> None:
    if not tree.is_dir():
        raise DataError(f"data folder {tree.name()} does not exist" if not tree.exists() else
                        f"{tree.name()} is not a folder")


def missing_split(tree, root: str, split: str) -> Problem:
    _, present = tree.entries(root)
    present = [p for p in present if not p.startswith(".")]
    return Problem(tree.name(join(root, split)),
                   f"missing split {split!r}: the folder does not exist (folders in {tree.name(root)}: "
                   f"{', '.join(present) or 'none'})")


def finished_split(tree, split: str, folder: str, files: list[str], targets: list[int], problems: list[Problem],
                   encoding: dict[str, int], empty_means: str = "no image files") -> tuple[Split | None, list[Problem]]:
    if not files and not problems:
        problems = [Problem(tree.name(folder), f"split {split!r} is empty: {empty_means} in it")]
    split_value = Split(split, tuple(tree.location(f) for f in files), tuple(targets), classes_from_encoding(encoding))
    return (split_value if files else None), problems


# -- Layout 1: a flat folder labelled by the image-id JSON -------------------------------------

def index_labelled_split(tree, split: str, labels: dict[str, str], encoding: dict[str, int], labels_name: str):
    images, folders, problems = list_dir(tree, split)
    problems += [Problem(tree.name(f), "nested folder in a split of the original layout (images must lie directly "
                                       f"in {tree.name(split)})") for f in folders]
    files, targets, seen_ids = [], [], {}
    for image in images:
        name = os.path.basename(image)
        key, stem = image_id(name, labels), os.path.splitext(name)[0]
        if key is None:
            problems.append(Problem(tree.name(image), f"unlabelled: neither {name!r} nor {stem!r} is in {labels_name}"))
            continue
        if key == name and stem in labels and labels[stem] != labels[name]:  # which one is meant?
            problems.append(Problem(tree.name(image), f"labelled twice in {labels_name}: {name!r} as "
                                                      f"{labels[name]!r} and {stem!r} as {labels[stem]!r}"))
            continue
        if key in seen_ids:
            problems.append(Problem(tree.name(image), f"duplicate image id {key!r}: also {tree.name(seen_ids[key])}"))
            continue
        seen_ids[key] = image
        if labels[key] not in encoding:
            problems.append(Problem(tree.name(image), f"label {labels[key]!r} is not in the label encoding"))
            continue
        files.append(image)
        targets.append(encoding[labels[key]])
    return finished_split(tree, split, split, files, targets, problems, encoding)


# -- Layout 2: one folder per class --------------------------------------------------------------

def has_class_folders(tree, folder: str) -> bool:
    return tree.is_dir(folder) and any(not f.startswith(".") for f in tree.entries(folder)[1])


def folder_encoding(tree, folder: str) -> dict[str, int]:
    """Class folder names of one split (the training split), sorted, -> index."""
    _, class_dirs, _ = list_dir(tree, folder)
    return {os.path.basename(d): i for i, d in enumerate(sorted(class_dirs))}


def index_class_folders(tree, folder: str, split: str, encoding: dict[str, int], origin: str):
    loose, class_dirs, problems = list_dir(tree, folder)
    if loose and not class_dirs:
        problems = [Problem(tree.name(folder),
                            "holds image files but no class folders and no label JSON was given: pass --labels "
                            "(and --label-encoding) for the original layout, sort the images into DATA/<split>/<class>/, "
                            f"or (ImageNet) put its {solution_name(split)} beside the split folder")]
        return None, problems
    problems += [Problem(tree.name(f), "image file beside the class folders (it has no class)") for f in loose]
    files, targets = [], []
    for class_dir in class_dirs:
        name = os.path.basename(class_dir)
        if name not in encoding:
            problems.append(Problem(tree.name(class_dir), f"class folder {name!r} is not in {origin}"))
            continue
        images, nested, bad = list_dir(tree, class_dir)
        problems += bad
        problems += [Problem(tree.name(n), "nested folder inside a class folder (not read; move its images up)")
                     for n in nested]
        if not images and not nested:  # a problem of its own: --skip-bad passes the stray files, not this
            problems.append(Problem(tree.name(class_dir), "class folder with no images, only files that are not "
                                                          "images" if bad else "empty class folder"))
        files += images
        targets += [encoding[name]] * len(images)
    return finished_split(tree, split, folder, files, targets, problems, encoding, "no class folders with images")


# -- ImageNet's val: a flat folder labelled by the solution CSV ------------------------------

def first_file(tree, *candidates: str) -> str | None:
    """The first candidate path that is a file in the tree."""
    return next((rel for rel in dict.fromkeys(candidates) if tree.is_file(rel)), None)


def index_solution_split(tree, folder: str, split: str, csv_rel: str, encoding: dict[str, int], origin: str):
    csv_name = tree.name(csv_rel)
    if not encoding:
        raise DataError(f"{tree.name(folder)} is labelled by {csv_name}, but no class folders define the classes: "
                        "put the training split's class folders beside it or pass --label-encoding")
    try:
        solution = parse_solution_csv(tree.read_text(csv_rel), csv_name)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"ImageNet solution file {csv_name} cannot be read: {e}") from None
    images, _, problems = list_dir(tree, folder)
    files, targets, used = [], [], set()
    for image in images:
        key = image_id(os.path.basename(image), solution)
        if key is None:
            problems.append(Problem(tree.name(image), f"not in {csv_name}: the image has no ground truth"))
            continue
        synset, line = solution[key]
        if synset not in encoding:
            problems.append(Problem(tree.name(image), f"its synset {synset!r} ({os.path.basename(csv_rel)} line {line}) "
                                                      f"is not in {origin}"))
            continue
        used.add(key)
        files.append(image)
        targets.append(encoding[synset])
    absent = sorted(set(solution) - used)
    if absent and not problems:  # a subset of val is legitimate, but say so: it changes the accuracy one reports
        logger.warning(f"{csv_name} lists {len(absent)} image(s) that are not in {tree.name(folder)} "
                       f"(first: {', '.join(absent[:3])})")
    return finished_split(tree, split, folder, files, targets, problems, encoding)


def images_root(tree) -> str:
    """"" (DATA itself), or ILSVRC/Data/CLS-LOC where the ILSVRC-2012 download was unpacked as it is."""
    return IMAGENET_TREE if not tree.is_dir("train") and tree.is_dir(IMAGENET_TREE) else ""


def class_names_for(tree, root: str, classes: tuple[str, ...]) -> tuple[str, ...]:
    """Human-readable names from LOC_synset_mapping.txt (in DATA or the images' root), or ()."""
    rel = first_file(tree, SYNSET_MAPPING, join(root, SYNSET_MAPPING))
    if rel is None:
        return ()
    try:
        names = parse_synset_mapping(tree.read_text(rel), tree.name(rel))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"synset mapping {tree.name(rel)} cannot be read: {e}") from None
    return tuple(names.get(c, "") for c in classes)


# -- The data set -------------------------------------------------------------------------------

def index_splits(data, labels_path=None, encoding_path=None,
                 splits: tuple[str, ...] = ("train", "val")) -> tuple[dict[str, Split], list[Problem]]:
    """The named splits of a data set, and every problem found in them. A split with problems
    holds its good files; a split that is missing or empty is left out. What no split can get
    past (no data folder, an unreadable label file) raises DataError at once."""
    tree = open_source(data)
    check_root(tree)
    result, problems = _index_splits(tree, labels_path, encoding_path, splits)
    from .prepare import prepared_manifest

    if prepared_manifest(tree) is not None:  # a prepared set is known by its manifest
        result = {name: replace(split, prepared=True) for name, split in result.items()}
    return result, problems


def _index_splits(tree, labels_path, encoding_path, splits: tuple[str, ...]):
    encoding = parse_label_encoding(*read_label_text(encoding_path, "label encoding")) if encoding_path else None
    result: dict[str, Split] = {}
    problems: list[Problem] = []
    if labels_path is not None:
        labels = parse_labels(*read_label_text(labels_path, "labels"))
        encoding = encoding or encoding_from_labels(labels)
        for split in splits:
            if not tree.is_dir(split):
                problems.append(missing_split(tree, "", split))
                continue
            indexed, found = index_labelled_split(tree, split, labels, encoding, os.fspath(labels_path))
            problems += found
            if indexed is not None:
                result[split] = indexed
        return result, problems

    root = images_root(tree)
    origin = "the label encoding"
    if encoding is None:  # every split uses the training split's folders, so indices agree
        # the first split asked for, unless it is a flat folder (ImageNet's val) beside train's classes
        flat_first = not has_class_folders(tree, join(root, splits[0]))
        source = "train" if flat_first and has_class_folders(tree, join(root, "train")) else splits[0]
        encoding, origin = folder_encoding(tree, join(root, source)), f"the class folders of split {source!r}"
    clean = {}
    for split in splits:
        folder = join(root, split)
        if not tree.is_dir(folder):
            problems.append(missing_split(tree, root, split))
            continue
        name = solution_name(split)
        csv_rel = first_file(tree, name, join(root, name), join(folder, name))
        if csv_rel is not None and not has_class_folders(tree, folder):
            indexed, found = index_solution_split(tree, folder, split, csv_rel, encoding, origin)
        else:
            indexed, found = index_class_folders(tree, folder, split, encoding, origin)
        problems += found
        if indexed is not None:
            result[split] = indexed
            if not found:
                clean[split] = indexed
    problems += same_classes_problems(clean)
    names = class_names_for(tree, root, classes_from_encoding(encoding))
    if names:
        result = {s: replace(split, class_names=names) for s, split in result.items()}
    return result, problems


def index_dataset(data, labels_path=None, encoding_path=None,
                  splits: tuple[str, ...] = ("train", "val")) -> dict[str, Split]:
    """The named splits of a data set; DataError naming every problem if there is any."""
    result, problems = index_splits(data, labels_path, encoding_path, splits)
    if problems:
        raise DataError(problems, "problems in the data set")
    return result


def same_classes_problems(splits: dict[str, Split]) -> list[Problem]:
    """Every split must hold the same classes: a validation class never trained on, or a trained
    class never validated, is almost always a mistake in the folder tree."""
    names = list(splits)
    if len(names) < 2:
        return []
    reference = splits[names[0]]
    present = {name: {s.classes[y] for y in set(s.labels)} for name, s in splits.items()}
    problems = []
    for name in names[1:]:
        if present[name] != present[reference.name]:
            only_ref = sorted(present[reference.name] - present[name])
            only_other = sorted(present[name] - present[reference.name])
            problems.append(Problem("", f"splits {reference.name!r} and {name!r} have different classes: only in "
                                        f"{reference.name}: {only_ref or 'none'}; only in {name}: {only_other or 'none'}"))
    return problems
