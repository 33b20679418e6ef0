"""Images/sec of the training input pipeline alone, side by side in one run:

  dali-cpu          our training pipeline on the CPU (libjpeg-turbo), to torch tensors
  dali-gpu          the same on the GPU (nvJPEG + hardware decoder), where one is present
  pil-dataloader    the usual alternative: PIL + torch DataLoader doing the same work (decode,
                    short side 256, centre 256, random 224, flip, centre the pixels, PCA lighting)
  *-decode          decode only, to see how close each is to its decoder's own limit
  *-no-lighting     the training pipeline with the PCA lighting off (what lighting costs)
  *-pca-stats       the statistics pass that computes the PCA (decode, centre 256, exact sums)
  dali-cpu-s3       with --s3: dali-cpu reading the same files as s3:// objects from a local S3
                    server (moto, on loopback, sharing the cores): what streaming costs

Every CPU row uses all the cores (DALI threads = DataLoader workers = cores).

    python benchmarks/pipeline.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
                                  [--hw-decoder-load 0,0.5,0.65,0.8,1] [--s3]

Several --hw-decoder-load values give one dali-gpu and one dali-gpu-decode row each, named
dali-gpu[hw=X]: the sweep that picks the trainer's --hw-decoder-load for a GPU.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from alexnet_dali.loader import MAX_GPU_PIPELINE_THREADS
from common import base_parser, cpu_count, data_files, report, timed, wants

# ImageNet's RGB statistics in [0, 1] units (the values fb.resnet.torch published): any plausible
# PCA costs the same.
MEAN = (0.485, 0.456, 0.406)
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


# -- DALI ------------------------------------------------------------------------------------

def dali_loader(files, device: str, batch_size: int, threads: int, decode_only: bool, lighting: float = 0.1,
                hw_decoder_load: float = 0.65):
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    from alexnet_dali.loader import DaliLoader
    from alexnet_dali.pipelines import READER_NAME, training_pipeline
    from alexnet_dali.pipelines.common import decode

    device_id = 0 if device == "gpu" else None
    labels = [0] * len(files)
    if decode_only:
        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=2)
        def decoding():
            encoded, label = fn.readers.file(files=files, labels=labels, name=READER_NAME, pad_last_batch=True)
            # a 1×1 crop so the iterator copies nothing: the time is the decoder's
            return fn.crop(decode(encoded, device, hw_decoder_load), crop=(1, 1)), label

        pipe = decoding()
    else:
        pipe = training_pipeline(files, labels, device=device, mean=MEAN, eigval=EIGVAL, eigvec=EIGVEC, lighting=lighting,
                                 hw_decoder_load=hw_decoder_load, batch_size=batch_size, num_threads=threads,
                                 device_id=device_id, prefetch_queue_depth=2, seed=1)
    pipe.build()
    return DaliLoader(pipe, LastBatchPolicy.FILL)


def pca_pass(files, device: str, batch_size: int, threads: int):
    from alexnet_dali.pca import compute_pca

    return lambda: compute_pca(files, device=device, device_id=0 if device == "gpu" else None,
                               batch_size=batch_size, num_threads=threads)


def drain(loader, device: str):
    for images, _ in loader:
        pass
    if device == "gpu":
        torch.cuda.synchronize()


# -- PIL + DataLoader ---------------------------------------------------------------------------

class PilTraining(Dataset):
    """The paper's training augmentation written the usual way: PIL, NumPy, one image at a time."""

    def __init__(self, files, decode_only: bool):
        self.files, self.decode_only = files, decode_only
        self.mean255 = 255.0 * np.asarray(MEAN, dtype=np.float32)
        self.lighting = 255.0 * np.asarray(EIGVEC, dtype=np.float32) * np.asarray(EIGVAL, dtype=np.float32)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        image = Image.open(self.files[index]).convert("RGB")
        if self.decode_only:
            image.load()
            return torch.zeros(1), 0
        w, h = image.size
        scale = 256 / min(w, h)
        image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - 256) // 2 + np.random.randint(0, 33), (h - 256) // 2 + np.random.randint(0, 33)
        image = image.crop((left, top, left + 224, top + 224))
        if np.random.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        shift = self.lighting @ np.random.normal(0, 0.1, size=3).astype(np.float32)
        pixels = np.asarray(image, dtype=np.float32) - (self.mean255 - shift)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), 0


def pil_loader(files, batch_size: int, workers: int, decode_only: bool):
    return DataLoader(PilTraining(files, decode_only), batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=False,
                      worker_init_fn=lambda worker: np.random.seed(1234 + worker))


def hw_loads(text: str) -> list[float]:
    loads = [float(value) for value in text.split(",")]
    if not all(0.0 <= load <= 1.0 for load in loads):
        raise argparse.ArgumentTypeError(f"every hw_decoder_load must be in [0, 1], got {text}")
    return loads


# -- s3:// ----------------------------------------------------------------------------------------

