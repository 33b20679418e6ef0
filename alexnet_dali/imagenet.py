"""ImageNet (ILSVRC-2012) as distributed: its validation ground truth and its class names.

    LOC_val_solution.csv     ImageId,PredictionString  (the string starts with the synset)
    LOC_synset_mapping.txt   "n01440764 tench, Tinca tinca", one class a line
    ILSVRC/Data/CLS-LOC/     where the download keeps train/ and val/

Parsers only: data.py decides where these files are and what they label.
"""

from __future__ import annotations

import csv
import io

from .errors import DataError, Problem

IMAGENET_TREE = "ILSVRC/Data/CLS-LOC"
SYNSET_MAPPING = "LOC_synset_mapping.txt"


def solution_name(split: str) -> str:
    return f"LOC_{split}_solution.csv"


def parse_solution_csv(text: str, source: str) -> dict[str, tuple[str, int]]:
    """image id -> (synset, line number)."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"ImageNet solution file {source} cannot be read: {e}") from None
    header = [cell.strip() for cell in rows[0][:2]] if rows else []
    if header != ["ImageId", "PredictionString"]:
        raise DataError(f"{source} is not an ImageNet solution file: its first line must be "
                        f"'ImageId,PredictionString', not {','.join(rows[0]) if rows else 'empty'!r}")
    solution: dict[str, tuple[str, int]] = {}
    problems = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        image_id = row[0].strip()
        words = row[1].split() if len(row) > 1 else []
        if not image_id or not words:
            problems.append(Problem(f"{source}:{line}", "expected an image id and a PredictionString that starts with a synset"))
            continue
        earlier = solution.get(image_id)
        if earlier is not None and earlier[0] != words[0]:
            problems.append(Problem(f"{source}:{line}", f"image {image_id!r} has synset {words[0]!r} here and "
                                                        f"{earlier[0]!r} on line {earlier[1]}"))
            continue
        solution.setdefault(image_id, (words[0], line))
    if problems:
        raise DataError(problems, f"problems in {source}")
    return solution


def parse_synset_mapping(text: str, source: str) -> dict[str, str]:
    """synset -> human-readable name."""
    names, problems = {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        synset, _, name = line.strip().partition(" ")
        if not name.strip():
            problems.append(Problem(f"{source}:{number}", f"expected 'SYNSET NAME', e.g. 'n01440764 tench, Tinca tinca', "
                                                          f"not {line.strip()!r}"))
            continue
        names[synset] = name.strip()
    if problems:
        raise DataError(problems, f"problems in {source}")
    return names
