"""What every benchmark shares: the command line and each device's sizes, the ImageNet-like data set,
the machine description, timing with several trials, the printed table and the JSON file; and, in
the last section, the only calls the benchmarks make into alexnet_dali."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from alexnet_dali.config import HW_DECODER_LOAD  # the trainer's default, the benchmarks' too

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-dali" / "benchmarks"
DEVICES = ("cpu", "gpu")

# ImageNet's RGB statistics in [0, 1] units (the values fb.resnet.torch published): any plausible
# PCA costs the same.
MEAN = (0.485, 0.456, 0.406)
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


# -- command line and sizes ----------------------------------------------------------------------

def base_parser(description: str, *, cpu: tuple[int, int], gpu: tuple[int, int]) -> argparse.ArgumentParser:
    """The options every benchmark takes. `cpu` and `gpu` are each device's default (images per
    trial, batch size): a steady rate in a few seconds per row (a GPU needs thousands of images)."""
    parser = argparse.ArgumentParser(description=description)
    parser.set_defaults(default_sizes={"cpu": cpu, "gpu": gpu})
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="all",
                        help="which rows to run (all: the CPU rows, and the GPU rows where a GPU is present)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder of JPEGs (searched recursively); default: a generated ImageNet-like set")
    parser.add_argument("--images", type=int, default=None,
                        help=f"images per trial (default: {cpu[0]} on the CPU, {gpu[0]} on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per batch (default: {cpu[1]} on the CPU, {gpu[1]} on a GPU)")
    parser.add_argument("--trials", type=int, default=3, help="timed trials per row; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="after each row's trials, one more pass under torch.profiler: DIR/<row>.txt lists the "
                             "operators and kernels that took the time, DIR/<row>.trace.json.gz is its timeline")
    return parser


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.device == "gpu" and not gpu_present():
        parser.error("--device gpu: torch sees no CUDA GPU on this machine")
    return args


def devices(args) -> list[str]:
    """The devices whose rows run: the CPU unless --device gpu, a GPU where asked for and present."""
    return [device for device in DEVICES if args.device in (device, "all") and (device == "cpu" or gpu_present())]


def sizes(args, device: str) -> tuple[int, int]:
    """(images per trial, batch size) of `device`'s rows: the command line's, else its defaults."""
    images, batch_size = args.default_sizes[device]
    return args.images or images, args.batch_size or batch_size


# -- data ----------------------------------------------------------------------------------------

def data_files(args) -> list[str]:
    """The benchmark's JPEGs: as many as the largest of the devices' sizes asks for (each device's
    rows take the first of them), from --data or generated. Records what was read in args.data_read."""
    count = max(sizes(args, device)[0] for device in devices(args))
    if args.data is None:
        files = imagenet_like(count)
        root = CACHE
    else:
        root = Path(args.data)
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
        if not files:
            sys.exit(f"error: no JPEG files under {args.data}")
    args.data_read = {"images": len(files), "first": os.path.relpath(files[0], root),
                      "last": os.path.relpath(files[-1], root)}
    return files


def natural_image(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Natural-looking content: colour noise with a 1/f amplitude spectrum (the statistics of
    photographs), so JPEGs compress and decode like photos, not like flat colours or white noise."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height)) ** 1.1
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append((field - field.mean()) / (field.std() + 1e-9))
    mix = rng.normal(size=(3, 3)) * 0.4 + np.eye(3)  # correlated colours, as in photographs
    image = np.tensordot(np.stack(channels, axis=-1), mix, axes=1) * 45 + rng.uniform(80, 170, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_imagenet_like(folder: Path, index: int, seed: int) -> None:
    """Image `index` of the set: 500×375 (every fifth 375×500), quality 90, from its own random
    stream, so any worker writes the same file and a smaller set is the start of a larger one."""
    from PIL import Image

    width, height = (375, 500) if index % 5 == 4 else (500, 375)
    pixels = natural_image(width, height, np.random.default_rng([seed, index]))
    Image.fromarray(pixels).save(folder / f"{index:06d}.jpg", quality=90)


def imagenet_like(count: int, seed: int = 0) -> list[str]:
    """`count` ImageNet-like JPEGs, generated once on every core and cached.

    The set is written into a staging folder, marked complete, then renamed into place: another
    process sees the whole set or none of it, and an interrupted run leaves no partial set."""
    folder = CACHE / f"imagenet-like-v2-{count}-{seed}"
    if not (folder / "complete").exists():
        staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        workers = min(cpu_count(), count)
        # fork: the workers need nothing but this module, and no GPU is in use yet
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(write_imagenet_like, itertools.repeat(staging), range(count), itertools.repeat(seed),
                          chunksize=max(1, count // (4 * workers))))
        (staging / "complete").write_text(f"{count} images\n")
        try:
            staging.rename(folder)
        except OSError:  # the folder exists: another process finished first, or a stale partial set
            if (folder / "complete").exists():
                shutil.rmtree(staging)
            else:
                shutil.rmtree(folder)
                staging.rename(folder)
    return [str(folder / f"{i:06d}.jpg") for i in range(count)]


# -- machine -------------------------------------------------------------------------------------

def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": cpu_count(),
            "cpu": cpu_model(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        info["dali"] = None
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- timing and reporting ------------------------------------------------------------------------

def timed(run_once, images: int, trials: int, warmup=None, profile_to: Path | None = None) -> dict:
    """images/sec of `run_once()` (which processes `images` images), median over trials; with
    `profile_to`, one more pass under torch.profiler written there (not in the figure)."""
    if warmup is not None:
        warmup()
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        run_once()
        rates.append(images / (time.perf_counter() - start))
    if profile_to is not None:
        write_profile(run_once, images, profile_to)
    return {"images_per_sec": statistics.median(rates), "trials": [round(r, 2) for r in rates]}


def profile_path(args, row: str) -> Path | None:
    """Where --profile DIR puts a row's profile (DIR/<row>.txt), or None without --profile."""
    if getattr(args, "profile", None) is None:
        return None
    return args.profile / (re.sub(r"[^A-Za-z0-9.+-]+", "_", row).strip("_") + ".txt")


