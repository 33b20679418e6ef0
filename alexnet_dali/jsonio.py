"""JSON files: written atomically (the package's caches, histories and configs), read with errors
that name the file (a user's label files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DataError, Problem


def write_json(value, path: str | os.PathLike, **dump_options) -> None:
    """Write JSON atomically: a temporary file renamed over the name, so a reader (or a crash)
    never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, **dump_options))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Object(dict):
    """A JSON object that remembers the keys it was given twice with different values."""

    conflicts: list[tuple[str, object, object]]


def _object_keeping_conflicts(pairs) -> _Object:
    value = _Object()
    value.conflicts = []
    for key, item in pairs:
        if key in value and value[key] != item:
            value.conflicts.append((key, value[key], item))
        value[key] = item
    return value


def parse_json_object(text: str, source: str, what: str) -> dict:
    """A JSON object from text, with errors that name its source and the place it went wrong. A key
    given twice with different values is an error (json.loads would keep the last silently)."""
    try:
        value = json.loads(text, object_pairs_hook=_object_keeping_conflicts)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} file {source} is malformed JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} file {source} must hold a JSON object, not {type(value).__name__}")
    if value.conflicts:
        raise DataError([Problem(source, f"key {key!r} is given twice, as {first!r} and as {second!r}")
                         for key, first, second in value.conflicts], f"keys given twice in {what} file {source}")
    return dict(value)


def load_json(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON object from a file, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {path} cannot be read: {e}") from None
    return parse_json_object(text, str(path), what)
