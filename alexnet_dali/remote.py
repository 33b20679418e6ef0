"""Data from a URL: an http(s) tree in the original layout, fetched once into a local cache.

    URL/train/, URL/val/    image files, named by the folder's index page (Python's http.server,
                            nginx autoindex, Apache) or, where the server gives none, by a
                            files.txt manifest in the folder (one file name a line)
    labels, label encoding  JSON files, given as URLs or local paths

The cache holds a normal original-layout tree, <cache_dir>/<host-path-hash>/{train,val}/, that
data.index_dataset reads like any local data set. Downloads run in parallel, retry connection
errors, timeouts and 5xx answers with backoff, and write `.<name>.<pid>.part` before an atomic
rename: a file in the cache is complete (its length matched Content-Length where the server gave
one), so a second run fetches no image again. Files that still fail are all named in one DataError.

Standard library HTTP only (urllib); tqdm for the progress bar.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from .data import MANIFEST, is_image_name
from .errors import DataError, Problem
from .jsonio import load_json
from .labels import image_id
from .log import logger

CHUNK_BYTES = 1 << 20
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # worth another try; other 4xx are final


@dataclass(frozen=True)
class FetchPolicy:
    workers: int = 8  # parallel downloads
    attempts: int = 4  # tries per file (the first and three retries)
    timeout_s: float = 30.0  # seconds without a byte (connect or read) before a try is abandoned
    first_wait_s: float = 0.5  # wait before the first retry; doubled before each further one


def is_url(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet-dali"


def cache_folder_name(url: str) -> str:
    """host + path made safe as one folder name, and a hash so different URLs never share it."""
    parts = urllib.parse.urlsplit(url)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.netloc}{parts.path}").strip("._")[:100]
    return f"{readable or 'data'}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


# -- HTTP with retries -----------------------------------------------------------------------

class FetchError(Exception):
    """A try that may succeed if repeated: connection error, timeout, 5xx, short body."""


def open_url(url: str, timeout_s: float):
    """One GET. Raises HTTPError for a final answer (404, 403, ...), FetchError for one worth
    retrying."""
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "alexnet-dali"}),
                                          timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in RETRY_STATUS:
            raise FetchError(f"HTTP {e.code} {e.reason}") from None
        raise
    except urllib.error.URLError as e:
        raise FetchError(f"connection failed: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, garbled answers
        raise FetchError(f"connection failed: {e or type(e).__name__}") from None
    return response


def with_retries(action, policy: FetchPolicy):
    """action() until it succeeds, a final HTTPError, or policy.attempts tries (the last error)."""
    wait = policy.first_wait_s
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except FetchError as e:
            if attempt == policy.attempts:
                raise FetchError(f"{e} (after {attempt} tries)") from None
        time.sleep(wait)
        wait *= 2


def read_url(url: str, policy: FetchPolicy) -> tuple[bytes, str]:
    """A small resource (an index page, a manifest) in memory: (body, content type)."""
    def once():
        with open_url(url, policy.timeout_s) as response:
            try:
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise FetchError(f"read failed: {e or type(e).__name__}") from None
            return body, response.headers.get("Content-Type", "")

    return with_retries(once, policy)


def download(url: str, destination: Path, policy: FetchPolicy) -> None:
    """url -> destination, atomically: a hidden .part file renamed into place once complete."""
    part = destination.with_name(f".{destination.name}.{os.getpid()}.{threading.get_ident()}.part")

    def once():
        try:
            with open_url(url, policy.timeout_s) as response, open(part, "wb") as out:
                expected = response.headers.get("Content-Length")
                received = 0
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                if expected is not None and expected.isdigit() and received != int(expected):
                    raise FetchError(f"incomplete: {received} of {expected} bytes")
            os.replace(part, destination)
        except urllib.error.HTTPError:
            raise  # a final answer (an OSError too, so named first)
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"read failed: {e or type(e).__name__}") from None
        finally:
            part.unlink(missing_ok=True)

    with_retries(once, policy)


def download_all(jobs: list[tuple[str, Path]], policy: FetchPolicy, description: str) -> list[Problem]:
    """Fetch every (url, destination) in parallel with a progress bar; every failure, named."""
    from tqdm import tqdm

    def fetch(job):
        url, destination = job
        try:
            download(url, destination, policy)
            return None
        except urllib.error.HTTPError as e:
            return Problem(url, f"HTTP {e.code} {e.reason}")
        except FetchError as e:
            return Problem(url, str(e))

    problems = []
    with ThreadPoolExecutor(max_workers=policy.workers) as pool, \
            tqdm(total=len(jobs), desc=description, unit="file", dynamic_ncols=True) as bar:
        for problem in pool.map(fetch, jobs):
            bar.update(1)
            if problem is not None:
                problems.append(problem)
    return problems


# -- Listing a split -------------------------------------------------------------------------

class _LinkParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def parse_index_page(html: str, folder_url: str) -> tuple[list[str], list[str]]:
    """(file names, sub-folder names) linked from a directory listing. Links that leave the folder
    (the parent, absolute links elsewhere), sorting links (?C=N;O=D) and the folder itself are not
    entries; hidden names are ignored, as on disk."""
    parser = _LinkParser()
    parser.feed(html)
    files, folders = [], []
    for href in parser.hrefs:
        if href.startswith(("?", "#")):
            continue
        target = urllib.parse.urljoin(folder_url, href).split("#")[0].split("?")[0]
        if not target.startswith(folder_url) or target == folder_url:
            continue
        rest = target[len(folder_url):]
        is_folder = rest.endswith("/")
        name = urllib.parse.unquote(rest.rstrip("/"))
        if not name or "/" in name or name.startswith("."):
            continue
        (folders if is_folder else files).append(name)
    return list(dict.fromkeys(files)), list(dict.fromkeys(folders))


def parse_manifest(text: str) -> list[str]:
    """files.txt: one file name a line; blank lines and # comments ignored."""
    names = (line.strip() for line in text.splitlines())
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))


