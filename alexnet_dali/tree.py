"""Where a data set's files are: a folder on this machine. The indexer (data.py) reads a data set
only through this small interface, so another store (object storage) is one more class with the
same methods. Paths inside a tree are POSIX-style and relative to its root ("" is the root)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path


def join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


class LocalTree:
    """A data set's folder on a file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def name(self, rel: str = "") -> str:
        """How a person knows this path: the root as given, joined with rel."""
        return str(self.root / rel) if rel else str(self.root)

    def location(self, rel: str) -> str:
        """What DALI's reader opens: the absolute path (links not followed, so a broken link is
        named as the data set names it)."""
        return os.path.abspath(self.root / rel)

    def exists(self, rel: str = "") -> bool:
        return (self.root / rel).exists()

    def is_dir(self, rel: str = "") -> bool:
        return (self.root / rel).is_dir()

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def entries(self, rel: str = "") -> tuple[list[str], list[str]]:
        """(file names, folder names) directly in the folder rel, each sorted."""
        files, folders = [], []
        for entry in os.scandir(self.root / rel):
            (folders if entry.is_dir() else files).append(entry.name)
        return sorted(files), sorted(folders)

    def read_text(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")
