"""The original project's label files, and the one rule that finds an image's entry in them.

    labels JSON          image id -> label         {"img_1": "cat", "img_2": 3}
    label encoding JSON  label -> class index      {"cat": 0, "dog": 1}   (indices 0..K-1, each once)

An image id is the file's name, with or without its extension; ImageNet's solution CSV keys its
rows the same way.
"""

from __future__ import annotations

import os
from typing import Mapping

from .errors import DataError, Problem
from .jsonio import parse_json_object


def image_id(file_name: str, known: Mapping[str, object]) -> str | None:
    """The key of `known` that names this file: its full name first, else its name without the
    extension; None if neither is there."""
    if file_name in known:
        return file_name
    stem = os.path.splitext(file_name)[0]
    return stem if stem in known else None


def parse_labels(text: str, source: str) -> dict[str, str]:
    """image id -> label (as a string), checked: labels must be strings or integers."""
    raw = parse_json_object(text, source, "labels")
    bad = [Problem(source, f"image {key!r} has label {value!r}; labels must be strings or integers")
           for key, value in raw.items() if not isinstance(value, (str, int)) or isinstance(value, bool)]
    if bad:
        raise DataError(bad, "bad labels")
    return {key: str(value) for key, value in raw.items()}


def parse_label_encoding(text: str, source: str) -> dict[str, int]:
    """label -> index, checked: integer indices, each used once, covering 0 .. K-1."""
    raw = parse_json_object(text, source, "label encoding")
    if not raw:
        raise DataError(f"label encoding file {source} is empty")
    problems = [Problem(source, f"label {label!r} has index {index!r}, which is not an integer")
                for label, index in raw.items() if not isinstance(index, int) or isinstance(index, bool)]
    if problems:
        raise DataError(problems, "bad label encoding")
    by_index: dict[int, list[str]] = {}
    for label, index in raw.items():
        by_index.setdefault(index, []).append(label)
    for index, names in sorted(by_index.items()):
        if len(names) > 1:
            problems.append(Problem(source, f"index {index} is given to several labels: {', '.join(map(repr, names))}"))
    expected = set(range(len(raw)))
    if set(by_index) != expected:
        out_of_range = sorted(set(by_index) - expected)
        missing = sorted(expected - set(by_index))
        problems.append(Problem(source, f"indices must be 0..{len(raw) - 1}, one per label; out of range: "
                                        f"{out_of_range or 'none'}, unused: {missing or 'none'}"))
    if problems:
        raise DataError(problems, "bad label encoding")
    return dict(raw)


def encoding_from_labels(labels: Mapping[str, str]) -> dict[str, int]:
    """Without an encoding file: the labels sorted (numbers by value, before names), 0..K-1."""
    def order(label: str):
        # ASCII digits only: "²".isdigit() is true, but int("²") fails
        return (0, int(label), "") if label.isascii() and label.isdigit() else (1, 0, label)

    return {name: i for i, name in enumerate(sorted(set(labels.values()), key=order))}


def classes_from_encoding(encoding: Mapping[str, int]) -> tuple[str, ...]:
    return tuple(label for label, _ in sorted(encoding.items(), key=lambda item: item[1]))


def class_label(classes: tuple[str, ...], class_names: tuple[str, ...], index: int) -> str:
    """What to show a person for class `index`: "n01440764 tench, Tinca tinca" where a
    human-readable name is known, else the class (a data split and a model both show it so)."""
    name = class_names[index] if class_names else ""
    return f"{classes[index]} {name}" if name else classes[index]