def list_split(folder_url: str, policy: FetchPolicy) -> list[str]:
    """The image file names of one split folder: from its index page, else from its files.txt."""
    page_error = None
    try:
        body, content_type = read_url(folder_url, policy)
        if "html" in content_type or body.lstrip()[:1] == b"<":
            files, folders = parse_index_page(body.decode("utf-8", "replace"), folder_url)
            if folders:
                raise DataError([Problem(folder_url + f + "/", "nested folder in a split of the original layout "
                                         f"(images must lie directly in {folder_url})") for f in folders],
                                f"problems in {folder_url}")
            if files:
                return files
            page_error = "its index page lists no files"
        else:
            page_error = f"it answers with {content_type or 'an unknown type'}, not an index page"
    except urllib.error.HTTPError as e:
        page_error = f"no index page (HTTP {e.code})"
    except FetchError as e:
        raise DataError([Problem(folder_url, f"cannot be listed: {e}")]) from None
    manifest_url = folder_url + MANIFEST
    try:
        body, _ = read_url(manifest_url, policy)
    except urllib.error.HTTPError as e:
        raise DataError([Problem(folder_url, f"{page_error} and no {MANIFEST} (HTTP {e.code} for {manifest_url}); "
                                 f"serve a directory listing or put a {MANIFEST} with one file name a line there")]) from None
    except FetchError as e:
        raise DataError([Problem(manifest_url, f"cannot be read: {e}")]) from None
    names = parse_manifest(body.decode("utf-8", "replace"))
    bad = [Problem(manifest_url, f"{name!r} is not a plain file name") for name in names
           if "/" in name or "\\" in name or name in (".", "..")]
    if bad:
        raise DataError(bad, f"bad entries in {manifest_url}")
    if not names:
        raise DataError(f"{manifest_url} lists no files")
    return names


# -- The data set ------------------------------------------------------------------------------

