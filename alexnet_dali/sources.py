"""Where a data set's files are: one class per kind of location, with the same few methods.

    LocalFolder   a folder on this machine (or a shared file system)
    S3Bucket      s3://bucket/prefix: boto3 lists it (s3.py), DALI's reader streams the objects
    HttpSite      an http(s) URL: mirrored into a local cache before training (remote.py)

Each kind answers the same questions:
- what is there: `entries`, `is_dir`, `is_file`, `exists`, `read_text` (paths inside a source are
  POSIX-style and relative to its root; "" is the root), and `image_files`, every image file
  under a folder with its identity;
- the bytes of one file: `read_file` (by relative path) or `read_location` (by what DALI opens);
- the identity of a file's content (`identity`): size and mtime on disk, ETag and size remote;
- where this data set's caches (scan results, PCA) live: `cache_folder`;
- what DALI's reader opens for a file: `location` (an absolute path or the s3:// URL);
- how a person knows a path: `name`, `display`.

`open_source(location)` picks the class and opens the source (a bucket is listed then, once).
What needs no listing is asked of the class, through the module's functions (`read_location`,
`identity_at`, `cache_folder`, `local_copy`, ...): Split.files holds what DALI opens, and a
file's bytes or identity must not cost a listing of its bucket.

This module is the only one that asks what kind a location is: a new kind of source is one
more class here (and its network code beside it).
The network code itself (HTTP with retries, boto3 listing) stays in remote.py and s3.py.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import urllib.parse
from pathlib import Path
from typing import Iterator

from . import s3
from .errors import DataError

# The folder beside a local data set that holds its caches (scan results, PCA).
DATA_CACHE_FOLDER = ".alexnet-dali"


def join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def default_cache_dir() -> Path:
    """Where downloads and the caches of remote data go without --cache-dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet-dali"


def cache_folder_name(url: str) -> str:
    """host + path made safe as one folder name, and a hash so different URLs never share it."""
    parts = urllib.parse.urlsplit(url)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.netloc}{parts.path}").strip("._")[:100]
    return f"{readable or 'data'}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def _read_text_file(read, location: str, what: str) -> str:
    """A label file's text through read(location); DataError naming it if it cannot be had."""
    try:
        return read(location).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file {location} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} file {location} cannot be read: {e}") from None


