"""Where the images are and what they are labelled: data location + label files -> Split.

No DALI here. DALI's own file reader, given a root, labels sub-folders by sorted index, counts
empty folders, does not recurse and silently skips files it does not know; so we never let it
discover files. This module builds the file and label lists, checks them, and the pipelines get
`files=` / `labels=`.

Layouts (see README):
1. the original project's: DATA/<split>/ holds image files; a JSON maps image id -> label
   ({"img_1": "cat"}), an optional second JSON maps label -> index ({"cat": 0}). An image id is
   the file name with or without its extension.
2. class folders: DATA/<split>/<class>/<image>; classes sorted by name unless an encoding JSON
   maps folder name -> index.
   ImageNet (ILSVRC-2012) as distributed is this layout but for its validation split: one flat
   folder whose ground truth is LOC_val_solution.csv (in DATA or in the folder). The download's
   own tree, DATA/ILSVRC/Data/CLS-LOC/{train,val}, is read where it lies, and LOC_synset_mapping.txt
   (in DATA) gives the classes human-readable names.

Every problem found is collected and reported together in one DataError, each line naming the
file or label and what is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pnm", ".ppm", ".pgm"}
)
MAX_LISTED = 20  # problems listed in an error message before "... and N more"
MANIFEST = "files.txt"  # names a split's files where a web server gives no listing (see remote.py)
IMAGENET_TREE = ("ILSVRC", "Data", "CLS-LOC")  # where the ILSVRC-2012 download keeps train/ and val/
SYNSET_MAPPING = "LOC_synset_mapping.txt"  # ImageNet: "n01440764 tench, Tinca tinca" per line


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DataError(ValueError):
    """Bad input, with every problem found (each names a file or label and what is wrong)."""

    def __init__(self, problems: list[Problem] | str, summary: str = "problems with the data"):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        lines = [str(p).lstrip(": ") for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"... and {len(self.problems) - MAX_LISTED} more")
        if len(self.problems) == 1:
            message = lines[0]
        else:
            message = f"{summary} ({len(self.problems)}):\n  " + "\n  ".join(lines)
        super().__init__(message)


@dataclass(frozen=True)
class Split:
    """One split of a data set: parallel lists of image files and integer labels."""

    name: str
    files: tuple[str, ...]  # absolute paths, sorted
    labels: tuple[int, ...]  # class index of each file
    classes: tuple[str, ...]  # class index -> class name (the folder name, the label, the synset id)
    class_names: tuple[str, ...] = ()  # class index -> human-readable name where the data gives one, else ""

    def __len__(self) -> int:
        return len(self.files)

    def without(self, excluded: set[str]) -> Split:
        """This split minus the given files (used by --skip-bad)."""
        kept = [(f, y) for f, y in zip(self.files, self.labels) if f not in excluded]
        return Split(self.name, tuple(f for f, _ in kept), tuple(y for _, y in kept), self.classes, self.class_names)

    def class_label(self, index: int) -> str:
        """What to show a person: "n01440764 tench, Tinca tinca" where a name is known, else the class."""
        name = self.class_names[index] if self.class_names else ""
        return f"{self.classes[index]} {name}" if name else self.classes[index]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_metadata_name(name: str) -> bool:
    """Files a layout keeps beside its images: a files.txt manifest, ImageNet's LOC_* files."""
    return name == MANIFEST or re.fullmatch(r"LOC_\w+\.(csv|txt)", name) is not None


