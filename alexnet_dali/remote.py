"""Data from a URL: an http(s) tree in the original layout, mirrored into a local cache.

    URL/train/, URL/val/    image files, named by the folder's index page (Python's http.server,
                            nginx autoindex, Apache) or, where the server gives none, by a
                            files.txt manifest in the folder (one file name a line)
    labels, label encoding  JSON files, given as URLs or local paths

The cache holds a normal original-layout tree, <cache_dir>/<host-path-hash>/{train,val}/, that
data.index_dataset reads like any local data set. Every run re-reads each split's listing: new
files are downloaded, and files the server no longer lists leave the cache, so the index holds
what the server lists now. The label JSONs are revalidated every run (a conditional GET; 304
keeps the cached copy). Cached images are revalidated only on --refresh: on ImageNet that is
1.28M requests, too many for every start (see fetch_dataset).

Downloads run in parallel, retry connection errors, timeouts, 5xx answers and bodies cut short,
with backoff, and write `.<name>.<pid>.part` before an atomic rename once the body is verified:
its length matched Content-Length where the server gave one, and the bytes are an image (an HTML
error page served with 200 is refused), complete up to the format's end marker where the server
gave no length. Files that still fail are all named, by URL, in one DataError.

Standard library HTTP only (urllib); tqdm for the progress bar.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import http.client
import json
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
from .jsonio import load_json, write_json
from .labels import image_id
from .log import logger
from .scan import image_format

CHUNK_BYTES = 1 << 20
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # worth another try; other 4xx are final
STATE_FOLDER = ".fetch"  # in the cache root: what the cache knows about the server (hidden from the index)
IMAGE_VALIDATORS = "images.jsonl"  # one line per downloaded image: [split/name, ETag, Last-Modified, bytes]


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


class BadContent(Exception):
    """A final answer that is not the file asked for: an HTML error page served with 200, a label
    file that is no JSON. Retrying gets the same answer."""


@dataclass(frozen=True)
class Validators:
    """What the server said identifies the version of a file it sent (ETag, Last-Modified) and its
    length: enough to ask "changed since?" (If-None-Match / If-Modified-Since, answered 304 when
    not) and to notice a damaged cached copy."""

    etag: str | None = None
    modified: str | None = None  # Last-Modified, exactly as sent (it is echoed back)
    length: int | None = None  # bytes received

    @classmethod
    def of(cls, headers, length: int) -> Validators:
        return cls(headers.get("ETag"), headers.get("Last-Modified"), length)

    def conditions(self) -> dict[str, str]:
        """Request headers that make a GET conditional (none: the server gave no validator)."""
        conditions = {}
        if self.etag:
            conditions["If-None-Match"] = self.etag
        if self.modified:
            conditions["If-Modified-Since"] = self.modified
        return conditions


def open_url(url: str, timeout_s: float, headers: dict[str, str] | None = None):
    """One GET. Raises HTTPError for a final answer (404, 403, ... and 304 to a conditional GET),
    FetchError for one worth retrying."""
    request = urllib.request.Request(url, headers={"User-Agent": "alexnet-dali", **(headers or {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
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


# -- Is what arrived the whole file? -----------------------------------------------------------
# Where the server gives a Content-Length, the length says whether the body is complete. Where it
# gives none (a body that ends when the connection closes), a connection cut short looks like a
# complete answer, so the bytes must say it: the format's own end, found without decoding.

# 0xFF and a byte that is not 0: a marker code, or a fill byte before one. In entropy-coded data
# 0xFF is sent as FF 00 (stuffing). The literal first byte lets `re` skip ahead to each 0xFF fast
# (a pattern that starts with a repeat, like \xff+, is tried at every byte: many times slower).
_JPEG_MARKER = re.compile(rb"\xff[^\x00]")


def jpeg_end(data: bytes) -> int | None:
    """Offset just past a JPEG's end-of-image marker, or None where the data stop before it.
    Marker segments are skipped by their lengths, so an embedded thumbnail's end marker (EXIF
    APP1) does not count; data after the end (motion photos) are allowed. Between the scans of a
    progressive JPEG, tables and further scans are walked the same way."""
    position = 2  # after SOI
    while match := _JPEG_MARKER.search(data, position):
        code, position = data[match.start() + 1], match.end()
        if code == 0xFF:  # a fill byte: the marker code is further on
            position -= 1
        elif code == 0xD9:  # EOI
            return position
        elif not (0xD0 <= code <= 0xD8 or code == 0x01):  # RSTn, SOI, TEM have no segment to skip
            if position + 2 > len(data):
                return None
            position += int.from_bytes(data[position:position + 2], "big")  # the length counts itself
    return None


def png_complete(data: bytes) -> bool:
    """The chunks, walked by their lengths, reach IEND."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        if data[position + 4:position + 8] == b"IEND":
            return position + 12 <= len(data)
        position += 12 + length  # length, type, data, CRC
    return False


