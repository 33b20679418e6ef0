"""Decode every image once before training, so a bad file is named up front instead of killing
a DALI pipeline mid-epoch ("Critical error in pipeline"; DALI cannot skip a sample).

Images are decoded by the same DALI decoder that training uses, a batch at a time across all
its threads. A batch holds at most MAX_SCAN_PIXELS pixels (read from each image's header), so
a folder of huge photos is checked in bounded memory. When a batch fails, its files are decoded
again one at a time by the same decoder, which alone gives the verdict; the heuristics of
`diagnose` only word the reason for a file that DALI rejected. Results are cached by (path,
size, mtime), so a second start of a large run decodes nothing, and an interrupted scan keeps
what it checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import Problem
from .jsonio import write_json
from .sources import identity_at, read_location

# Leading bytes of the formats DALI decodes.
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"P5", "PNM"), (b"P6", "PNM"), (b"P3", "PNM"), (b"P2", "PNM"),
)
# Image formats DALI's decoder does not read, named so that such a file is called what it is
# rather than "not an image". HEIF's and AVIF's ISO boxes are told apart by their brand.
UNSUPPORTED_SIGNATURES = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"8BPS", "Photoshop (PSD)"), (b"v/1\x01", "OpenEXR"), (b"qoif", "QOI"),
)
ISO_IMAGE_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC",
                    b"heis": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
SUPPORTED_NAMES = "JPEG, PNG, BMP, TIFF, JPEG 2000, WebP or PNM"
CACHE_NAME = "scan-cache.json"

# Pixels one scan batch may decode: DALI's decoder holds a few bytes per pixel of a batch (README,
# "Bad files": measured figures), so 2**27 pixels, two 9000×7000 photos, keep a scan around a
# gigabyte however many such photos a folder holds; a larger image is decoded alone. ImageNet's
# images never reach it (64 of them hold about 12 million pixels).
MAX_SCAN_PIXELS = 1 << 27
REJECTED_BY_DALI = "the DALI decoder cannot decode it (other decoders may)"


class ScanInterrupted(KeyboardInterrupt):
    """Ctrl-C during a scan. `results` holds what was decoded before it (path -> None or the
    reason), so the caller can cache it; the message is the one line the user sees."""

    def __init__(self, results: dict[str, str | None], total: int):
        self.results, self.total = results, total
        super().__init__(f"interrupted during the image scan: {len(results)} of {total} images checked and "
                         "cached; run the same command again to go on from there")


def image_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def unsupported_format(head: bytes) -> str | None:
    """The name of an image format DALI cannot decode (GIF, HEIC, AVIF, JPEG XL, ...), or None."""
    if head[4:8] == b"ftyp" and head[8:12] in ISO_IMAGE_BRANDS:
        return ISO_IMAGE_BRANDS[head[8:12]]
    for signature, name in UNSUPPORTED_SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def diagnose(path: str) -> str | None:
    """Why this file cannot be decoded, or None if it looks fine."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        if os.path.islink(path):  # named as the data set holds it, the link, with where it points
            return f"broken symbolic link: its target {os.readlink(path)} does not exist"
        return "missing: the file does not exist"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return diagnose_bytes(data)


def diagnose_bytes(data: bytes) -> str | None:
    """Why these encoded bytes cannot be decoded, or None if they look fine (cheap checks, then PIL).
    A guess that words the reason, never the verdict: DALI's decoder gives that."""
    if not data:
        return "empty file (0 bytes)"
    kind = image_format(data[:16])
    if kind is None and (unsupported := unsupported_format(data[:16])):
        return f"unsupported image format {unsupported}: DALI decodes {SUPPORTED_NAMES}; convert it to one of these"
    if kind is None:
        return f"not an image: unrecognised content (starts with {data[:8]!r})"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as e:  # PIL raises many types; the message is what the user needs
        text = str(e)
        if "truncated" in text.lower() or isinstance(e, (EOFError, SyntaxError)) and kind in ("JPEG", "PNG"):
            return f"truncated {kind}: {text}"
        return f"undecodable {kind}: {text}"
    if kind == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated JPEG: the end-of-image marker is missing"
    return None