def write_json(value, path: str | os.PathLike, **dump_options) -> None:
    """Write JSON atomically: a temporary file renamed over the name, so a reader (or a crash)
    never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, **dump_options))
    os.replace(tmp, path)


def load_json(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON object, with errors that name the file and the place it went wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {path} cannot be read: {e}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} file {path} is malformed JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} file {path} must hold a JSON object, not {type(value).__name__}")
    return value


def read_label_encoding(path: str | os.PathLike) -> dict[str, int]:
    """label -> index, checked: integer indices, each used once, covering 0 .. K-1."""
    raw = load_json(path, "label encoding")
    if not raw:
        raise DataError(f"label encoding file {path} is empty")
    problems = [
        Problem(str(path), f"label {label!r} has index {index!r}, which is not an integer")
        for label, index in raw.items()
        if not isinstance(index, int) or isinstance(index, bool)
    ]
    if problems:
        raise DataError(problems, "bad label encoding")
    by_index: dict[int, list[str]] = {}
    for label, index in raw.items():
        by_index.setdefault(index, []).append(label)
    for index, names in sorted(by_index.items()):
        if len(names) > 1:
            problems.append(Problem(str(path), f"index {index} is given to several labels: {', '.join(map(repr, names))}"))
    expected = set(range(len(raw)))
    if set(by_index) != expected:
        out_of_range = sorted(set(by_index) - expected)
        missing = sorted(expected - set(by_index))
        problems.append(Problem(
            str(path),
            f"indices must be 0..{len(raw) - 1}, one per label; out of range: {out_of_range or 'none'}, "
            f"unused: {missing or 'none'}",
        ))
    if problems:
        raise DataError(problems, "bad label encoding")
    return dict(raw)


def classes_from_encoding(encoding: dict[str, int]) -> tuple[str, ...]:
    return tuple(label for label, _ in sorted(encoding.items(), key=lambda item: item[1]))


def _label_sort_key(label: str):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


# Files that operating systems and data sets keep beside images, never images themselves: left
# out of the index without a word. Hidden entries (.DS_Store, macOS's ._foo, .directory) are
# ignored as well. Any other file that is not an image is a problem, which --skip-bad passes.
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
    """A file the index cannot use that --skip-bad may leave out (recorded like an undecodable
    image): a non-image file, a broken link."""


# Where list_dir puts skippable problems instead of reporting them; set by leaving_out_skippable().
_skipped: ContextVar[list[Problem] | None] = ContextVar("skipped", default=None)


@contextmanager
def leaving_out_skippable():
    """Index without the files that --skip-bad may leave out; yields the list of them."""
    skipped: list[Problem] = []
    token = _skipped.set(skipped)
    try:
        yield skipped
    finally:
        _skipped.reset(token)


def list_dir(folder: Path) -> tuple[list[Path], list[Path], list[Problem]]:
    """Image files and sub-folders of one folder; anything else is a problem. Hidden entries,
    the layouts' metadata files and the IGNORED_* files are ignored."""
    images, folders, problems = [], [], []
    skipped = _skipped.get()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            folders.append(entry)
            continue
        if is_ignored_file_name(entry.name) or is_metadata_name(entry.name):
            continue
        if entry.is_symlink() and not entry.exists():  # named as the data set holds it, not by its target
            problem = SkippableProblem(str(entry), f"broken symbolic link: its target {os.readlink(entry)} does "
                                                   "not exist (--skip-bad leaves it out)")
        elif is_image_name(entry.name):
            images.append(entry)
            continue
        else:
            problem = SkippableProblem(str(entry), f"not an image file name (extension {entry.suffix or 'none'!r}; "
                                                   "--skip-bad leaves it out)")
        (skipped if skipped is not None else problems).append(problem)
    return images, folders, problems


def split_folder(data: str | os.PathLike, split: str) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    folder = root / split
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            f"missing split {split!r}: {folder} does not exist (folders in {root}: {', '.join(present) or 'none'})"
        )
    return folder


def finished_split(split: str, folder: Path, files: list[str], targets: list[int], problems: list[Problem],
                   encoding: dict[str, int], empty_means: str = "no image files") -> Split:
    """The Split, or one DataError with every problem found (or saying that the split is empty)."""
    if problems:
        raise DataError(problems, f"problems in split {split!r}")
    if not files:
        raise DataError(f"split {split!r} is empty: {empty_means} in {folder}")
    return Split(split, tuple(files), tuple(targets), classes_from_encoding(encoding))


def index_labelled_split(data, split: str, labels: dict[str, object], encoding: dict[str, int], labels_path: str) -> Split:
    """Layout 1: a flat folder of images labelled by the image-id JSON."""
    folder = split_folder(data, split)
    images, folders, problems = list_dir(folder)
    problems += [Problem(str(f), "nested folder in a split of the original layout (images must lie directly in "
                                 f"{folder})") for f in folders]
    files, targets, seen_ids = [], [], {}
    for image in images:
        key = image.name if image.name in labels else image.stem if image.stem in labels else None
        if key is None:
            problems.append(Problem(str(image), f"unlabelled: neither {image.name!r} nor {image.stem!r} is in {labels_path}"))
            continue
        if key in seen_ids:
            problems.append(Problem(str(image), f"duplicate image id {key!r}: also {seen_ids[key]}"))
            continue
        seen_ids[key] = image
        label = str(labels[key])
        if label not in encoding:
            problems.append(Problem(str(image), f"label {label!r} is not in the label encoding"))
            continue
        files.append(str(image.resolve()))
        targets.append(encoding[label])
    return finished_split(split, folder, files, targets, problems, encoding)


