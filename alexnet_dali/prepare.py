"""`alexnet-dali prepare SRC DST`: the paper's 256×256 images stored once, so that no epoch decodes
full-size JPEGs again (section 2: "we down-sampled the images to a fixed resolution of 256 × 256").

Each image gets exactly the training pipeline's step (pipelines/prepare.py: short side to 256 with
the same resampling, the centre 256×256), run by DALI on every core (or the GPU), and is stored as
a baseline 4:2:0 JPEG (what the GPU's hardware decoder takes). DST has the same splits, classes and
label files, and `train`, `check`, `evaluate` and `AlexNet(...)` take it as DATA: they know it by
its manifest, crop straight from the square, skip the scan and compute the PCA on these pixels.

Resumable and incremental:
- DST/prepared.json (the manifest) holds the settings, the package version and, per output file,
  the source file it came from and that file's identity (size and mtime_ns on a file system; ETag
  and size in a bucket; the fetched copy's size and mtime for a URL).
- DST/.prepare-journal.jsonl gets one line per finished file, so Ctrl-C, SIGTERM or kill -9 loses
  at most the files in flight; the same command goes on from there.
- Each file is written under a hidden temporary name, decoded back, then renamed: no half-written
  file is ever under a final name.
- A source file whose identity changed is redone, one that is gone has its output removed.
  Changed settings are named and refused unless --redo.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import DataError, Problem

MANIFEST_NAME = "prepared.json"
JOURNAL_NAME = ".prepare-journal.jsonl"
TMP_MARK = ".prepare-tmp"  # hidden temporary files: ".NAME.<pid>.prepare-tmp"
FORMAT = 1
SIZE = 256  # pipelines.common.SCALE_SIZE
DEFAULT_QUALITY = 90  # lowest whose 224 crops on photographs stay within 5 levels RMS, none beyond 6 (RESULTS.md)
SUBSAMPLING = "4:2:0"
RESAMPLING = ("short side to 256, centre 256x256, as pipelines.common.decode_and_centre: bilinear for a "
              "shrink of at most 2x, antialiased (triangle) beyond; EXIF orientation applied")
DEFAULT_SPLITS = ("train", "val")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
BATCH = 32  # images per DALI run; the journal is written after each


class PrepareInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a prepare: what was finished is recorded."""

    def __init__(self, done: int, total: int, signum: int = signal.SIGINT):
        self.signum = signum
        super().__init__(f"interrupted: {done} of {total} images prepared and recorded; run the same command "
                         "again to go on from there")


# -- Source access, through the seam (sources.py) ---------------------------------------------------

@dataclass(frozen=True)
class SourceFile:
    rel: str  # path relative to the source root, POSIX-style: also its place in DST
    location: str  # what read_source opens
    identity: str  # changes whenever the file's content may have


@dataclass
class Listing:
    root: str  # the source's root on this machine (a URL's cache folder), or the s3:// URL
    files: list[SourceFile]
    labels: str | None  # label JSONs on this machine or in the bucket
    label_encoding: str | None
    metadata: list[SourceFile]  # files beside the images a layout needs (ImageNet's LOC_* files)
    left_out: list[Problem] = field(default_factory=list)  # not images, left out by --skip-bad


def list_source(data: str, labels: str | None, label_encoding: str | None, *, splits: tuple[str, ...],
                cache_dir: str | None = None, refresh: bool = False, skip_bad: bool = False) -> Listing:
    """The image files of the splits, each with its identity, as `train` would index them. A URL
    is brought into the download cache first (remote.py). DataError names every index problem."""
    from .data import SkippableProblem, images_root, index_splits, is_metadata_name
    from .imagenet import SYNSET_MAPPING
    from .sources import identity_at, join, local_copy, open_source

    root, labels, label_encoding = local_copy(data, labels, label_encoding, cache_dir=cache_dir, splits=splits,
                                              refresh=refresh)
    source = open_source(root)
    indexed, problems = index_splits(source, labels, label_encoding, splits=splits)
    left_out = [p for p in problems if skip_bad and isinstance(p, SkippableProblem)]
    problems = [p for p in problems if p not in left_out]
    if problems:
        raise DataError(problems, "problems in the source data set")
    base = source.location("").rstrip("/")  # every file's location starts with it, whatever the kind

    def source_file(location: str) -> SourceFile:
        return SourceFile(location[len(base) + 1:], location, identity_at(location) or "")

    files = [source_file(f) for split in indexed.values() for f in split.files]
    image_root = images_root(source) if labels is None else ""
    candidates = [SYNSET_MAPPING, join(image_root, SYNSET_MAPPING)]
    for folder in dict.fromkeys(["", image_root, *[join(image_root, s) for s in splits]]):
        if source.is_dir(folder):
            candidates += [join(folder, n) for n in source.entries(folder)[0] if is_metadata_name(n)]
    metadata = [source_file(source.location(rel)) for rel in dict.fromkeys(candidates) if source.is_file(rel)]
    return Listing(root, files, labels, label_encoding, metadata, left_out)