def short_of_its_end(data: bytes, kind: str) -> str | None:
    """How the bytes of an image of format `kind` fall short of the format's end, or None where
    they don't (or the format has no cheap end to find: TIFF, JPEG 2000, PNM)."""
    if kind == "JPEG" and jpeg_end(data) is None:
        return "no end-of-image marker"
    if kind == "PNG" and not png_complete(data):
        return "no IEND chunk"
    declared = {"BMP": int.from_bytes(data[2:6], "little"),  # the file's size
                "WebP": 8 + int.from_bytes(data[4:8], "little")}.get(kind, 0)  # RIFF header + chunk size
    if len(data) < declared:
        return f"whose header gives {declared} bytes"
    return None


def describe_answer(data: bytes, content_type: str) -> str:
    return f"the server answered {content_type or 'with no content type'}, starting {data[:24]!r}"


def check_image(data: bytes, content_type: str, length_checked: bool) -> None:
    """Raise BadContent unless the bytes are an image (by signature), FetchError if they stop
    before the format's end and no Content-Length vouched for the length (a body cut short: worth
    another try). With a checked length the bytes are the server's file: one damaged there is
    left to the scan, which names it and lets --skip-bad pass it."""
    kind = image_format(data[:16])
    if kind is None:
        if not data and not length_checked:
            raise FetchError("incomplete: the body was empty (the server sent no Content-Length)")
        hint = " (an error page?)" if "html" in content_type or data.lstrip()[:1] == b"<" else ""
        raise BadContent(f"not an image: {describe_answer(data, content_type)}{hint}")
    if not length_checked and (shortfall := short_of_its_end(data, kind)):
        raise FetchError(f"incomplete: {len(data)} bytes of {kind}, {shortfall} (the server sent no Content-Length)")


def check_json(data: bytes, content_type: str, length_checked: bool) -> None:
    """Raise BadContent unless the bytes are JSON, FetchError for JSON that stops early where no
    Content-Length vouched for the length."""
    if not data and not length_checked:
        raise FetchError("incomplete: the body was empty (the server sent no Content-Length)")
    if data.lstrip()[:1] not in (b"{", b"["):
        raise BadContent(f"not JSON: {describe_answer(data, content_type)}")
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        if not length_checked:
            raise FetchError(f"incomplete: the JSON stops after {len(data)} bytes ({e}; the server sent no "
                             "Content-Length)") from None
        raise BadContent(f"malformed JSON: {e}") from None


def download(url: str, destination: Path, policy: FetchPolicy, check=check_image,
             cached: Validators | None = None) -> Validators | None:
    """url -> destination, atomically: a hidden .part file, verified by `check`, renamed into place.

    With `cached` (the validators of the copy at destination) the GET is conditional: a 304 Not
    Modified keeps the copy and returns None. Otherwise returns the new file's validators.
    """
    part = destination.with_name(f".{destination.name}.{os.getpid()}.{threading.get_ident()}.part")
    conditions = cached.conditions() if cached else {}

    def once():
        try:
            with open_url(url, policy.timeout_s, conditions) as response, open(part, "wb") as out:
                expected = response.headers.get("Content-Length")
                received = 0
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                length_checked = expected is not None and expected.isdigit()
                if length_checked and received != int(expected):
                    raise FetchError(f"incomplete: {received} of {expected} bytes")
                headers = response.headers
            check(part.read_bytes(), headers.get("Content-Type", ""), length_checked)
            os.replace(part, destination)
            return Validators.of(headers, received)
        except urllib.error.HTTPError as e:
            if e.code == 304 and conditions:
                return None
            raise  # a final answer (an OSError too, so named first)
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"read failed: {e or type(e).__name__}") from None
        finally:
            part.unlink(missing_ok=True)

    return with_retries(once, policy)


def ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class ValidatorLog:
    """The validators of the cached images: <cache root>/.fetch/images.jsonl, one JSON line
    [split/name, ETag, Last-Modified, bytes] appended per download (cheap at 1.28M files, and a
    crash loses at most the line being written: such a file is fetched whole on --refresh). Read
    only on --refresh; the last line for a name wins."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / STATE_FOLDER / IMAGE_VALIDATORS
        self.file = None

    def load(self) -> dict[str, Validators]:
        known = {}
        try:
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        name, etag, modified, length = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash
                    known[name] = Validators(etag, modified, length)
        except FileNotFoundError:
            pass
        return known

    def record(self, destination: Path, validators: Validators) -> None:
        if self.file is None:
            self.path.parent.mkdir(exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
            if self.file.tell() and not ends_a_line(self.path):
                self.file.write("\n")  # end a line cut by a crash
        name = destination.relative_to(self.root).as_posix()
        self.file.write(json.dumps([name, *dataclasses.astuple(validators)]) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def rewrite(self, known: dict[str, Validators]) -> None:
        """Keep only these entries (after a refresh: the cached files), atomically."""
        self.close()
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as out:
            for name, validators in known.items():
                out.write(json.dumps([name, *dataclasses.astuple(validators)]) + "\n")
        os.replace(tmp, self.path)


def download_all(jobs: list[tuple[str, Path, Validators | None]], policy: FetchPolicy, description: str,
                 log: ValidatorLog) -> tuple[list[Problem], int]:
    """Fetch every (url, destination, validators of the cached copy or None) in parallel with a
    progress bar, recording each new file's validators in `log`: (every failure, named; how many
    cached copies the server said are unchanged)."""
    from tqdm import tqdm

    def fetch(job):
        url, destination, cached = job
        try:
            return download(url, destination, policy, check_image, cached), None
        except urllib.error.HTTPError as e:
            return None, Problem(url, f"HTTP {e.code} {e.reason}")
        except (FetchError, BadContent) as e:
            return None, Problem(url, str(e))

    problems, unchanged = [], 0
    try:
        with ThreadPoolExecutor(max_workers=policy.workers) as pool, \
                tqdm(total=len(jobs), desc=description, unit="file", dynamic_ncols=True) as bar:
            for (_, destination, _), (validators, problem) in zip(jobs, pool.map(fetch, jobs)):
                bar.update(1)
                if problem is not None:
                    problems.append(problem)
                elif validators is None:
                    unchanged += 1
                else:
                    log.record(destination, validators)
    finally:
        log.close()
    return problems, unchanged


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
    """A label JSON as a local path: a URL is revalidated every run (a conditional GET where the
    server gave validators, so an unchanged file costs a 304; else downloaded again); a local
    path is used as it is."""
    if location is None or not is_url(location):
        return location
    # Named by the URL's hash: another labels URL for the same data never reuses this one.
    destination = local_root / f"{what.replace(' ', '_')}-{hashlib.sha1(location.encode()).hexdigest()[:8]}.json"
    state = local_root / STATE_FOLDER / destination.name
    cached = None
    if destination.is_file() and state.is_file():
        try:
            cached = Validators(**json.loads(state.read_text()))
        except (ValueError, TypeError):
            cached = None  # unreadable: fetch the file whole
        if cached is not None and cached.length != destination.stat().st_size:
            cached = None  # not the copy these validators describe
    try:
        fresh = download(location, destination, policy, check_json, cached)
    except urllib.error.HTTPError as e:
        raise DataError([Problem(location, f"{what} file cannot be downloaded: HTTP {e.code} {e.reason}")]) from None
    except (FetchError, BadContent) as e:
        raise DataError([Problem(location, f"{what} file cannot be downloaded: {e}")]) from None
    if fresh is not None:
        state.parent.mkdir(exist_ok=True)
        write_json(dataclasses.asdict(fresh), state)
    return str(destination)


def cached_names(folder: Path) -> set[str]:
    """The files the cache holds in one split folder. Leftovers of downloads killed before their
    clean-up (.part) are removed: the caller holds the cache's lock, so none is being written."""
    names = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                if entry.name.endswith(".part") and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            elif entry.is_file():
                names.add(entry.name)
    return names


def refreshed_at(local_root: Path, split: str) -> float:
    """When a --refresh of this split last completed (0: never)."""
    try:
        return float((local_root / STATE_FOLDER / f"refreshed-{split}").read_text())
    except (OSError, ValueError):
        return 0.0


def list_labelled_splits(folder_url: str, splits, labelled: dict, labels_name: str,
                         policy: FetchPolicy) -> dict[str, dict[str, str]]:
    """split -> image file name -> URL, as the server lists them now; every listed file that is
    not an image name or has no label is a problem, all reported together."""
    listed: dict[str, dict[str, str]] = {}
    problems = []
    for split in splits:
        split_url = folder_url + urllib.parse.quote(split) + "/"
        listed[split] = {}
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
                                                  f"{os.path.splitext(name)[0]!r} is in {labels_name}"))
                continue
            listed[split][name] = file_url
    if problems:
        raise DataError(problems, f"problems in {folder_url}")
    return listed