def header_pixels(image: bytes | str | os.PathLike) -> int | None:
    """Width × height of an image (encoded bytes or a path) from its header: PIL reads no pixel
    data. None where the header cannot be read; sys.maxsize for an image PIL calls a
    decompression bomb (over about 179 million pixels)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a size, not a decode
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
                width, height = opened.size
    except Image.DecompressionBombError:
        return sys.maxsize
    except Exception:  # unreadable or unknown: PIL raises many types
        return None
    return width * height


def pixel_bounded_batch(paths: Sequence[str], max_count: int, max_pixels: int = MAX_SCAN_PIXELS) -> int:
    """A fixed batch size for a reader pipeline over these files (the PCA pass) that holds at
    most max_pixels pixels even where the largest image fills every place. Only headers are
    read; an image PIL cannot size (the scan has passed it) is left to its neighbours."""
    largest = max((pixels for pixels in map(header_pixels, paths) if pixels), default=0)
    return max(1, min(max_count, max_pixels // largest)) if largest else max_count


def pixel_batches(pixels: Sequence[int | None], max_count: int, max_pixels: int) -> list[list[int]]:
    """Indices in order, grouped into batches of at most max_count images and max_pixels pixels.
    An image of unknown size, or larger than max_pixels, is a batch of its own."""
    batches: list[list[int]] = []
    current, total = [], 0
    for index, count in enumerate(pixels):
        alone = count is None or count > max_pixels
        if current and (alone or len(current) == max_count or total + count > max_pixels):
            batches.append(current)
            current, total = [], 0
        current.append(index)
        total += count or 0
        if alone:
            batches.append(current)
            current, total = [], 0
    if current:
        batches.append(current)
    return batches


# -- DALI's own log lines ----------------------------------------------------------------------

# What nvImageCodec's logger (inside DALI) prints when it meets a bad file, with ANSI colours:
# "\x1b[0;31m[ERROR] \x1b[0m[libjpeg_turbo_decoder] Could not decode jpeg code stream - ...".
# DALI_NVIMGCODEC_LOG_LEVEL cannot silence it (DALI clamps the level to 1, errors), so stderr is
# captured around each decode call and these lines dropped; our own error names the file.
# Its pieces (colour, level, "[component] ", message) are written one at a time, so where several
# decoder threads fail at once a line may start within another's, or hold two. Beside it, the
# decoders it wraps print their own lines: libjpeg-turbo's "Input file read error" (a JPEG that
# ends early), OpenCV's log and libtiff's messages (its fallback for other formats), and blank
# lines between them. Every other line written meanwhile is passed on.
NATIVE_LOG_LINE = re.compile(
    rb"^(\x1b\[[0-9;]*m)*\[(FATAL|ERROR|WARNING|INFO|DEBUG|TRACE)\] "  # nvImageCodec's own line
    rb"|\x1b\[[0-9;]*m\[(FATAL|ERROR|WARNING|INFO|DEBUG|TRACE)\] "  # ... which another piece began
    rb"|^(\x1b\[[0-9;]*m)*\[?[a-z0-9_]*\] "  # ... the rest of one, from its "[component] " on
    rb"|^Could not (decode jpeg code stream|retrieve image info from jpeg stream) - "  # ... its message alone
    rb"|^Input file read error$"  # libjpeg-turbo
    rb"|^\[ ?(FATAL|ERROR|WARN|INFO|DEBUG|VERBOSE):\d+@[\d.]+\] global "  # OpenCV
    rb"|^TIFF\w*: "  # libtiff
    rb"|^\s*$"
)


@contextmanager
def deferred_interrupt():
    """Hold back Ctrl-C (SIGINT) until the block is done, then act on it as the handler before
    would have (Python's raises KeyboardInterrupt), so the block is never left half-done: a
    file half-written, stderr left redirected. Only the main thread receives Python's signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):  # Ctrl-C wins over an error of the block
            previous(signal.SIGINT, None)
        elif received and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


class _StderrCapture:
    """fd 2 pointed at a temporary file while any thread is inside quiet_native_log()."""

    lock = threading.Lock()
    depth = 0
    saved_fd: int | None = None
    capture = None


@contextmanager
def quiet_native_log():
    """Run DALI decodes with the native libraries' log lines kept out of stderr (fd 2 goes to a
    temporary file meanwhile); everything else written to stderr is passed on when the block
    ends. Nested and concurrent blocks share one capture."""
    state = _StderrCapture
    with state.lock:
        if state.depth == 0:
            capture = tempfile.TemporaryFile()
            try:
                sys.stderr.flush()
                state.saved_fd = os.dup(2)
                os.dup2(capture.fileno(), 2)
                state.capture = capture
            except (OSError, ValueError):  # no usable fd 2 (closed, say): leave stderr be
                capture.close()
        state.depth += 1
    try:
        yield
    finally:
        with state.lock:
            state.depth -= 1
            if state.depth == 0 and state.capture is not None:
                try:
                    sys.stderr.flush()
                finally:
                    os.dup2(state.saved_fd, 2)
                os.close(state.saved_fd)
                state.capture.seek(0)
                kept = [line for line in state.capture.read().splitlines(keepends=True)
                        if not NATIVE_LOG_LINE.search(line.rstrip(b"\r\n"))]
                state.capture.close()
                state.capture = None
                if kept:
                    os.write(2, b"".join(kept))


# -- Decoding ------------------------------------------------------------------------------

class DaliDecodeCheck:
    """Decodes batches of encoded files with DALI's decoder; a failed batch raises and the
    pipeline is rebuilt (after an error a DALI pipeline stays broken)."""

    def __init__(self, placement, batch_size: int):
        self.placement, self.batch_size = placement, batch_size
        self.pipe = None

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        from .pipelines.common import decode

        args = self.placement.pipeline_args()

        @pipeline_def(batch_size=self.batch_size, num_threads=args["num_threads"], device_id=args["device_id"],
                      prefetch_queue_depth=1, exec_pipelined=False, exec_async=False)
        def decode_only():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return decode(encoded, args["device"], args["hw_decoder_load"])

        self.pipe = decode_only()
        self.pipe.build()

    def __call__(self, blobs: list[bytes]) -> bool:
        if self.pipe is None:
            self._build()
        try:
            with deferred_interrupt(), quiet_native_log():  # Ctrl-C never leaves stderr redirected
                self.pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in blobs])
                self.pipe.run()
            return True
        except RuntimeError:
            self.pipe = None
            return False