def read_source(location: str) -> bytes:
    """One source file's bytes, wherever it is (sources.read_location)."""
    from .sources import read_location

    return read_location(location)


# -- The manifest ----------------------------------------------------------------------------------

def output_name(rel: str) -> str:
    """Where a source image goes in DST: the same path, with ".jpg" appended unless it is a JPEG
    already (a label id is a file name with or without its extension, so "img_1.png.jpg" is still
    found as "img_1.png"; the carried label file names it outright as well)."""
    return rel if rel.lower().endswith(JPEG_EXTENSIONS) else rel + ".jpg"


def settings(quality: int, source: str, splits: tuple[str, ...]) -> dict:
    """What decides the pixels and the files: a change of any of them means other output files."""
    return {"size": SIZE, "quality": quality, "subsampling": SUBSAMPLING, "resampling": RESAMPLING,
            "source": source, "splits": list(splits)}


def read_manifest(dst: Path) -> dict | None:
    path = dst / MANIFEST_NAME
    if not path.exists():
        return None
    from .jsonio import load_json

    manifest = load_json(path, "prepared set manifest")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is a manifest of format {manifest.get('format')!r}; this version reads format "
                        f"{FORMAT}: prepare again with --redo")
    return manifest


def prepared_manifest(tree) -> dict | None:
    """The manifest of a prepared set (a Source from sources.open_source), or None for any other data set.
    A prepare that has not finished is a DataError: its files are not all there."""
    if not tree.is_file(MANIFEST_NAME):
        return None
    name = tree.name(MANIFEST_NAME)
    try:
        manifest = json.loads(tree.read_text(MANIFEST_NAME))
    except (OSError, ValueError) as e:
        raise DataError(f"{name} (a prepared set's manifest) cannot be read: {e}") from None
    if not isinstance(manifest, dict) or not manifest.get("complete"):
        raise DataError(f"{tree.name()} is a prepared set whose prepare has not finished ({name}): run the same "
                        "`alexnet-dali prepare` command again to complete it")
    return manifest


