"""Images/sec of the training input pipeline alone, side by side in one run:

  dali-cpu            our training pipeline on the CPU (libjpeg-turbo), to torch tensors
  dali-gpu            the same on the GPU (nvJPEG + hardware decoder), where one is present
  pil-dataloader      the usual alternative: PIL + torch DataLoader doing the same work (decode,
                      short side 256, centre 256, random 224, flip, centre the pixels, PCA lighting)
  dali-reference-*    NVIDIA's own ImageNet training pipeline (DALI's PyTorch ResNet-50 example):
                      fused decode + random-resized crop, resize to 224, mirror, normalise
  torchvision-gpu     torchvision.io.decode_jpeg(device="cuda") and the same work in torch on the
                      GPU, where torchvision is installed
  *-decode            decode only, to see how close each is to its decoder's own limit
  *-no-lighting       the training pipeline with the PCA lighting off (what lighting costs)
  dali-cpu-decode-region
                      decode only the part of each image a random training crop reads (what the
                      CPU pipeline does). Not on the GPU: there it ran at 0.17x the whole image on
                      an H100 (nvJPEG < 13.2 leaves the fast path for a region decoded with the
                      chroma upsampling we ask for, and warns once per image), so the GPU
                      pipeline decodes whole images (benchmarks/RESULTS.md)
  dali-gpu-decode-plain-upsampling
                      decode only, nvJPEG's own chroma upsampling instead of the libjpeg-turbo
                      interpolation the trainer asks for (jpeg_fancy_upsampling): what parity costs
  *-pca-stats         the statistics pass that computes the PCA (decode, centre 256, exact sums)
  dali-cpu-s3         with --s3: dali-cpu reading the same files as s3:// objects from a local S3
                      server (moto, on loopback, sharing the cores): what streaming costs

Every row reads the same files. The CPU rows use all the cores (DALI threads = DataLoader
workers = cores), the GPU's DALI rows the trainer's thread cap, unless --threads says otherwise.

    python benchmarks/pipeline.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
                                  [--hw-decoder-load 0,0.65,1] [--threads 4,8,16] [--s3] [--profile DIR]

Several --hw-decoder-load or --threads values sweep the dali rows and their -decode rows (one row
per combination, named e.g. dali-gpu[hw=0.8,threads=8]): the sweep that picks the trainer's
--hw-decoder-load and threads for a GPU. The dali-reference rows follow the sweep too, each compared
with the dali row of its settings; the -no-lighting and -pca-stats rows take the first values.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common import (EIGVAL, EIGVEC, HW_DECODER_LOAD, MEAN, base_parser, cpu_count, data_files, decode_only_loader,
                    devices, drain, moto_bucket, parse, pca_pass, pipeline_threads, profile_path, report, sizes, timed,
                    training_loader)


# -- NVIDIA's reference pipeline ------------------------------------------------------------------

def reference_loader(files, device: str, batch_size: int, threads: int, hw_decoder_load: float | None = None):
    """The training pipeline of DALI's PyTorch ResNet-50 example (docs/examples/use_cases/pytorch/
    resnet50/main.py, create_dali_pipeline with is_training=True), as written there but for the
    file list (ours, instead of a class-folder root) and, on a GPU, the hardware decoder's share (the
    example leaves DALI's 0.65; each row of a sweep gets the setting of the dali-gpu row it is
    compared with). On the CPU every operator runs there."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy

    gpu = device == "gpu"
    decoder_device = "mixed" if gpu else "cpu"

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None, seed=12,
                  prefetch_queue_depth=2)
    def reference():
        jpegs, labels = fn.readers.file(files=files, labels=[0] * len(files), random_shuffle=True,
                                        pad_last_batch=True, name="Reader")
        images = fn.decoders.image_random_crop(
            jpegs, device=decoder_device, output_type=types.RGB,
            # the example's hint: room for the largest ImageNet image, so the decoder never reallocates
            preallocate_width_hint=5980 if gpu else 0, preallocate_height_hint=6430 if gpu else 0,
            random_aspect_ratio=[0.8, 1.25], random_area=[0.1, 1.0], num_attempts=100,
            **({"hw_decoder_load": hw_decoder_load} if gpu and hw_decoder_load is not None else {}))
        images = fn.resize(images, resize_x=224, resize_y=224, interp_type=types.INTERP_TRIANGULAR)
        mirror = fn.random.coin_flip(probability=0.5)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(224, 224),
                                          mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
                                          std=[0.229 * 255, 0.224 * 255, 0.225 * 255], mirror=mirror)
        return images, labels.gpu() if gpu else labels

    pipe = reference()
    pipe.build()
    return DALIClassificationIterator(pipe, reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL,
                                      auto_reset=True)


# -- PIL + DataLoader -----------------------------------------------------------------------------

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


# -- torchvision on the GPU -----------------------------------------------------------------------

def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


