"""What every benchmark shares: the ImageNet-like data set, the machine description, timing with
several trials, the printed table and the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-dali" / "benchmarks"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="all",
                        help="which rows to run (all: the CPU rows, and the GPU rows where a GPU is present)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder of JPEGs (searched recursively); default: a generated ImageNet-like set")
    parser.add_argument("--images", type=int, default=512, help="images per trial (default: 512)")
    # 128: the paper's batch and the trainer's default. DALI's CPU threads idle less per image in
    # bigger batches (2 cores: 1.68 of 2 cores busy at 64, 1.90 at 128).
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--trials", type=int, default=3, help="timed trials per row; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


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


def imagenet_like(count: int, seed: int = 0) -> list[str]:
    """`count` 500×375 (and a few 375×500) JPEGs at quality 90, generated once and cached."""
    from PIL import Image

    folder = CACHE / f"imagenet-like-{count}-{seed}"
    done = folder / "complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(count):
            width, height = (375, 500) if i % 5 == 4 else (500, 375)
            Image.fromarray(natural_image(width, height, rng)).save(folder / f"{i:06d}.jpg", quality=90)
        done.write_text("")
    return sorted(str(p) for p in folder.glob("*.jpg"))


def data_files(args) -> list[str]:
    if args.data is None:
        return imagenet_like(args.images)
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        sys.exit(f"error: no JPEG files under {args.data}")
    return files[: args.images] if len(files) >= args.images else files


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def wants(args, device: str) -> bool:
    return args.device in (device, "all") and (device == "cpu" or gpu_present())


def timed(run_once, images: int, trials: int, warmup=None) -> dict:
    """images/sec of `run_once()` (which processes `images` images), median over trials."""
    if warmup is not None:
        warmup()
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        run_once()
        rates.append(images / (time.perf_counter() - start))
    return {"images_per_sec": statistics.median(rates), "trials": [round(r, 2) for r in rates]}


def report(title: str, rows: list[dict], args, notes: list[str] = ()) -> dict:
    """Print the table (with ratios to the first row of each device) and write the JSON."""
    result = {"benchmark": title, "rows": rows, "machine": machine(),
              "settings": {"images": args.images, "batch_size": args.batch_size, "trials": args.trials,
                           "data": str(args.data) if args.data else "generated ImageNet-like 500×375 JPEGs, q90"},
              "notes": list(notes)}
    print(f"\n{title}  ({result['machine']['cpu']}, {result['machine']['cpu_cores']} cores"
          + (f", {result['machine']['gpu']}" if result["machine"]["gpu"] else ", no GPU") + ")")
    width = max(len(r["name"]) for r in rows) if rows else 10
    print(f"{'name':{width}s}  {'device':6s}  {'images/s':>9s}  trials")
    for row in rows:
        print(f"{row['name']:{width}s}  {row['device']:6s}  {row['images_per_sec']:9.1f}  "
              f"{', '.join(f'{t:.1f}' for t in row.get('trials', []))}")
    for note in notes:
        print(note)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result