def read_bytes(path: str) -> bytes:
    """A file's bytes, wherever it is (sources.py: a path, an s3:// object, ...)."""
    return read_location(path)


def file_key(path: str) -> str | None:
    """Identity of a file's current content for the cache: its location and what its source
    says identifies the content (size and mtime on disk; ETag and size in a bucket)."""
    identity = identity_at(path)
    if identity is None:
        return None
    return hashlib.sha1(f"{path}\0{identity}".encode()).hexdigest()[:20]


class ScanCache:
    """file key -> "" (decodes) or the reason it does not. One JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def split(self, files: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """(known problems: path -> reason, files still to decode). Ctrl-C while the files are
        looked up (a stat each: minutes on a network file system) is a ScanInterrupted."""
        known, todo = {}, []
        try:
            for path in files:
                key = file_key(path)
                if key is None:
                    known[path] = diagnose(path) or "missing or unreadable"
                elif key not in self.entries:
                    todo.append(path)
                elif self.entries[key]:
                    known[path] = self.entries[key]
        except KeyboardInterrupt:
            raise ScanInterrupted({}, len(files)) from None
        return known, todo

    def record(self, results: dict[str, str | None]) -> None:
        for path, reason in results.items():
            key = file_key(path)
            if key is not None:
                self.entries[key] = reason or ""

    def save(self) -> None:
        if self.path is None:
            return
        try:
            with deferred_interrupt():  # a Ctrl-C now waits for the file to be whole
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json(self.entries, self.path)
        except OSError:
            pass  # an unwritable cache only costs a rescan next time


def decode_check(files: Sequence[str], placement, *, batch_size: int = 64, max_pixels: int = MAX_SCAN_PIXELS,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, str | None]:
    """path -> None if DALI decodes it where `placement` (placement.py) says, else the reason it
    does not. At most batch_size images and max_pixels pixels per decode. Ctrl-C raises
    ScanInterrupted with the results so far."""
    threads = placement.threads
    check = DaliDecodeCheck(placement, batch_size)
    results: dict[str, str | None] = {}
    chunks = [list(files[i:i + batch_size]) for i in range(0, len(files), batch_size)]
    try:
        with ThreadPoolExecutor(max_workers=min(threads, 8)) as pool:
            for chunk in progress(chunks):
                blobs = list(pool.map(_read, chunk))
                sizes = [header_pixels(blob) if blob else None for blob in blobs]
                for batch in pixel_batches(sizes, batch_size, max_pixels):
                    results.update(decode_batch(check, [chunk[i] for i in batch], [blobs[i] for i in batch]))
    except KeyboardInterrupt:
        raise ScanInterrupted(results, len(files)) from None
    return results


def decode_batch(check: DaliDecodeCheck, paths: list[str], blobs: list[bytes]) -> dict[str, str | None]:
    """Verdicts for one batch. If the batch fails, each file is decoded alone by the same
    decoder: a file's verdict never depends on the files beside it."""
    results = {path: diagnose(path) or "missing or unreadable" for path, blob in zip(paths, blobs) if not blob}
    readable = [(path, blob) for path, blob in zip(paths, blobs) if blob]
    if readable and check([blob for _, blob in readable]):
        return {**results, **dict.fromkeys(path for path, _ in readable)}
    for path, blob in readable:
        decodes = len(readable) > 1 and check([blob])  # one file alone already failed above
        results[path] = None if decodes else diagnose_bytes(blob) or REJECTED_BY_DALI
    return results