class TorchvisionGpu:
    """What a torch user would write instead of DALI: read each batch's files in the main process,
    decode them with torchvision.io.decode_jpeg(device="cuda") (nvJPEG, batched), then the paper's
    augmentation with torch operations on the GPU, image by image."""

    def __init__(self, files, batch_size: int, decode_only: bool):
        self.files, self.batch_size, self.decode_only = files, batch_size, decode_only
        device = torch.device("cuda", 0)
        self.mean255 = torch.tensor(MEAN, device=device) * 255
        self.lighting = torch.tensor(EIGVEC, device=device) * torch.tensor(EIGVAL, device=device) * 255

    def __iter__(self):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
        from torchvision.transforms.v2 import functional as F

        order = torch.randperm(len(self.files)).tolist()
        for start in range(0, len(order), self.batch_size):
            encoded = [read_file(self.files[i]) for i in order[start:start + self.batch_size]]
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")  # CHW uint8 each
            if self.decode_only:
                yield decoded
                continue
            count = len(decoded)
            offsets = torch.randint(0, 33, (count, 2)).tolist()
            flips = (torch.rand(count) < 0.5).tolist()
            batch = torch.empty(count, 3, 224, 224, device="cuda")
            for k, image in enumerate(decoded):
                image = F.center_crop(F.resize(image, [256], antialias=True), [256, 256])  # short side 256
                x, y = offsets[k]
                image = image[:, y:y + 224, x:x + 224]
                batch[k] = image.flip(-1) if flips[k] else image
            shift = (torch.randn(count, 3, device="cuda") * 0.1) @ self.lighting.T  # eigvec @ (alpha * eigval)
            yield batch - (self.mean255 - shift)[:, :, None, None]


# -- run ------------------------------------------------------------------------------------------

def shares(text: str) -> list[float]:
    loads = [float(value) for value in text.split(",")]
    if not all(0.0 <= load <= 1.0 for load in loads):
        raise argparse.ArgumentTypeError(f"every hw_decoder_load must be in [0, 1], got {text}")
    return loads


# -- s3:// -----------------------------------------------------------------------------------------