def folder_encoding(data, split: str) -> dict[str, int]:
    """Class folder names of one split (the training split), sorted, -> index."""
    _, class_dirs, _ = list_dir(split_folder(data, split))
    return {d.name: i for i, d in enumerate(sorted(class_dirs, key=lambda d: d.name))}


def index_class_folders(data, split: str, encoding: dict[str, int], origin: str = "the label encoding") -> Split:
    """Layout 2: one folder per class, indexed by `encoding` (from a JSON or the training folders)."""
    folder = split_folder(data, split)
    loose, class_dirs, problems = list_dir(folder)
    if loose and not class_dirs:
        raise DataError(
            f"{folder} holds image files but no class folders and no label JSON was given: pass --labels "
            "(and --label-encoding) for the original layout, sort the images into DATA/<split>/<class>/, "
            f"or (ImageNet) put its LOC_{split}_solution.csv in {folder.parent}"
        )
    problems += [Problem(str(f), "image file beside the class folders (it has no class)") for f in loose]
    files, targets = [], []
    for class_dir in class_dirs:
        if class_dir.name not in encoding:
            problems.append(Problem(str(class_dir), f"class folder {class_dir.name!r} is not in {origin}"))
            continue
        images, nested, bad = list_dir(class_dir)
        problems += bad
        problems += [Problem(str(n), "nested folder inside a class folder (not read; move its images up)") for n in nested]
        if not images and not bad and not nested:
            problems.append(Problem(str(class_dir), "empty class folder"))
        files += [str(p.resolve()) for p in images]
        targets += [encoding[class_dir.name]] * len(images)
    return finished_split(split, folder, files, targets, problems, encoding, "no class folders with images")


def index_dataset(
    data: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    encoding_path: str | os.PathLike | None = None,
    splits: tuple[str, ...] = ("train", "val"),
) -> dict[str, Split]:
    """Index the named splits of a local data set. Raises DataError naming every problem."""
    encoding = read_label_encoding(encoding_path) if encoding_path else None
    if labels_path is not None:
        labels = load_json(labels_path, "labels")
        bad = [Problem(str(labels_path), f"image {key!r} has label {value!r}; labels must be strings or integers")
               for key, value in labels.items() if not isinstance(value, (str, int)) or isinstance(value, bool)]
        if bad:
            raise DataError(bad, "bad labels")
        if encoding is None:
            names = sorted({str(v) for v in labels.values()}, key=_label_sort_key)
            encoding = {name: i for i, name in enumerate(names)}
        result = {s: index_labelled_split(data, s, labels, encoding, str(labels_path)) for s in splits}
    else:
        root = images_root(data)
        origin = "the label encoding"
        if encoding is None:  # every split uses the training split's folders, so indices agree
            source = encoding_split(root, splits)
            encoding, origin = folder_encoding(root, source), f"the class folders of split {source!r}"
        result = {s: index_folder_split(data, root, s, encoding, origin) for s in splits}
        check_same_classes(result)
        names = read_synset_mapping(data, root)
        if names:
            class_names = tuple(names.get(c, "") for c in classes_from_encoding(encoding))
            result = {s: replace(split, class_names=class_names) for s, split in result.items()}
    return result


def check_same_classes(splits: dict[str, Split]) -> None:
    """Every split must hold the same classes: a validation class never trained on, or a trained
    class never validated, is almost always a mistake in the folder tree."""
    names = list(splits)
    reference = splits[names[0]]
    present = {name: {s.classes[y] for y in set(s.labels)} for name, s in splits.items()}
    for name in names[1:]:
        if present[name] != present[reference.name]:
            only_ref = sorted(present[reference.name] - present[name])
            only_other = sorted(present[name] - present[reference.name])
            raise DataError(
                f"splits {reference.name!r} and {name!r} have different classes: only in {reference.name}: "
                f"{only_ref or 'none'}; only in {name}: {only_other or 'none'}"
            )


# -- ImageNet as distributed ------------------------------------------------------------------

def images_root(data) -> Path:
    """DATA, or DATA/ILSVRC/Data/CLS-LOC where the ILSVRC-2012 download was unpacked as it is."""
    root = Path(data)
    tree = root.joinpath(*IMAGENET_TREE)
    return tree if not (root / "train").is_dir() and tree.is_dir() else root