def sync_plan(local_root: Path, listed: dict[str, dict[str, str]], refreshing: list[str], known: dict):
    """What brings the cache to the listing: removes (at once) the cached files the server no
    longer lists, and returns the downloads of new files and the revalidations of cached ones
    (in the `refreshing` splits, with the validators `known` for them), and how many were removed."""
    new, revalidated, removed = [], [], 0
    for split, files in listed.items():
        folder = local_root / split
        folder.mkdir(exist_ok=True)
        cached = cached_names(folder)
        for name in sorted(cached - files.keys()):  # gone from the server: never trained on again
            (folder / name).unlink()
            removed += 1
        for name, file_url in files.items():
            destination = folder / name
            if name not in cached:
                new.append((file_url, destination, None))
            elif split in refreshing:
                validators = known.get(f"{split}/{name}")
                if validators is not None and validators.length != destination.stat().st_size:
                    validators = None  # the cached copy is damaged: fetch it whole
                revalidated.append((file_url, destination, validators))
    return new, revalidated, removed


def fetch_dataset(url: str, labels: str | None, label_encoding: str | None, *, cache_dir: str | os.PathLike | None = None,
                  splits: tuple[str, ...] = ("train", "val"), refresh: bool = False,
                  policy: FetchPolicy = FetchPolicy()) -> tuple[str, str | None, str | None]:
    """Bring the named splits of an original-layout tree at `url` into the cache as the server
    lists them now: new files downloaded, unlisted ones removed, label JSONs revalidated.

    Cached images are revalidated only with `refresh`: a conditional GET each, in parallel (304
    keeps the copy); a copy whose size differs from what was received, or whose server gave no
    validator, is fetched whole. On every start that would cost a request per image (1.28M on
    ImageNet), while the listing, read anyway, already shows what was added and removed; only a
    file replaced under the same name needs `refresh` to be seen.

    Returns (local root, labels JSON path, encoding JSON path) for data.index_dataset. Processes
    on one machine that share the cache take turns (a file lock), so torchrun's ranks download
    each file once, and a refresh completed by one while another waited serves both.
    """
    asked_at = time.time()
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
        listed = list_labelled_splits(folder_url, splits, load_json(labels_path, "labels"), labels, policy)
        validator_log = ValidatorLog(local_root)
        # A refresh that another process (a torchrun rank) completed after this one asked is as good.
        refreshing = [split for split in splits if refresh and refreshed_at(local_root, split) < asked_at]
        new, revalidated, removed = sync_plan(local_root, listed, refreshing,
                                              validator_log.load() if refreshing else {})
        kept = sum(len(files) for files in listed.values()) - len(new)
        if removed:
            logger.info(f"removed {removed} cached files that {folder_url} no longer lists")
        if new:
            logger.info(f"downloading {len(new)} files from {folder_url} into {local_root} ({kept} already there)")
        if revalidated:
            logger.info(f"revalidating {len(revalidated)} cached files with {folder_url} (--refresh)")
        jobs = new + revalidated
        if jobs:
            problems, unchanged = download_all(jobs, policy, "download", validator_log)
            if problems:
                raise DataError(problems, f"{len(problems)} of {len(jobs)} files could not be downloaded from "
                                          f"{folder_url} (the others are cached; run again to retry)")
            if revalidated:
                logger.info(f"--refresh: {len(revalidated) - unchanged} of {len(revalidated)} cached files had changed")
        else:
            logger.info(f"data from {folder_url}: all {kept} files already in {local_root}")
        if refreshing:  # compact the log: one line per file these splits list now; other splits' lines stay
            def current(key: str) -> bool:
                split, name = key.split("/", 1)
                return split not in listed or name in listed[split]

            validator_log.rewrite({key: v for key, v in validator_log.load().items() if current(key)})
            for split in refreshing:
                (local_root / STATE_FOLDER / f"refreshed-{split}").write_text(repr(time.time()))
    return str(local_root), labels_path, encoding_path


def local_copy(data: str, labels: str | None, label_encoding: str | None, *, cache_dir: str | os.PathLike | None,
               splits, refresh: bool = False) -> tuple[str, str | None, str | None]:
    """(data root, labels JSON, encoding JSON) on this machine: a URL data set's splits are
    brought into the cache first (fetch_dataset; `refresh` revalidates the cached images); local
    data is returned as given."""
    if not is_url(data):
        from .prepare import prepared_labels

        return (data, *prepared_labels(data, labels, label_encoding))  # a prepared set carries its label files
    return fetch_dataset(data, labels, label_encoding, cache_dir=cache_dir, splits=tuple(splits), refresh=refresh)


def url_in(url: str, root: str, path: str) -> str:
    """The URL a file of a downloaded data set came from (root: its folder in the cache)."""
    for base in (Path(root), Path(root).resolve()):
        try:
            relative = Path(path).relative_to(base)
        except ValueError:
            continue
        return (url if url.endswith("/") else url + "/") + urllib.parse.quote(relative.as_posix())
    return path