def prepared_labels(data, labels, label_encoding):
    """--labels and --label-encoding default to the label files a prepared set carries."""
    if labels is not None or data is None or not os.path.isfile(os.path.join(data, MANIFEST_NAME)):
        return labels, label_encoding
    try:
        manifest = json.loads(Path(data, MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return labels, label_encoding  # index_splits names a damaged manifest
    carried = [os.path.join(data, manifest[k]) if manifest.get(k) else None for k in ("labels", "label_encoding")]
    return carried[0], label_encoding if label_encoding is not None else carried[1]


def load_done(dst: Path, manifest: dict | None) -> dict[str, dict]:
    """out path -> {"source", "identity"}: the manifest's files, then the journal's lines (a line
    cut short by a kill is ignored: that file is done again)."""
    done = dict(manifest.get("files", {})) if manifest else {}
    journal = dst / JOURNAL_NAME
    if journal.exists():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                done[entry["out"]] = {"source": entry["source"], "identity": entry["identity"]}
            except (ValueError, KeyError, TypeError):
                continue
    return done


def changed_settings(old: dict, new: dict) -> list[str]:
    return [f"{key} {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]


# -- One image -------------------------------------------------------------------------------------

def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG, 4:2:0 (what nvJPEG's hardware decoder takes), libjpeg-turbo via PIL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality, subsampling=2, progressive=False,
                                        optimize=False)
    return buffer.getvalue()


def write_verified(pixels: np.ndarray, final: Path, quality: int) -> None:
    """Encode, write under a hidden temporary name, decode that file back, then rename it."""
    from PIL import Image

    data = encode_jpeg(pixels, quality)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}{TMP_MARK}")
    try:
        tmp.write_bytes(data)
        with Image.open(tmp) as back:
            back.load()
            if back.size != (SIZE, SIZE) or back.mode != "RGB":
                raise OSError(f"{final}: wrote a {back.size} {back.mode} image, expected {SIZE}x{SIZE} RGB")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(dst: Path) -> int:
    """Temporary files an interrupted prepare left (under the lock, nobody else writes them)."""
    removed = 0
    for folder, _, names in os.walk(dst):
        for name in names:
            if name.endswith(TMP_MARK):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


class Squares:
    """The DALI pipeline that turns encoded images into the centre 256×256, a batch at a time. A
    failed batch is decoded again one image at a time, so a bad file is named and its neighbours
    kept (after an error a DALI pipeline stays broken, so it is rebuilt)."""

    def __init__(self, placement):
        self.placement, self.pipe = placement, None

    def _build(self):
        from .pipelines.prepare import prepare_pipeline

        self.pipe = prepare_pipeline(**self.placement.pipeline_args(), batch_size=BATCH, prefetch_queue_depth=1,
                                     exec_pipelined=False, exec_async=False)
        self.pipe.build()

    def _run(self, blobs: list[bytes]) -> list[np.ndarray] | None:
        from .pipelines.prepare import ENCODED_INPUT
        from .scan import deferred_interrupt, quiet_native_log

        if self.pipe is None:
            self._build()
        try:
            with deferred_interrupt(), quiet_native_log():
                self.pipe.feed_input(ENCODED_INPUT, [np.frombuffer(b, dtype=np.uint8) for b in blobs])
                (out,) = self.pipe.run()
        except RuntimeError:
            self.pipe = None
            return None
        out = out.as_cpu() if hasattr(out, "as_cpu") else out
        return [np.array(out[i]) for i in range(len(blobs))]

    def __call__(self, blobs: list[bytes]) -> list[np.ndarray | str]:
        """Per image: the 256×256×3 pixels, or why it cannot be decoded (worded as check words it)."""
        from .scan import REJECTED_BY_DALI, diagnose_bytes

        results: list = ["" for _ in blobs]  # "": unreadable, run_todo asks scan.diagnose why
        readable = [i for i, b in enumerate(blobs) if b]
        squares = self._run([blobs[i] for i in readable]) if readable else []
        if squares is not None:
            for i, square in zip(readable, squares):
                results[i] = square
            return results
        for i in readable:
            one = self._run([blobs[i]]) if len(readable) > 1 else None
            results[i] = one[0] if one else diagnose_bytes(blobs[i]) or REJECTED_BY_DALI
        return results


# -- The whole set ---------------------------------------------------------------------------------

@dataclass
class PrepareReport:
    dst: str
    images: int  # image files in DST now
    prepared: int  # written by this run
    kept: int  # already there and current
    removed: int  # outputs of source files that are gone
    skipped: dict[str, str]  # source path -> reason, left out by --skip-bad
    labels: str | None  # the carried label files in DST
    label_encoding: str | None


def prepare_dataset(src: str, dst: str | os.PathLike, *, labels: str | None = None, label_encoding: str | None = None,
                    splits: tuple[str, ...] | None = None, quality: int = DEFAULT_QUALITY, skip_bad: bool = False,
                    redo: bool = False, threads: int = 0, device: str = "auto", hw_decoder_load: float = 0.65,
                    cache_dir: str | None = None, refresh: bool = False, progress: bool = True) -> PrepareReport:
    """Prepare SRC (anything `train` reads) into the local folder DST; see the module's text."""
    from .config import ConfigError
    from .log import logger
    from .placement import cpu_count, place
    from .rundir import RunLock
    from .sources import not_on_file_system

    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    if not_on_file_system(str(dst)):
        raise ConfigError(f"DST {dst} must be a local folder (train reads it from there; upload it afterwards)")
    splits = tuple(splits or DEFAULT_SPLITS)
    dst = Path(dst)
    wanted = settings(quality, str(src), splits)
    with RunLock(dst, option="DST"):
        stale = remove_temporaries(dst)
        if stale:
            logger.info(f"removed {stale} temporary file(s) an interrupted prepare left in {dst}")
        manifest = read_manifest(dst)
        if manifest is not None:
            changes = changed_settings(manifest.get("settings", {}), wanted)
            if changes and not redo:
                raise ConfigError(f"{dst} was prepared with other settings ({'; '.join(changes)}): pass --redo to "
                                  "prepare every image again with the new ones, or another DST")
        done = {} if redo else load_done(dst, manifest)  # --redo: every file is written again
        listing = list_source(src, labels, label_encoding, splits=splits, cache_dir=cache_dir, refresh=refresh,
                              skip_bad=skip_bad)
        outputs: dict[str, SourceFile] = {}
        clashes = []
        for f in listing.files:
            out = output_name(f.rel)
            if out in outputs:  # "a.png" beside "a.png.jpg"
                clashes.append(Problem(f.location, f"would be stored as {dst / out}, as {outputs[out].location} is"))
            outputs[out] = f
        if clashes:
            raise DataError(clashes, "source files that would be stored under one name")
        previous = load_done(dst, manifest)
        removed = 0
        for out in sorted(set(previous) - set(outputs)):  # its source file is gone: never trained on again
            (dst / out).unlink(missing_ok=True)
            done.pop(out, None)
            removed += 1
        todo = [(out, f) for out, f in outputs.items()
                if done.get(out) != {"source": f.rel, "identity": f.identity} or not (dst / out).is_file()]
        kept = len(outputs) - len(todo)
        for out, _ in todo:  # stale until written again (and removed if its source no longer decodes)
            done.pop(out, None)
        carried = carry_files(listing, outputs, dst)
        record = dict(format=FORMAT, version=__version__, settings=wanted, complete=False, **carried)
        save_manifest(dst, record, done)
        placement = place(device, threads=threads or cpu_count(), hw_decoder_load=hw_decoder_load)
        logger.info(f"preparing {len(todo)} of {len(outputs)} images into {dst} (quality {quality}, "
                    f"{placement.dali_device}, {placement.threads} threads; {kept} already prepared"
                    f"{f', {removed} removed' if removed else ''})")
        bad = run_todo(todo, dst, done, quality, placement, progress=progress, total=len(outputs))
        skipped = {f.location: reason for f, reason in bad}
        left_out = {p.path: p.reason for p in listing.left_out}
        if bad and not skip_bad:
            save_manifest(dst, record, done)
            advice = Problem("", "the others are prepared: fix or remove these and run the same command again, or "
                                 "pass --skip-bad to leave them out")
            raise DataError([*(Problem(f.location, reason) for f, reason in bad), advice],
                            f"{len(bad)} source image(s) cannot be decoded")
        save_manifest(dst, {**record, "complete": True, "skipped": {**left_out, **skipped}}, done)
        (dst / JOURNAL_NAME).unlink(missing_ok=True)
    if skipped or left_out:
        logger.warning(f"--skip-bad left out {len(skipped) + len(left_out)} file(s) (listed in {dst / MANIFEST_NAME}"
                       f"): " + "; ".join(f"{p}: {r}" for p, r in list({**left_out, **skipped}.items())[:5]))
    return PrepareReport(str(dst), len(done), len(todo) - len(bad), kept, removed, {**left_out, **skipped},
                         carried["labels"] and str(dst / carried["labels"]),
                         carried["label_encoding"] and str(dst / carried["label_encoding"]))


def save_manifest(dst: Path, record: dict, done: dict) -> None:
    from .jsonio import write_json
    from .scan import deferred_interrupt

    with deferred_interrupt():  # whole, or the one before
        write_json({**record, "files": dict(sorted(done.items()))}, dst / MANIFEST_NAME, indent=1)


def carry_files(listing: Listing, outputs: dict[str, SourceFile], dst: Path) -> dict:
    """Copy the label JSONs (with an entry for every renamed image) and the layout's metadata files
    into DST; their names in DST, for the manifest."""
    from .sources import read_label_text as read_text
    from .jsonio import write_json
    from .labels import image_id

    carried = {"labels": None, "label_encoding": None}
    if listing.labels is not None:
        text, shown = read_text(listing.labels, "labels")
        labels = json.loads(text)
        for out, f in outputs.items():
            key = image_id(posixpath.basename(f.rel), labels)
            if out != f.rel and key is not None:
                labels[posixpath.basename(out)] = labels[key]  # the stored name, whatever the id's form
        carried["labels"] = posixpath.basename(shown.rstrip("/")) or "labels.json"
        write_json(labels, dst / carried["labels"], indent=1)
    if listing.label_encoding is not None:
        text, shown = read_text(listing.label_encoding, "label encoding")
        carried["label_encoding"] = posixpath.basename(shown.rstrip("/")) or "label_encoding.json"
        (dst / carried["label_encoding"]).write_text(text, encoding="utf-8")
    if carried["labels"] == carried["label_encoding"] and carried["labels"]:
        raise DataError(f"--labels and --label-encoding are both named {carried['labels']}: rename one")
    for f in listing.metadata:
        target = dst / f.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_source(f.location))
    return carried


def run_todo(todo: list[tuple[str, SourceFile]], dst: Path, done: dict, quality: int, placement, *,
             progress: bool, total: int) -> list[tuple[SourceFile, str]]:
    """Prepare each (out, source) file: read (in parallel), decode and centre (DALI), encode and
    write (in parallel, while DALI works on the next batch), one journal line per finished file.
    Returns the source files that cannot be decoded, with the reason."""
    from tqdm import tqdm

    from .placement import cpu_count
    from .scan import diagnose

    if not todo:
        return []
    squares = Squares(placement)
    bad: list[tuple[SourceFile, str]] = []
    journal = open(dst / JOURNAL_NAME, "a", encoding="utf-8")
    chunks = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    workers = max(2, cpu_count())
    previous = install_sigterm()
    bar = tqdm(total=total, initial=total - len(todo), unit="img", desc="prepare", dynamic_ncols=True,
               disable=not progress, smoothing=0.1)
    pending: list = []

    def finish(batch) -> None:
        for (out, f), future in batch:
            future.result()  # an OSError writing DST stops the prepare, named
            done[out] = {"source": f.rel, "identity": f.identity}
            journal.write(json.dumps({"out": out, "source": f.rel, "identity": f.identity}) + "\n")
        journal.flush()
        bar.update(len(batch))

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reading = pool.map(lambda chunk: list(map(read_or_empty, (f.location for _, f in chunk))), chunks)
            try:
                for chunk, blobs in zip(chunks, reading):
                    results = squares(blobs)
                    batch = []
                    for (out, f), result in zip(chunk, results):
                        if isinstance(result, str):
                            bad.append((f, result or diagnose(f.location) or "missing or unreadable"))
                            (dst / out).unlink(missing_ok=True)  # an older version's square is not this file's
                            bar.update(1)
                            continue
                        batch.append(((out, f), pool.submit(write_verified, result, dst / out, quality)))
                    for earlier in pending:
                        finish(earlier)
                    pending = [batch]
                for earlier in pending:
                    finish(earlier)
                pending = []
            except KeyboardInterrupt as stop:
                for earlier in pending:  # what is in flight is written whole, then recorded
                    for _, future in earlier:
                        future.cancel()
                    finish([(item, future) for item, future in earlier if not future.cancelled()])
                pool.shutdown(wait=True, cancel_futures=True)
                raise PrepareInterrupted(len(done), total, getattr(stop, "signum", signal.SIGINT)) from None
    finally:
        bar.close()
        journal.close()
        restore_sigterm(previous)
    return bad


def read_or_empty(location: str) -> bytes:
    try:
        return read_source(location)
    except OSError:
        return b""  # Squares names it (empty or unreadable)


class Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def install_sigterm():
    """SIGTERM stops a prepare as Ctrl-C does: what is finished is recorded first."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, stop)


def restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