def has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def encoding_split(root: Path, splits: tuple[str, ...]) -> str:
    """The split whose class folders define the classes: the first asked for, unless it is a flat
    folder (ImageNet's val) and the training split has class folders."""
    if not has_class_folders(root / splits[0]) and has_class_folders(root / "train"):
        return "train"
    return splits[0]


def solution_csv(data, root: Path, split: str) -> Path | None:
    """ImageNet's LOC_<split>_solution.csv, in DATA, the images' root or the split folder."""
    name = f"LOC_{split}_solution.csv"
    for candidate in dict.fromkeys([Path(data) / name, root / name, root / split / name]):
        if candidate.is_file():
            return candidate
    return None


def index_folder_split(data, root: Path, split: str, encoding: dict[str, int], origin: str) -> Split:
    """A split of layout 2, or a flat folder with ImageNet's solution CSV."""
    folder = split_folder(root, split)
    csv_path = solution_csv(data, root, split)
    if csv_path is not None and not has_class_folders(folder):
        return index_solution_split(folder, split, csv_path, encoding, origin)
    return index_class_folders(root, split, encoding, origin)


def read_solution_csv(path: Path) -> dict[str, tuple[str, int]]:
    """image id -> (synset, line number) from ImageNet's LOC_<split>_solution.csv, whose rows are
    `ImageId,PredictionString` and whose PredictionString starts with the synset."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"ImageNet solution file {path} cannot be read: {e}") from None
    header = [cell.strip() for cell in rows[0][:2]] if rows else []
    if header != ["ImageId", "PredictionString"]:
        raise DataError(f"{path} is not an ImageNet solution file: its first line must be "
                        f"'ImageId,PredictionString', not {','.join(rows[0]) if rows else 'empty'!r}")
    solution: dict[str, tuple[str, int]] = {}
    problems = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        image_id = row[0].strip()
        words = row[1].split() if len(row) > 1 else []
        if not image_id or not words:
            problems.append(Problem(f"{path}:{line}", "expected an image id and a PredictionString that starts with a synset"))
            continue
        earlier = solution.get(image_id)
        if earlier is not None and earlier[0] != words[0]:
            problems.append(Problem(f"{path}:{line}", f"image {image_id!r} has synset {words[0]!r} here and "
                                                      f"{earlier[0]!r} on line {earlier[1]}"))
            continue
        solution.setdefault(image_id, (words[0], line))
    if problems:
        raise DataError(problems, f"problems in {path}")
    return solution


def index_solution_split(folder: Path, split: str, csv_path: Path, encoding: dict[str, int], origin: str) -> Split:
    """ImageNet's val: a flat folder of images, each labelled by its row in the solution CSV."""
    if not encoding:
        raise DataError(f"{folder} is labelled by {csv_path}, but no class folders define the classes: "
                        "put the training split's class folders beside it or pass --label-encoding")
    solution = read_solution_csv(csv_path)
    images, _, problems = list_dir(folder)
    files, targets, used = [], [], set()
    for image in images:
        key = image.stem if image.stem in solution else image.name if image.name in solution else None
        if key is None:
            problems.append(Problem(str(image), f"not in {csv_path}: the image has no ground truth"))
            continue
        synset, line = solution[key]
        if synset not in encoding:
            problems.append(Problem(str(image), f"its synset {synset!r} ({csv_path.name} line {line}) is not in {origin}"))
            continue
        used.add(key)
        files.append(str(image.resolve()))
        targets.append(encoding[synset])
    result = finished_split(split, folder, files, targets, problems, encoding)
    absent = sorted(set(solution) - used)
    if absent:  # a subset of val is legitimate, but say so: it changes the accuracy one reports
        warnings.warn(f"{csv_path} lists {len(absent)} image(s) that are not in {folder} "
                      f"(first: {', '.join(absent[:3])})", stacklevel=2)
    return result


def read_synset_mapping(data, root: Path) -> dict[str, str]:
    """synset -> human-readable name from LOC_synset_mapping.txt (in DATA or the images' root), or {}."""
    path = next((p for p in (Path(data) / SYNSET_MAPPING, root / SYNSET_MAPPING) if p.is_file()), None)
    if path is None:
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"synset mapping {path} cannot be read: {e}") from None
    names, problems = {}, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        synset, _, name = line.strip().partition(" ")
        if not name.strip():
            problems.append(Problem(f"{path}:{number}", f"expected 'SYNSET NAME', e.g. 'n01440764 tench, Tinca tinca', "
                                                        f"not {line.strip()!r}"))
            continue
        names[synset] = name.strip()
    if problems:
        raise DataError(problems, f"problems in {path}")
    return names