class Source:
    """A data set's root of one kind. Subclasses give the listing and the reading."""

    # Whether the splits can be found by listing the root (a web server's root may not list).
    lists_its_root = True
    # Whether runs, checkpoints and caches can be written here with ordinary file calls.
    on_file_system = False
    where = "somewhere"  # "is ..." in messages

    def __init__(self, root: str):
        self.root = root

    @classmethod
    def claims(cls, location) -> bool:
        """Whether a location (a string or a path) is of this kind."""
        raise NotImplementedError

    # -- one file, by what DALI opens (Split.files holds these) ---------------------------------

    @staticmethod
    def read_location(location: str) -> bytes:
        """A file's bytes. FileNotFoundError where it does not exist, OSError for other failures."""
        raise NotImplementedError

    @staticmethod
    def identity_at(location: str) -> str | None:
        """What identifies a file's current content (size and mtime, or ETag and size); None
        where it is missing or unreadable."""
        raise NotImplementedError

    @classmethod
    def cache_folder_at(cls, root: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
        """The folder where runs share the caches of the data set at root (scan results, PCA);
        None where there is none (the run directory then keeps them)."""
        raise NotImplementedError

    @classmethod
    def read_text_at(cls, location: str, what: str) -> str:
        """A label file as text; DataError naming it if it cannot be had."""
        return _read_text_file(cls.read_location, location, what)

    # -- the tree -------------------------------------------------------------------------------

    def name(self, rel: str = "") -> str:
        """How a person knows this path."""
        raise NotImplementedError

    @property
    def display(self) -> str:
        return self.name()

    def location(self, rel: str) -> str:
        """What DALI's reader opens for this file."""
        raise NotImplementedError

    def entries(self, rel: str = "") -> tuple[list[str], list[str]]:
        """(file names, folder names) directly in the folder rel, each sorted."""
        raise NotImplementedError

    def exists(self, rel: str = "") -> bool:
        raise NotImplementedError

    def is_dir(self, rel: str = "") -> bool:
        raise NotImplementedError

    def is_file(self, rel: str) -> bool:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        return self.read_file(rel).decode("utf-8")

    def read_file(self, rel: str) -> bytes:
        return self.read_location(self.location(rel))

    def identity(self, rel: str) -> str | None:
        return self.identity_at(self.location(rel))

    def cache_folder(self, cache_dir: str | os.PathLike | None = None) -> Path | None:
        return self.cache_folder_at(self.root, cache_dir)

    def image_paths(self, folder: str = "") -> Iterator[str]:
        """Every image file under folder, sub-folders included, as paths relative to the root,
        in sorted order folder by folder; hidden entries are skipped."""
        from .data import is_image_name

        names, folders = self.entries(folder)
        for name in names:
            if not name.startswith(".") and is_image_name(name):
                yield join(folder, name)
        for sub in folders:
            if not sub.startswith("."):
                yield from self.image_paths(join(folder, sub))

    def image_files(self, folder: str = "") -> Iterator[tuple[str, str | None]]:
        """(relative path, identity) of every image file under folder (see image_paths)."""
        for rel in self.image_paths(folder):
            yield rel, self.identity(rel)

    # -- making it readable here ----------------------------------------------------------------

    @classmethod
    def local_copy(cls, data: str, labels: str | None, label_encoding: str | None, *,
                   cache_dir: str | os.PathLike | None, splits, refresh: bool = False) -> tuple[str, str | None, str | None]:
        """(data root, labels JSON, encoding JSON) that the indexer and DALI read: as given,
        unless the data must be brought here first (HttpSite)."""
        return data, labels, label_encoding

    @classmethod
    def origin(cls, data: str, local_root: str, path: str) -> str:
        """The name a person knows for a file of data's local copy at local_root (local_copy)."""
        return path

    @classmethod
    def predicted_files(cls, location: str) -> list[str]:
        """What `predict` reads for a location it is given: the file itself."""
        return [location]

    @classmethod
    def missing_among(cls, locations: list[str]) -> list[str]:
        """The locations (of this kind) whose file no longer exists."""
        return [location for location in locations if cls.identity_at(location) is None]


class LocalFolder(Source):
    """A data set's folder on a file system."""

    on_file_system = True
    where = "on a file system"

    def __init__(self, root: str | os.PathLike):
        super().__init__(os.fspath(root))
        self.path = Path(root)

    @classmethod
    def claims(cls, location) -> bool:
        return location is not None and not any(kind.claims(location) for kind in REMOTE_KINDS)

    @staticmethod
    def read_location(location: str) -> bytes:
        return Path(location).read_bytes()

    @classmethod
    def local_copy(cls, data, labels, label_encoding, *, cache_dir, splits, refresh=False):
        """As given; a prepared set's carried label files are its labels unless others are given."""
        from .prepare import prepared_labels

        return (data, *prepared_labels(data, labels, label_encoding))

    @staticmethod
    def identity_at(location: str) -> str | None:
        try:
            stat = os.stat(location)
        except OSError:
            return None
        return f"{stat.st_size}\0{stat.st_mtime_ns}"

    @classmethod
    def cache_folder_at(cls, root, cache_dir=None) -> Path:
        """Beside the data, so that every run on it shares them."""
        return Path(root) / DATA_CACHE_FOLDER

    @classmethod
    def read_text_at(cls, location: str, what: str) -> str:
        try:
            with open(location, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"{what} file {location} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{what} file {location} cannot be read: {e}") from None

    def name(self, rel: str = "") -> str:
        """The root as given, joined with rel."""
        return str(self.path / rel) if rel else str(self.path)

    def location(self, rel: str) -> str:
        """The absolute path (links not followed, so a broken link is named as the data set
        names it)."""
        return os.path.abspath(self.path / rel)

    def exists(self, rel: str = "") -> bool:
        return (self.path / rel).exists()

    def is_dir(self, rel: str = "") -> bool:
        return (self.path / rel).is_dir()

    def is_file(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def entries(self, rel: str = "") -> tuple[list[str], list[str]]:
        files, folders = [], []
        for entry in os.scandir(self.path / rel):
            (folders if entry.is_dir() else files).append(entry.name)
        return sorted(files), sorted(folders)

    def read_text(self, rel: str) -> str:
        return (self.path / rel).read_text(encoding="utf-8")

    @classmethod
    def predicted_files(cls, location: str) -> list[str]:
        """A folder: its image files (sorted, not recursive); anything else as given."""
        from .data import is_image_name

        folder = Path(location)
        if not folder.is_dir():
            return [str(folder)]
        found = sorted(str(p) for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
        if not found:
            raise DataError(f"{folder} holds no image files")
        return found


class S3Bucket(Source):
    """A data set under s3://bucket/prefix, listed once, when opened (s3.list_tree). A folder is
    a key prefix ending in "/" that some key lies under. Caches never go into the bucket."""

    where = "in a bucket"

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url.rstrip("/")
        self.bucket, _ = s3.split_url(self.url)
        self.objects, self.folders = s3.list_tree(self.url)  # relative path -> URL; folder -> entries

    @classmethod
    def claims(cls, location) -> bool:
        return isinstance(location, str) and location.startswith(s3.SCHEME)

    @staticmethod
    def read_location(location: str) -> bytes:
        return s3.read_image(location)

    @staticmethod
    def identity_at(location: str) -> str | None:
        return s3.object_identity(location)

    @classmethod
    def missing_among(cls, locations: list[str]) -> list[str]:
        """One listing of the prefix the objects share, not a request each."""
        prefix = posixpath.dirname(os.path.commonprefix(locations))
        try:
            listed = {f"{prefix}/{key}" for key in s3.list_objects(prefix)}
        except DataError as e:
            if "holds no objects" not in str(e):
                raise
            listed = set()  # every object under the prefix is gone
        return [location for location in locations if location not in listed]

    @classmethod
    def predicted_files(cls, location: str) -> list[str]:
        """The image objects directly under an s3:// prefix, as a local folder expands (sorted, not
        recursive); the URL itself where it names an image, or where nothing lies under it (reading
        it then says what is wrong). A URL ending in "/" is always a prefix."""
        from .data import is_image_name

        if not location.endswith("/") and is_image_name(posixpath.basename(location)):
            return [location]
        bucket, prefix = s3.split_url(location)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        keys, anything = [], False
        try:  # Delimiter="/": only this level is listed, never the (possibly huge) tree below it
            for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                anything = anything or bool(page.get("Contents") or page.get("CommonPrefixes"))
                keys += [item["Key"] for item in page.get("Contents", [])]
        except Exception as e:
            line = s3.explain(e, location)
            if line is None:
                raise
            raise DataError(line) from None
        images = sorted(f"s3://{bucket}/{key}" for key in keys if is_image_name(posixpath.basename(key)))
        if images:
            return images
        if not anything and not location.endswith("/"):
            return [location]
        raise DataError(f"{location} holds no image files" if anything else
                        f"{location} holds no objects: check the prefix (keys are case-sensitive){s3.siblings(bucket, prefix)}")

    @classmethod
    def cache_folder_at(cls, root, cache_dir=None) -> Path | None:
        """In --cache-dir, one folder per data set; without it, none (the run directory)."""
        return Path(cache_dir).expanduser() / cache_folder_name(root) if cache_dir else None

    @classmethod
    def read_text_at(cls, location: str, what: str) -> str:
        return s3.read_text(location, what)

    def name(self, rel: str = "") -> str:
        """Its s3:// URL."""
        return f"{self.url}/{rel}" if rel else self.url

    def location(self, rel: str) -> str:
        """The same URL: DALI's reader opens it."""
        return self.objects.get(rel) or self.name(rel)

    def exists(self, rel: str = "") -> bool:
        return rel in self.objects or rel in self.folders

    def is_dir(self, rel: str = "") -> bool:
        return rel in self.folders

    def is_file(self, rel: str) -> bool:
        return rel in self.objects

    def entries(self, rel: str = "") -> tuple[list[str], list[str]]:
        files, folders = self.folders.get(rel, (set(), set()))
        return sorted(files), sorted(folders)

    def read_text(self, rel: str) -> str:
        return s3.read_object(self.location(rel)).decode("utf-8")


class HttpSite(Source):
    """An original-layout data set at an http(s) URL. Training and checking read a local mirror
    of its splits (local_copy, remote.fetch_dataset); a folder is listed by its index page or
    its files.txt manifest."""

    lists_its_root = False  # a split's index page lists it; the root's may not exist
    where = "on a web server"

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url if url.endswith("/") else url + "/"

    @classmethod
    def claims(cls, location) -> bool:
        return isinstance(location, str) and location.startswith(("http://", "https://"))

    @staticmethod
    def read_location(location: str) -> bytes:
        from . import remote

        return remote.read_file(location)

    @staticmethod
    def identity_at(location: str) -> str | None:
        from . import remote

        return remote.identity(location)

    @classmethod
    def cache_folder_at(cls, root, cache_dir=None) -> Path:
        """Inside the local mirror, as for any local data set."""
        return LocalFolder.cache_folder_at(cls(root).mirror_folder(cache_dir))

    def mirror_folder(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """Where the local copy of this site's splits lives."""
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return base / cache_folder_name(self.url)

    def name(self, rel: str = "") -> str:
        return self.url + urllib.parse.quote(rel) if rel else self.url

    def location(self, rel: str) -> str:
        return self.name(rel)

    def entries(self, rel: str = "") -> tuple[list[str], list[str]]:
        from . import remote

        folder = self.name(rel.rstrip("/") + "/") if rel else self.url
        files, folders = remote.list_folder(folder, remote.FetchPolicy())
        return sorted(files), sorted(folders)

    def _parent_entries(self, rel: str) -> tuple[list[str], list[str]]:
        parent, _ = posixpath.split(rel)
        try:
            return self.entries(parent)
        except DataError:
            return [], []

    def exists(self, rel: str = "") -> bool:
        return self.is_dir(rel) or self.is_file(rel)

    def is_dir(self, rel: str = "") -> bool:
        return not rel or posixpath.basename(rel) in self._parent_entries(rel)[1]

    def is_file(self, rel: str) -> bool:
        return posixpath.basename(rel) in self._parent_entries(rel)[0]

    @classmethod
    def local_copy(cls, data, labels, label_encoding, *, cache_dir, splits, refresh=False):
        """The named splits brought into the mirror (remote.fetch_dataset: `refresh` revalidates
        the cached images), and the label JSONs with them where they are URLs."""
        from . import remote

        return remote.fetch_dataset(data, labels, label_encoding, cache_dir=cache_dir, splits=tuple(splits),
                                    refresh=refresh)

    @classmethod
    def origin(cls, data: str, local_root: str, path: str) -> str:
        """The URL a file of the mirror came from."""
        for base in (Path(local_root), Path(local_root).resolve()):
            try:
                relative = Path(path).relative_to(base)
            except ValueError:
                continue
            return cls(data).url + urllib.parse.quote(relative.as_posix())
        return path


REMOTE_KINDS = (S3Bucket, HttpSite)  # anything else is a LocalFolder


def kind_of(location) -> type[Source]:
    """The class of source a location (a string or a path) belongs to."""
    return next((kind for kind in REMOTE_KINDS if kind.claims(location)), LocalFolder)


def open_source(location) -> Source:
    """The source a data location names; a Source is returned as it is."""
    if isinstance(location, Source):
        return location
    return kind_of(location)(location)


def read_location(location: str) -> bytes:
    """The bytes of a file named by what DALI opens (an entry of Split.files, or a path given to
    predict)."""
    return kind_of(location).read_location(location)


def identity_at(location: str) -> str | None:
    """What identifies the current content of the file at location (see Source.identity_at)."""
    return kind_of(location).identity_at(location)


def predicted_files(location) -> list[str]:
    """What `predict` reads for a location it is given (a folder expands to its images)."""
    return kind_of(location).predicted_files(os.fspath(location))


def missing_files(locations) -> list[str]:
    """The files (of any kinds) that no longer exist, in the order given: each kind asked once."""
    by_kind: dict[type[Source], list[str]] = {}
    for location in locations:
        by_kind.setdefault(kind_of(location), []).append(location)
    missing = {location for kind, group in by_kind.items() for location in kind.missing_among(group)}
    return [location for location in locations if location in missing]


def read_label_text(location, what: str) -> tuple[str, str]:
    """(text, the name to show) of a label file, on this machine, in a bucket or on a site."""
    kind = kind_of(location)
    location = location if isinstance(location, str) else os.fspath(location)
    return kind.read_text_at(location, what), location


def cache_folder(data: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The one place that decides where runs share a data set's caches (scan results, PCA):
    beside local data (DATA/.alexnet-dali), in --cache-dir for a bucket, inside the mirror for
    a site; None where there is no such place (the run directory then keeps them)."""
    return kind_of(data).cache_folder_at(os.fspath(data), cache_dir)


def local_copy(data, labels: str | None, label_encoding: str | None, *, cache_dir: str | os.PathLike | None,
               splits, refresh: bool = False) -> tuple[str, str | None, str | None]:
    """(data root, labels JSON, encoding JSON) that the indexer and DALI read (Source.local_copy)."""
    return kind_of(data).local_copy(data, labels, label_encoding, cache_dir=cache_dir, splits=splits, refresh=refresh)


def lists_its_root(data) -> bool:
    """Whether the splits of data can be found by listing its root (not on a web server)."""
    return kind_of(data).lists_its_root


def origin(data, local_root: str, path: str) -> str:
    """The name a person knows for a file of data's local copy at local_root: a site's URL."""
    return kind_of(data).origin(data, local_root, path)


def not_on_file_system(location) -> str | None:
    """Where location is ("in a bucket", ...) if runs, checkpoints and caches cannot be written
    there with ordinary file calls, else None."""
    kind = kind_of(location)
    return None if location is None or kind.on_file_system else kind.where