def fetch_json(location: str | None, local_root: Path, what: str, policy: FetchPolicy) -> str | None:
    """A label JSON as a local path: a URL is downloaded into the cache once; a local path is
    used as it is."""
    if location is None or not is_url(location):
        return location
    # Named by the URL's hash: another labels URL for the same data never reuses this one.
    destination = local_root / f"{what.replace(' ', '_')}-{hashlib.sha1(location.encode()).hexdigest()[:8]}.json"
    if not destination.is_file():
        try:
            download(location, destination, policy)
        except urllib.error.HTTPError as e:
            raise DataError([Problem(location, f"{what} file cannot be downloaded: HTTP {e.code} {e.reason}")]) from None
        except FetchError as e:
            raise DataError([Problem(location, f"{what} file cannot be downloaded: {e}")]) from None
    return str(destination)


def fetch_dataset(url: str, labels: str | None, label_encoding: str | None, *, cache_dir: str | os.PathLike | None = None,
                  splits: tuple[str, ...] = ("train", "val"),
                  policy: FetchPolicy = FetchPolicy()) -> tuple[str, str | None, str | None]:
    """Download the named splits of an original-layout tree at `url` (what is not cached yet).

    Returns (local root, labels JSON path, encoding JSON path) for data.index_dataset. Processes
    on one machine that share the cache take turns (a file lock), so torchrun's ranks download
    each file once.
    """
    if labels is None:
        raise DataError(f"{url}: data from a URL must be in the original layout (image files in URL/train/, "
                        "URL/val/); pass --labels, the image id -> label JSON (a URL or a local path)")
    folder_url = url if url.endswith("/") else url + "/"
    local_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    local_root = local_root / cache_folder_name(folder_url)
    local_root.mkdir(parents=True, exist_ok=True)
    with open(local_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        labels_path = fetch_json(labels, local_root, "labels", policy)
        encoding_path = fetch_json(label_encoding, local_root, "label encoding", policy)
        labelled = load_json(labels_path, "labels")
        jobs, problems, cached = [], [], 0
        for split in splits:
            split_url = folder_url + urllib.parse.quote(split) + "/"
            (local_root / split).mkdir(exist_ok=True)
            for name in list_split(split_url, policy):
                file_url = split_url + urllib.parse.quote(name)
                if name == MANIFEST:
                    continue
                if not is_image_name(name):
                    problems.append(Problem(file_url, f"not an image file name (extension "
                                                      f"{os.path.splitext(name)[1] or 'none'!r})"))
                    continue
                if image_id(name, labelled) is None:
                    problems.append(Problem(file_url, f"unlabelled: neither {name!r} nor "
                                                      f"{os.path.splitext(name)[0]!r} is in {labels}"))
                    continue
                destination = local_root / split / name
                if destination.is_file():  # complete by construction: only a finished download is renamed here
                    cached += 1
                else:
                    jobs.append((file_url, destination))
        if problems:
            raise DataError(problems, f"problems in {folder_url}")
        if jobs:
            logger.info(f"downloading {len(jobs)} files from {folder_url} into {local_root} ({cached} already there)")
            problems = download_all(jobs, policy, "download")
            if problems:
                raise DataError(problems, f"{len(problems)} of {len(jobs)} files could not be downloaded from "
                                          f"{folder_url} (the others are cached; run again to retry)")
        else:
            logger.info(f"data from {folder_url}: all {cached} files already in {local_root}")
    return str(local_root), labels_path, encoding_path


def local_copy(data: str, labels: str | None, label_encoding: str | None, *, cache_dir: str | os.PathLike | None,
               splits) -> tuple[str, str | None, str | None]:
    """(data root, labels JSON, encoding JSON) on this machine: a URL data set's splits are
    fetched into the cache first (fetch_dataset); local data is returned as given."""
    if not is_url(data):
        return data, labels, label_encoding
    return fetch_dataset(data, labels, label_encoding, cache_dir=cache_dir, splits=tuple(splits))


def url_in(url: str, root: str, path: str) -> str:
    """The URL a file of a downloaded data set came from (root: its folder in the cache)."""
    for base in (Path(root), Path(root).resolve()):
        try:
            relative = Path(path).relative_to(base)
        except ValueError:
            continue
        return (url if url.endswith("/") else url + "/") + urllib.parse.quote(relative.as_posix())
    return path