def s3_row(files, batch_size: int, threads: int, trials: int) -> dict:
    """dali-cpu-s3: the dali-cpu training pipeline reading the files as s3:// objects, which DALI's
    reader fetches itself (a HEAD and a GET per object), from moto's S3 server on loopback. The
    server is a Python process on the same cores: a floor for what a real store costs, not a
    measure of one. Needs boto3 and moto[server] (the test extra)."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    with moto_bucket() as store:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: store.put_object(Bucket="bench", Key=f"train/{Path(f).name}",
                                                     Body=Path(f).read_bytes()), files))
        urls = [f"s3://bench/train/{Path(f).name}" for f in files]
        loader, threads = training_loader(urls, "cpu", batch_size, threads=threads)
        result = timed(lambda: drain(loader, "cpu"), len(urls), trials, warmup=lambda: drain(loader, "cpu"))
        return {"name": "dali-cpu-s3", "base": "dali-cpu-s3", "device": "cpu", "kind": "training pipeline, s3://",
                "threads": threads, "hw_decoder_load": None, "images": len(urls), "batch_size": batch_size, **result}


def counts(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"threads must be whole numbers of at least 1, got {text}")
    return values


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0], cpu=(512, 128), gpu=(4096, 256))
    parser.add_argument("--hw-decoder-load", type=shares, default=[HW_DECODER_LOAD],
                        help="GPU rows: comma-separated shares of JPEGs for the hardware decoder "
                             f"(default: the trainer's, {HW_DECODER_LOAD:g})")
    parser.add_argument("--threads", type=counts, default=None,
                        help="DALI threads, comma-separated (default: every core on the CPU, "
                             "the trainer's cap of min(cores, 8) on a GPU)")
    parser.add_argument("--s3", action="store_true",
                        help="add dali-cpu-s3: the CPU training pipeline reading from a local S3 server (needs moto[server])")
    args = parse(parser, argv)
    files = data_files(args)
    rows = []

    def add(base, device, loader, kind, threads, images, batch_size, hw=None, tag=""):
        result = timed(lambda: drain(loader, device), images, args.trials, warmup=lambda: drain(loader, device),
                       profile_to=profile_path(args, base + tag))
        rows.append({"name": base + tag, "base": base, "device": device, "kind": kind, "threads": threads,
                     "hw_decoder_load": hw, "images": images, "batch_size": batch_size, **result})
        gc.collect()  # earlier rows' pipelines (reference cycles) free their decoder buffers only here

    for device in devices(args):
        images, batch_size = sizes(args, device)
        subset = files[:images]
        images = len(subset)
        size = dict(images=images, batch_size=batch_size)
        loads = args.hw_decoder_load if device == "gpu" else [None]
        sweep = [(threads, load) for load in loads for threads in (args.threads or [pipeline_threads(device)])]
        first_threads, first_load = sweep[0]
        gpu_load = {} if device == "cpu" else {"hw_decoder_load": first_load}
        for decode_only, suffix in ((False, ""), (True, "-decode")):
            kind = "decode" if decode_only else "training pipeline"
            for threads, load in sweep:
                hw = {} if load is None else {"hw_decoder_load": load}
                loader = (decode_only_loader(subset, device, batch_size, threads, **hw) if decode_only
                          else training_loader(subset, device, batch_size, threads=threads, **hw)[0])
                add(f"dali-{device}{suffix}", device, loader, kind, threads, hw=load,
                    tag=sweep_tag(device, threads, load, args), **size)
            if device == "cpu":
                add(f"pil-dataloader{suffix}", device, pil_loader(subset, batch_size, cpu_count(), decode_only), kind,
                    cpu_count(), **size)
            if not decode_only:  # NVIDIA's pipeline with each setting ours had: like for like
                for threads, load in sweep:
                    add(f"dali-reference-{device}", device, reference_loader(subset, device, batch_size, threads, load),
                        "reference training pipeline", threads, hw=load, tag=sweep_tag(device, threads, load, args),
                        **size)
            if device == "gpu" and torchvision_available():
                add(f"torchvision-gpu{suffix}", device, TorchvisionGpu(subset, batch_size, decode_only), kind, 1,
                    **size)
        if device == "cpu":
            add("dali-cpu-decode-region", device,
                decode_only_loader(subset, device, batch_size, first_threads, first_load, region=True),
                "decode", first_threads, hw=first_load, **size)
        else:
            add("dali-gpu-decode-plain-upsampling", device,
                decode_only_loader(subset, device, batch_size, first_threads, first_load, fancy_upsampling=False),
                "decode", first_threads, hw=first_load, **size)
        add(f"dali-{device}-no-lighting", device,
            training_loader(subset, device, batch_size, threads=first_threads, lighting=0.0, **gpu_load)[0],
            "training pipeline", first_threads, hw=first_load, **size)
        run = pca_pass(subset, device, batch_size, first_threads)
        rows.append({"name": f"dali-{device}-pca-stats", "base": f"dali-{device}-pca-stats", "device": device,
                     "kind": "statistics pass", "threads": first_threads, "hw_decoder_load": first_load, **size,
                     **timed(run, images, args.trials, warmup=run,
                             profile_to=profile_path(args, f"dali-{device}-pca-stats"))})
    if args.s3 and "cpu" in devices(args):
        images, batch_size = sizes(args, "cpu")
        rows.append(s3_row(files[:images], batch_size, (args.threads or [pipeline_threads("cpu")])[0], args.trials))
    return report("training input pipeline", rows, args, ratio_notes(rows))


def sweep_tag(device: str, threads: int, load, args) -> str:
    """The settings that tell the rows of a sweep apart: '' when nothing is swept."""
    parts = []
    if device == "gpu" and len(args.hw_decoder_load) > 1:
        parts.append(f"hw={load:g}")
    if args.threads and len(args.threads) > 1:
        parts.append(f"threads={threads}")
    return f"[{','.join(parts)}]" if parts else ""


def ratio_notes(rows: list[dict]) -> list[str]:
    """Ratios of rows measured side by side: every dali row against its own decode-only row, and
    against the peers that ran with the same threads (one line per setting of a sweep)."""
    def find(base, like=None):
        for row in rows:
            if row["base"] == base and (like is None or (row["threads"], row["hw_decoder_load"])
                                        == (like["threads"], like["hw_decoder_load"])):
                return row
        return None

    def ratio(a, b):
        return a["images_per_sec"] / b["images_per_sec"]

    notes = []
    for row in rows:
        device, base, name = row["device"], row["base"], row["name"]
        if base == f"dali-{device}":
            if device == "cpu" and (pil := find("pil-dataloader")) is not None:
                notes.append(f"{name} / pil-dataloader = {ratio(row, pil):.2f}x "
                             f"(DALI threads: {row['threads']}, DataLoader workers: {pil['threads']})")
            if (reference := find(f"dali-reference-{device}", like=row)) is not None:
                notes.append(f"{name} / {reference['name']} = {ratio(row, reference):.2f}x "
                             f"(the same files, DALI threads: {row['threads']})")
            if (torchvision := find(f"torchvision-{device}")) is not None:
                notes.append(f"{name} / {torchvision['name']} = {ratio(row, torchvision):.2f}x")
            if (s3 := find("dali-cpu-s3", like=row)) is not None and device == "cpu":
                notes.append(f"dali-cpu-s3 / {name} = {ratio(s3, row):.2f} (the S3 server shares the same cores)")
            if (lighting_off := find(f"dali-{device}-no-lighting", like=row)) is not None:
                notes.append(f"{name}: lighting on / off = {ratio(row, lighting_off):.3f}")
        if base == f"dali-{device}-decode" and (part := find(f"dali-{device}-decode-region", like=row)) is not None:
            notes.append(f"{name}: decoding the training crop's region / the whole image = {ratio(part, row):.3f}")
        if base == "dali-gpu-decode" and (plain := find("dali-gpu-decode-plain-upsampling", like=row)) is not None:
            notes.append(f"{name}: fancy chroma upsampling on / off = {ratio(row, plain):.3f}")
        if base in (f"dali-{device}", "pil-dataloader", "torchvision-gpu"):
            partner = find(f"{base}-decode", like=row if base == f"dali-{device}" else None)
            if partner is not None:
                notes.append(f"{name} runs at {ratio(row, partner):.0%} of its decode-only rate")
    return notes


if __name__ == "__main__":
    main()