def save_scanned(cache: ScanCache, results: dict[str, str | None], total: int) -> None:
    """Record results in the cache and write it whole; a Ctrl-C while it is written stops the
    scan (ScanInterrupted) only once the file is complete."""
    cache.record(results)
    try:
        cache.save()
    except KeyboardInterrupt:
        raise ScanInterrupted(results, total) from None


def scan_images(files: Sequence[str], placement, *, cache_path: Path | None = None, dist_info=None,
                announce: bool = False, rescan: bool = False) -> list[Problem]:
    """Every file that cannot be decoded, with the reason, in the order given; cached, also when
    Ctrl-C stops the scan (ScanInterrupted). The one scan-with-cache path of check, evaluate and
    train: under several processes (dist_info), rank 0 holds the cache and the ranks share the
    decoding of what it does not know; every rank gets the whole answer. `announce` logs how
    many images are to be decoded. `rescan` decodes every file again whatever the cache holds (a
    file rewritten with its size and modification time kept) and records the verdicts."""
    rank, world_size, is_main, share, gather = 0, 1, True, (lambda value: value), (lambda value: [value])
    if dist_info is not None:
        from . import distributed  # imports torch: only where several processes may share the work

        rank, world_size, is_main = dist_info.rank, dist_info.world_size, dist_info.is_main
        share, gather = distributed.broadcast_object, distributed.gather_objects
    unique = list(dict.fromkeys(files))
    cache = ScanCache(cache_path) if is_main else None
    known, todo = ({}, unique) if rescan or cache is None else cache.split(unique)
    known, todo = share((known, todo))
    if todo and announce and is_main:
        from .log import logger

        logger.info(f"checking that {len(todo)} images decode ({len(unique) - len(todo)} known from the cache)")
    mine = todo[rank::world_size]
    try:
        results = decode_check(mine, placement) if mine else {}
    except ScanInterrupted as stop:  # Ctrl-C: keep what this process checked (rank 0 holds the cache)
        if cache is not None:
            save_scanned(cache, stop.results, len(todo))
        raise ScanInterrupted(stop.results, len(todo)) from None
    merged: dict[str, str | None] = {}
    for part in gather(results):
        merged.update(part)
    if cache is not None and merged:
        save_scanned(cache, merged, len(todo))
    found = {**known, **{path: reason for path, reason in merged.items() if reason}}
    return [Problem(path, found[path]) for path in files if path in found]


def _read(path: str) -> bytes:
    try:
        return read_bytes(path)
    except OSError:
        return b""
