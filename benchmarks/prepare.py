"""Original against prepared (`alexnet-dali prepare`: the 256×256 squares stored once as JPEGs),
side by side in one run, on the same generated ImageNet-like 500×375 JPEGs:

  bytes                   the training split on disk, original and prepared
  prepare                 prepare's own rate (images/s), every core
  dali-cpu-decode         decode only, original / prepared (dali-gpu-decode too, where a GPU is)
  dali-cpu                the training pipeline (the trainer's loader), original / prepared
                          (dali-gpu too, where a GPU is; --device cpu leaves them out)
  train-start             `train`'s start before its first step (index, scan, PCA) on --start-files
                          files, original / prepared, no caches (a first start)
  prepare-from-s3         prepare reading the files from an S3 server (moto, on loopback, on the same
                          cores), against
  dali-cpu-s3             the training pipeline streaming the same objects, as every epoch would
  quality sweep           per JPEG quality: the RMS error (grey levels) of random 224 crops of the
                          stored square against the crops made on the fly from the original, and
                          the bytes per image; prepare's default is the lowest quality within 5
                          levels RMS, and no one image beyond 6 (on photographs: --data)

    python benchmarks/prepare.py [--device cpu|gpu|all] [--images N] [--start-files N] [--batch-size B] [--trials T]
                                 [--no-s3] [--data PHOTOS] [--json PATH]

--data names a folder of JPEGs for the quality sweep alone (photographs, say); every other row
reads the generated set.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common import (CACHE, base_parser, cpu_count, decode_only_loader, devices, drain, imagenet_like, moto_bucket, parse,
                    pipeline_threads, prepare, report, sizes, timed, training_loader, training_start)

QUALITIES = (75, 80, 85, 90, 95)
# The bound the default quality is chosen by, on photographs (RESULTS.md): the 224 crops of the
# stored squares within 5 grey levels RMS of the crops made on the fly (PSNR 34 dB), and no one
# photograph's beyond 6 (32.5 dB)
CROP_RMS_BOUND = 5.0
WORST_IMAGE_RMS_BOUND = 6.0
CLASSES = 100


def class_folders(files: list[str], root: Path) -> Path:
    """DATA/train/cNNN/ and DATA/val/cNNN/ holding hard links to `files` (one val image per class,
    also a training image: the start's work, not accuracy, is measured)."""
    if (root / "complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    classes = min(CLASSES, max(1, len(files) // 2))
    for i, path in enumerate(files):
        for split in ("train", "val") if i < classes else ("train",):
            folder = root / split / f"c{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            os.link(path, folder / Path(path).name)
    (root / "complete").write_text(f"{len(files)}\n")
    return root


def split_files(root: Path, split: str = "train") -> list[str]:
    return sorted(str(p) for p in (root / split).rglob("*.jpg"))


def disk_bytes(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)


def prepared_path(original: str, original_root: Path, prepared_root: Path) -> str:
    return str(prepared_root / Path(original).relative_to(original_root))


def start_seconds(data: Path, out: Path, trials: int) -> dict:
    """`train`'s start on DATA with no cache: median seconds over trials."""
    seconds = []
    for _ in range(trials):
        shutil.rmtree(data / ".alexnet-dali", ignore_errors=True)  # the scan and PCA caches
        shutil.rmtree(out, ignore_errors=True)
        begin = time.perf_counter()
        training_start(data, out, threads=cpu_count())
        seconds.append(time.perf_counter() - begin)
    return {"seconds": float(np.median(seconds)), "trials_s": [round(s, 2) for s in seconds]}


def quality_sweep(files: list[str], seed: int = 0) -> list[dict]:
    """Per quality: RMS (grey levels) of a random 224 window of the stored square against the same
    window of the square computed from the original (what training crops on the fly), and bytes."""
    from PIL import Image

    from alexnet_dali.placement import place
    from alexnet_dali.prepare import Squares, encode_jpeg

    squares = Squares(place("cpu", threads=cpu_count(), hw_decoder_load=0.0))
    originals = []
    for i in range(0, len(files), 32):
        originals += squares([Path(f).read_bytes() for f in files[i:i + 32]])
    rng = np.random.default_rng(seed)
    windows = [tuple(rng.integers(0, 33, size=2)) for _ in originals]
    sweep = []
    for quality in QUALITIES:
        squared, sizes_bytes = [], []
        for square, (x, y) in zip(originals, windows):
            data = encode_jpeg(square, quality)
            sizes_bytes.append(len(data))
            with Image.open(io.BytesIO(data)) as image:
                stored = np.asarray(image.convert("RGB"), dtype=np.float64)
            crop = (slice(y, y + 224), slice(x, x + 224))
            squared.append(np.mean((stored[crop] - square[crop].astype(np.float64)) ** 2))
        sweep.append({"quality": quality, "crop_rms": float(np.sqrt(np.mean(squared))),
                      "worst_image_rms": float(np.sqrt(np.max(squared))), "bytes_per_image": float(np.mean(sizes_bytes))})
    return sweep


def s3_rows(source: Path, batch_size: int, trials: int) -> list[dict]:
    """prepare-from-s3 (one pass, the cost paid once) and dali-cpu-s3 (the training pipeline
    streaming the same objects: the cost of every epoch), against moto's server on loopback."""
    from concurrent.futures import ThreadPoolExecutor

    with moto_bucket() as store:
        objects = [p for p in source.rglob("*.jpg")]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: store.put_object(Bucket="bench", Key=f"set/{p.relative_to(source).as_posix()}",
                                                     Body=p.read_bytes()), objects))
        train = [f"s3://bench/set/{Path(f).relative_to(source).as_posix()}" for f in split_files(source)]
        dst = CACHE / "prepare-bench" / "from-s3"
        shutil.rmtree(dst, ignore_errors=True)
        begin = time.perf_counter()
        done = prepare("s3://bench/set", dst, threads=cpu_count())
        seconds = time.perf_counter() - begin
        rows = [{"name": "prepare-from-s3", "device": "cpu", "kind": "prepare, s3:// source", "threads": cpu_count(),
                 "images": done.images, "batch_size": 32, "images_per_sec": done.images / seconds,
                 "trials": [done.images / seconds]}]
        loader, threads = training_loader(train, "cpu", batch_size, threads=cpu_count())
        rows.append({"name": "dali-cpu-s3", "device": "cpu", "kind": "training pipeline, s3://", "threads": threads,
                     "images": len(train), "batch_size": batch_size,
                     **timed(lambda: drain(loader, "cpu"), len(train), trials, warmup=lambda: drain(loader, "cpu"))})
        return rows


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0], cpu=(512, 64), gpu=(4096, 256))
    parser.add_argument("--start-files", type=int, default=50000,
                        help="files of the set whose `train` start is timed (default: 50000); the other rows take "
                             "the first --images of them")
    parser.add_argument("--sweep-images", type=int, default=200, help="images of the quality sweep (default: 200)")
    parser.add_argument("--no-s3", action="store_true", help="leave out the S3 rows (they need moto[server])")
    parser.add_argument("--sweep-only", action="store_true", help="only the quality sweep, on --data's JPEGs")
    args = parse(parser, argv)
    if args.sweep_only:
        if not args.data:
            parser.error("--sweep-only needs --data PHOTOS")
        return sweep_report(photo_files(args.data)[:args.sweep_images], [], [], args)
    images, batch_size = sizes(args, "cpu")
    count = max([args.start_files] + [sizes(args, device)[0] for device in devices(args)])
    files = imagenet_like(count)
    args.data_read = {"images": count}
    work = CACHE / "prepare-bench"
    original_root = class_folders(files[:count], work / f"original-{count}")
    prepared_root = work / f"prepared-{count}"
    shutil.rmtree(prepared_root, ignore_errors=True)
    rows, notes = [], []

    begin = time.perf_counter()
    prepared = prepare(original_root, prepared_root, threads=cpu_count())
    seconds = time.perf_counter() - begin
    rows.append({"name": "prepare", "device": "cpu", "kind": "prepare", "threads": cpu_count(),
                 "images": prepared.images, "batch_size": 32, "images_per_sec": prepared.images / seconds,
                 "trials": [prepared.images / seconds]})

    train_original = split_files(original_root)
    train_prepared = [prepared_path(f, original_root, prepared_root) for f in train_original]
    original_bytes, prepared_bytes = disk_bytes(train_original), disk_bytes(train_prepared)
    notes.append(f"bytes: prepared / original = {prepared_bytes / original_bytes:.3f} ({prepared_bytes / 1e6:.1f} MB "
                 f"/ {original_bytes / 1e6:.1f} MB for {len(train_original)} training images; goal <= 0.333)")

    for device in devices(args):  # the decode and pipeline rows run on each device; the others on the CPU
        count_device, batch_device = sizes(args, device)
        subset_original, subset_prepared = train_original[:count_device], train_prepared[:count_device]
        size = dict(images=len(subset_original), batch_size=batch_device)
        threads = pipeline_threads(device)
        for name, make in (
                (f"dali-{device}-decode", lambda fs, p: decode_only_loader(fs, device, batch_device, threads)),
                (f"dali-{device}", lambda fs, p: training_loader(fs, device, batch_device, threads=threads,
                                                                 prepared=p)[0])):
            for variant, subset, is_prepared in (("original", subset_original, False),
                                                 ("prepared", subset_prepared, True)):
                loader = make(subset, is_prepared)
                rows.append({"name": f"{name} {variant}", "device": device, "kind": name, "threads": threads, **size,
                             **timed(lambda: drain(loader, device), len(subset), args.trials,
                                     warmup=lambda: drain(loader, device))})
                del loader
                gc.collect()
    subset_original = train_original[:images]

    start = {}
    for variant, root in (("original", original_root), ("prepared", prepared_root)):
        start[variant] = start_seconds(root, work / f"start-run-{variant}", trials=1)
        rows.append({"name": f"train-start {variant}", "device": "cpu", "kind": "index + scan + PCA",
                     "threads": cpu_count(), "images": len(train_original), "batch_size": 64,
                     "images_per_sec": len(train_original) / start[variant]["seconds"],
                     "trials": [len(train_original) / start[variant]["seconds"]], **start[variant]})

    if not args.no_s3:
        rows += s3_rows(class_folders(files[:images], work / f"original-{images}"), batch_size, args.trials)

    by_name = {row["name"]: row for row in rows}

    def rate(name):
        return by_name[name]["images_per_sec"]

    for device in devices(args):
        goal = "goal >= 1.5 on 2 cores" if device == "cpu" else "goal >= 2 on an H100"
        notes.append(f"dali-{device} decode only: prepared / original = "
                     f"{rate(f'dali-{device}-decode prepared') / rate(f'dali-{device}-decode original'):.2f}")
        notes.append(f"dali-{device} training pipeline: prepared / original = "
                     f"{rate(f'dali-{device} prepared') / rate(f'dali-{device} original'):.2f} ({goal})")
    notes.append(f"train start: prepared / original = {start['prepared']['seconds'] / start['original']['seconds']:.3f} "
                 f"({start['prepared']['seconds']:.1f} s / {start['original']['seconds']:.1f} s on "
                 f"{len(train_original)} files; goal <= 0.2)")
    notes.append(f"prepare: {rate('prepare'):.1f} images/s = {rate('prepare') / rate('dali-cpu original'):.2f} x the "
                 "original training pipeline's rate (it is paid once)")
    if not args.no_s3:
        once, stream, local = rate("prepare-from-s3"), rate("dali-cpu-s3"), rate("dali-cpu prepared")
        # 90 epochs: streaming every epoch, against one prepare then local epochs
        streaming, prepared_then_local = 90 / stream, 1 / once + 90 / local
        notes.append(f"from s3: streaming every epoch runs at {stream / local:.2f} x the prepared set's rate; 90 epochs "
                     f"take {streaming / prepared_then_local:.2f} x as long streamed as prepared once "
                     f"({1 / once:.4f} + 90 x {1 / local:.4f} s/image against 90 x {1 / stream:.4f})")
    # --data DIR: the sweep on those JPEGs (photographs); the generated images' fine detail is
    # noise-like, a harder case for JPEG than photographs
    sweep_files = (photo_files(args.data) if args.data else subset_original)[:args.sweep_images]
    return sweep_report(sweep_files, rows, notes, args)


def photo_files(folder) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


def sweep_report(sweep_files: list[str], rows: list[dict], notes: list[str], args) -> dict:
    sweep = quality_sweep(sweep_files)
    chosen = next((s["quality"] for s in sweep
                   if s["crop_rms"] <= CROP_RMS_BOUND and s["worst_image_rms"] <= WORST_IMAGE_RMS_BOUND), None)
    for entry in sweep:
        notes.append(f"quality {entry['quality']}: 224-crop RMS {entry['crop_rms']:.2f} levels (worst image "
                     f"{entry['worst_image_rms']:.2f}), {entry['bytes_per_image'] / 1e3:.1f} kB per image")
    notes.append(f"lowest quality within {CROP_RMS_BOUND:g} levels RMS (no image beyond "
                 f"{WORST_IMAGE_RMS_BOUND:g}) on {len(sweep_files)} images: {chosen}")
    result = report("original against prepared" if rows else "quality sweep", rows, args, notes)
    if args.json:
        import json

        result["quality_sweep"] = sweep
        args.json.write_text(json.dumps(result, indent=2))
    return result

if __name__ == "__main__":
    main()