def write_profile(run_once, images: int, path: Path) -> None:
    """One pass of `run_once` under torch.profiler: the operators and kernels by the time they took
    themselves (on the GPU its kernels, DALI's included; the hardware decoder is not a kernel), the
    view that shows whether the decoder, a copy, the model or the host holds a row back. Beside it,
    the pass's timeline as a gzipped Chrome trace (<row>.trace.json.gz, for chrome://tracing or
    Perfetto): whether two kinds of work overlap (the H100's ten-crop: decoding and the network
    did not) is in the timeline, not in the table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        start = time.perf_counter()
        run_once()
        seconds = time.perf_counter() - start
    sort = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{path.stem}: {images} images in {seconds:.3f} s under the profiler "
                    f"({images / seconds:.1f} images/s), sorted by {sort}\n\n"
                    + prof.key_averages().table(sort_by=sort, row_limit=30) + "\n")
    prof.export_chrome_trace(str(path.with_name(path.stem + ".trace.json.gz")))  # .gz: torch gzips it


def report(title: str, rows: list[dict], args, notes: list[str] = ()) -> dict:
    """Print the table and the notes (ratios of rows measured side by side), write the JSON."""
    result = {"benchmark": title, "rows": rows, "machine": machine(),
              "settings": {"trials": args.trials,
                           "sizes": {device: dict(zip(("images", "batch_size"), sizes(args, device)))
                                     for device in devices(args)},
                           "data": str(args.data) if args.data else "generated ImageNet-like 500×375 JPEGs, q90",
                           "data_read": getattr(args, "data_read", None)},
              "notes": list(notes)}
    print(f"\n{title}  ({result['machine']['cpu']}, {result['machine']['cpu_cores']} cores"
          + (f", {result['machine']['gpu']}" if result["machine"]["gpu"] else ", no GPU") + ")")
    print(table(rows))
    for note in notes:
        print(note)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


def table(rows: list[dict], first: str | None = None) -> str:
    """One line per row: [first column,] name, device, images per trial, batch, images/s, trials."""
    width = max([len(r["name"]) for r in rows] + [4])
    first_width = max([len(str(r.get(first, ""))) for r in rows] + [len(first or "")])
    head = [f"{first:{first_width}s}"] if first else []
    lines = ["  ".join(head + [f"{'name':{width}s}", "device", f"{'images':>6s}", f"{'batch':>5s}",
                               f"{'images/s':>9s}", "trials"])]
    for row in rows:
        cells = [f"{row.get(first, ''):{first_width}s}"] if first else []
        lines.append("  ".join(cells + [f"{row['name']:{width}s}", f"{row['device']:6s}", f"{row['images']:6d}",
                                        f"{row['batch_size']:5d}", f"{row['images_per_sec']:9.1f}",
                                        ", ".join(f"{t:.1f}" for t in row.get("trials", []))]))
    return "\n".join(lines)


def sync(device) -> None:
    """Wait for the work queued on a torch device (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def drain(loader, device: str) -> None:
    """One epoch of `loader`, waiting for the GPU's queued work at the end."""
    for _ in loader:
        pass
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


# -- the calls into alexnet_dali -------------------------------------------------------------------
# Every benchmark reaches the package through these functions only, so that a change of its
# interfaces (how devices, threads and precision are chosen) is adapted here, once.

def placement(device: str, threads: int | None = None, hw_decoder_load: float = HW_DECODER_LOAD):
    """The trainer's placement (alexnet_dali.placement) for one benchmark row; threads=None: as
    many as the trainer takes on this machine."""
    from alexnet_dali.placement import place

    return place(device, threads=threads or 0, hw_decoder_load=hw_decoder_load)


def torch_device(device: str):
    return placement(device).device


def pipeline_threads(device: str) -> int:
    """DALI threads of the pipeline benchmark's rows: every core on the CPU; on a GPU the trainer's
    cap (there the threads only feed the decoders)."""
    from alexnet_dali.placement import MAX_GPU_PIPELINE_THREADS

    return cpu_count() if device == "cpu" else min(cpu_count(), MAX_GPU_PIPELINE_THREADS)


def training_loader(files, device: str, batch_size: int, *, threads: int | None = None, lighting: float = 0.1,
                    hw_decoder_load: float = HW_DECODER_LOAD, classes: int = 1000, prepared: bool = False):
    """The trainer's own loader (the training pipeline, shuffled, to torch tensors on `device`) over
    `files`, labelled 0, 1, ... classes-1 in turn. threads=None: as many as the trainer takes.
    prepared=True: the files are `alexnet-dali prepare`'s 256 squares. Returns (loader, DALI threads)."""
    from alexnet_dali.data import Split
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.loader import training_loader as trainer_loader
    from alexnet_dali.pca import PCA

    where = placement(device, threads, hw_decoder_load)
    split = Split("train", tuple(files), tuple(i % classes for i in range(len(files))), tuple(map(str, range(classes))),
                  prepared=prepared)
    loader = trainer_loader(split, PCA(MEAN, EIGVAL, EIGVEC), where, DistInfo(), batch_size=batch_size, seed=1,
                            lighting=lighting, prefetch=2)
    return loader, where.threads


def decode_only_loader(files, device: str, batch_size: int, threads: int, hw_decoder_load: float = HW_DECODER_LOAD,
                       fancy_upsampling: bool = True, region: bool = False):
    """The training pipeline's reader and decoder alone, as a torch iterable: whole images, or
    with region=True only the part a random training crop reads (what the CPU pipeline decodes;
    on a GPU a candidate). On a GPU, fancy_upsampling=False: nvJPEG's own chroma upsampling
    instead of libjpeg-turbo's."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    from alexnet_dali.loader import DaliLoader
    from alexnet_dali.pipelines import READER_NAME
    from alexnet_dali.pipelines.common import CROP_SIZE, SCALE_SIZE, centre_region, decode, decode_region
    from alexnet_dali.pipelines.train import OFFSETS

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if device == "gpu" else None,
                  prefetch_queue_depth=2)
    def decoding():
        encoded, label = fn.readers.file(files=files, labels=[0] * len(files), name=READER_NAME, pad_last_batch=True)
        if region:  # the training pipeline's window: a random 224 of the centre 256
            window = (fn.random.uniform(values=OFFSETS), fn.random.uniform(values=OFFSETS), CROP_SIZE)
            images, _, _ = decode_region(encoded, centre_region(encoded, SCALE_SIZE, window), device, hw_decoder_load)
        else:
            images = decode(encoded, device, hw_decoder_load, fancy_upsampling)
        # a 1×1 crop so the iterator copies nothing: the time is the decoder's
        return fn.crop(images, crop=(1, 1)), label

    pipe = decoding()
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.FILL)


def pca_pass(files, device: str, batch_size: int, threads: int):
    """The statistics pass that computes the PCA, as a function to time."""
    from alexnet_dali.pca import compute_pca

    return lambda: compute_pca(files, placement(device, threads), batch_size=batch_size)


def alexnet(classes: int, device: str, channels_last: bool = False):
    """The paper's network (alexnet_dali.model) on `device`, in the memory layout asked for."""
    import torch

    from alexnet_dali.model import AlexNetModule

    net = AlexNetModule(classes).to(torch_device(device))
    return net.to(memory_format=torch.channels_last) if channels_last else net


def ten_crop_predictor(net, device: str, batch_size: int, precision: str, compile: bool = False):
    """The Predictor that `alexnet-dali predict` uses, around `net` (1000 classes, no lighting PCA)."""
    from alexnet_dali.pca import PCA
    from alexnet_dali.predict import Predictor
    from alexnet_dali.state import ModelBundle

    pca = PCA(MEAN, (0.0, 0.0, 0.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    bundle = ModelBundle(net, pca, tuple(str(i) for i in range(net.num_classes)), precision=precision)
    return Predictor(bundle, placement(device), batch_size=batch_size, compile=compile)


def prepare(src, dst, *, quality: int = 90, threads: int | None = None, redo: bool = False, labels=None,
            label_encoding=None):
    """`alexnet-dali prepare SRC DST` (alexnet_dali.prepare_dataset) on the CPU, without a progress bar."""
    from alexnet_dali.prepare import prepare_dataset

    return prepare_dataset(str(src), dst, quality=quality, threads=threads or 0, redo=redo, device="cpu",
                           labels=labels, label_encoding=label_encoding, progress=False)


def training_start(data, out, threads: int | None = None):
    """What `alexnet-dali train DATA` does before its first step on the CPU: index, scan, PCA
    (alexnet_dali.dataset.load_training_data). Returns the number of training images."""
    from alexnet_dali.config import TrainConfig
    from alexnet_dali.dataset import load_training_data
    from alexnet_dali.distributed import DistInfo

    # batch 1: the start does not depend on the batch, and a small set must not be refused as smaller
    # than the default batch of 128
    config = TrainConfig(data=str(data), out=str(out), device="cpu", dali_threads=threads or 0, batch_size=1)
    return len(load_training_data(config, DistInfo(), placement("cpu", threads)).train)


@contextlib.contextmanager
def moto_bucket(name: str = "bench"):
    """An S3 client on a fresh bucket of moto's S3 server, run on loopback for the block. The
    endpoint and credentials go into the environment: DALI's S3 client reads them once per
    process, at its first s3:// file. Needs boto3 and moto[server] (the test extra)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1",
                          AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
        from alexnet_dali.s3 import client

        store = client()
        store.create_bucket(Bucket=name)
        yield store
    finally:
        server.terminate()
        server.wait()
