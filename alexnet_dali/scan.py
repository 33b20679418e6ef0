"""Decode every image once before training, so a bad file is named up front instead of killing
a DALI pipeline mid-epoch ("Critical error in pipeline"; DALI cannot skip a sample).

Images are decoded by the same DALI decoder that training uses, a batch at a time across all
its threads. When a batch fails, its files are diagnosed one by one (empty, not an image,
truncated, ...) and the good ones decoded again. Results are cached by (path, size, mtime), so
a second start of a large run decodes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import Problem
from .jsonio import write_json

# Leading bytes of the formats DALI decodes.
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"P5", "PNM"), (b"P6", "PNM"), (b"P3", "PNM"), (b"P2", "PNM"),
)
CACHE_NAME = "scan-cache.json"


def image_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def diagnose(path: str) -> str | None:
    """Why this file cannot be decoded, or None if it looks fine."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return "missing: the file does not exist"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return diagnose_bytes(data)


def diagnose_bytes(data: bytes) -> str | None:
    """Why these encoded bytes cannot be decoded, or None if they look fine (cheap checks, then PIL)."""
    if not data:
        return "empty file (0 bytes)"
    kind = image_format(data[:16])
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
            self.pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in blobs])
            self.pipe.run()
            return True
        except RuntimeError:
            self.pipe = None
            return False


def read_bytes(path: str) -> bytes:
    """A file's bytes; an s3:// object's through boto3 (s3.py)."""
    if path.startswith("s3://"):
        from .s3 import read_image

        return read_image(path)
    return Path(path).read_bytes()


def file_key(path: str) -> str | None:
    """Identity of a file's current content for the cache: path, size, modification time (an
    s3:// object's: URL, ETag, size, from the listing)."""
    if path.startswith("s3://"):
        from .s3 import object_key

        return object_key(path)
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return hashlib.sha1(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:20]


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
        """(known problems: path -> reason, files still to decode)."""
        known, todo = {}, []
        for path in files:
            key = file_key(path)
            if key is None:
                known[path] = "missing or unreadable"
            elif key not in self.entries:
                todo.append(path)
            elif self.entries[key]:
                known[path] = self.entries[key]
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.entries, self.path)
        except OSError:
            pass  # an unwritable cache only costs a rescan next time


def decode_check(files: Sequence[str], placement, *, batch_size: int = 64,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, str | None]:
    """path -> None if DALI decodes it where `placement` (placement.py) says, else the reason it
    does not."""
    threads = placement.threads
    check = DaliDecodeCheck(placement, batch_size)
    results: dict[str, str | None] = {}
    batches = [list(files[i:i + batch_size]) for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=min(threads, 8)) as pool:
        for batch in progress(batches):
            blobs = list(pool.map(_read, batch))
            if all(blobs) and check(blobs):
                results.update(dict.fromkeys(batch))
                continue
            for path, reason in zip(batch, pool.map(diagnose, batch)):
                if reason is None and not check([_read(path)]):
                    reason = "the DALI decoder cannot decode it (other decoders may)"
                results[path] = reason
    return results


def scan_images(files: Sequence[str], placement, *, cache_path: Path | None = None) -> list[Problem]:
    """Every file that cannot be decoded, with the reason, in the order given; cached."""
    cache = ScanCache(cache_path)
    found, todo = cache.split(files)
    if todo:
        results = decode_check(todo, placement)
        cache.record(results)
        cache.save()
        found.update({path: reason for path, reason in results.items() if reason})
    return [Problem(path, found[path]) for path in files if path in found]


def _read(path: str) -> bytes:
    try:
        return read_bytes(path)
    except OSError:
        return b""