def s3_row(files, batch_size: int, threads: int, trials: int) -> dict:
    """dali-cpu-s3: the dali-cpu training pipeline reading the files as s3:// objects, which DALI's
    reader fetches itself (a HEAD and a GET per object), from moto's S3 server on loopback. The
    server is a Python process on the same cores: a floor for what a real store costs, not a
    measure of one. Needs boto3 and moto[server] (the test extra)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

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
        # DALI's S3 client reads these once per process, at its first s3:// file
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1",
                          AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
        from alexnet_dali.s3 import client

        store = client()
        store.create_bucket(Bucket="bench")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: store.put_object(Bucket="bench", Key=f"train/{Path(f).name}",
                                                     Body=Path(f).read_bytes()), files))
        urls = [f"s3://bench/train/{Path(f).name}" for f in files]
        loader = dali_loader(urls, "cpu", batch_size, threads, decode_only=False)
        result = timed(lambda: drain(loader, "cpu"), len(urls), trials, warmup=lambda: drain(loader, "cpu"))
        del loader
        return {"name": "dali-cpu-s3", "device": "cpu", "kind": "training pipeline, s3:// on loopback",
                "threads": threads, **result}
    finally:
        server.terminate()
        server.wait()


# -- run ---------------------------------------------------------------------------------------

def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--hw-decoder-load", type=hw_loads, default=[0.65],
                        help="GPU rows: comma-separated shares of JPEGs for the hardware decoder (default: 0.65)")
    parser.add_argument("--s3", action="store_true",
                        help="add dali-cpu-s3: the same pipeline reading from a local S3 server (needs moto[server])")
    args = parser.parse_args(argv)
    files = data_files(args)
    cores = cpu_count()
    # all the cores on the CPU; on the GPU the trainer's cap (the threads only feed the decoders)
    threads = {"cpu": cores, "gpu": min(cores, MAX_GPU_PIPELINE_THREADS)}
    n = len(files)
    rows = []

    def add(name, device, loader, kind):
        result = timed(lambda: drain(loader, device), n, args.trials, warmup=lambda: drain(loader, device))
        rows.append({"name": name, "device": device, "kind": kind, "threads": threads[device], **result})
        gc.collect()  # earlier rows' pipelines (reference cycles) free their decoder buffers only here

    for decode_only, suffix in ((False, ""), (True, "-decode")):
        kind = "decode" if decode_only else "training pipeline"
        if wants(args, "cpu"):
            add(f"dali-cpu{suffix}", "cpu", dali_loader(files, "cpu", args.batch_size, threads["cpu"], decode_only),
                kind)
            add(f"pil-dataloader{suffix}", "cpu", pil_loader(files, args.batch_size, cores, decode_only), kind)
        if wants(args, "gpu"):
            for load in args.hw_decoder_load:
                tag = f"[hw={load:g}]" if len(args.hw_decoder_load) > 1 else ""
                add(f"dali-gpu{suffix}{tag}", "gpu",
                    dali_loader(files, "gpu", args.batch_size, threads["gpu"], decode_only, hw_decoder_load=load),
                    kind)
    for device in ("cpu", "gpu"):
        if wants(args, device):
            add(f"dali-{device}-no-lighting", device,
                dali_loader(files, device, args.batch_size, threads[device], False, lighting=0.0,
                            hw_decoder_load=args.hw_decoder_load[0]), "training pipeline")
            run = pca_pass(files, device, args.batch_size, threads[device])
            rows.append({"name": f"dali-{device}-pca-stats", "device": device, "kind": "statistics pass",
                         "threads": threads[device], **timed(run, n, args.trials, warmup=run)})
    if args.s3 and wants(args, "cpu"):
        rows.append(s3_row(files, args.batch_size, threads["cpu"], args.trials))
    by_name = {r["name"]: r["images_per_sec"] for r in rows}
    notes = []
    if "dali-cpu-s3" in by_name and "dali-cpu" in by_name:
        notes.append(f"dali-cpu-s3 / dali-cpu = {by_name['dali-cpu-s3'] / by_name['dali-cpu']:.2f} "
                     "(the S3 server shares the same cores)")
    if "dali-cpu" in by_name and "pil-dataloader" in by_name:
        notes.append(f"dali-cpu / pil-dataloader = {by_name['dali-cpu'] / by_name['pil-dataloader']:.2f}x "
                     f"on the same {cores} cores")
    for name in ("dali-cpu", "dali-gpu"):
        if name in by_name and f"{name}-no-lighting" in by_name:
            notes.append(f"{name}: lighting on / off = {by_name[name] / by_name[name + '-no-lighting']:.3f}")
    for name in ("dali-cpu", "dali-gpu", "pil-dataloader"):
        if name in by_name and f"{name}-decode" in by_name:
            notes.append(f"{name} runs at {by_name[name] / by_name[name + '-decode']:.0%} of its decode-only rate")
    return report("training input pipeline", rows, args, notes)


if __name__ == "__main__":
    main()
