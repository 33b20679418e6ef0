"""Shared helpers: real image files written by the tests, small data sets in both layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYTHONUNBUFFERED", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def smooth_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A colourful image of low-frequency content (like a photo, unlike noise), uint8 HWC."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 3.0, size=2) / max(width, height)
        phase = rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 100 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def write_image(path: Path, width: int, height: int, seed: int = 0, *, array: np.ndarray | None = None,
                mode: str = "RGB", **save_options) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(smooth_image(width, height, seed) if array is None else array)
    if mode != "RGB":
        image = image.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_options.setdefault("quality", 92)
    image.save(path, **save_options)
    return path


CLASS_TINTS = np.array([[40, -20, -20], [-20, 40, -20], [-20, -20, 40], [30, 30, -40]], dtype=np.float64)


def class_colour_image(width: int, height: int, class_index: int, seed: int) -> np.ndarray:
    """Photo-like smooth content at half contrast, tinted by the class (a moderate colour cue, as
    natural classes have): learnable in a few steps without the blow-ups of flat colours."""
    image = 127.5 + 0.5 * (smooth_image(width, height, seed).astype(np.float64) - 127.5)
    return np.clip(image + CLASS_TINTS[class_index % len(CLASS_TINTS)], 0, 255).astype(np.uint8)


def make_original_layout(root: Path, per_split: dict[str, int] | None = None, classes=("cat", "dog"),
                         size=(96, 80)) -> dict:
    """DATA/{train,val}/img_N.jpg + labels.json + label_encoding.json (the original project's layout)."""
    per_split = per_split or {"train": 8, "val": 4}
    labels = {}
    for split, count in per_split.items():
        for i in range(count):
            image_id = f"{split}_{i:03d}"
            class_index = i % len(classes)
            write_image(root / split / f"{image_id}.jpg", *size,
                        array=class_colour_image(size[0], size[1], class_index, seed=zlib.crc32(f"{split}/{i}".encode())))
            labels[image_id] = classes[class_index]
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "label_encoding.json").write_text(json.dumps({c: i for i, c in enumerate(classes)}))
    return {"data": root, "labels": root / "labels.json", "label_encoding": root / "label_encoding.json"}


def make_class_folders(root: Path, per_split: dict[str, int] | None = None, classes=("ant", "bee"),
                       size=(96, 80)) -> Path:
    """DATA/{train,val}/<class>/N.jpg (ImageFolder layout)."""
    per_split = per_split or {"train": 4, "val": 2}
    for split, per_class in per_split.items():
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / split / name / f"{i:03d}.jpg", *size,
                            array=class_colour_image(size[0], size[1], c, seed=zlib.crc32(f"{split}/{name}/{i}".encode())))
    return root


def tiny_config(layout, out, **changes):
    """A training config for a small original-layout set: CPU, batch 4, one DALI thread."""
    from alexnet_dali.config import TrainConfig

    values = dict(data=str(layout["data"]), labels=str(layout["labels"]), label_encoding=str(layout["label_encoding"]),
                  out=str(out), epochs=2, batch_size=4, lr=3e-5, device="cpu", dali_threads=1)
    return TrainConfig(**{**values, **changes})


def layout_args(layout) -> list:
    return [layout["data"], "--labels", layout["labels"], "--label-encoding", layout["label_encoding"]]


def train_args(layout, out, *extra) -> list:
    """`alexnet-dali train` arguments for a small original-layout set (as tiny_config)."""
    return ["train", *layout_args(layout), "--out", out, "--batch-size", "4", "--lr", "3e-5", "--device", "cpu",
            "--dali-threads", "1", *map(str, extra)]


def cpu_placement(threads: int = 1):
    """Where a test's pipelines and model run: the CPU."""
    from alexnet_dali.placement import place

    return place("cpu", threads=threads, hw_decoder_load=0.65)


@pytest.fixture
def original_layout(tmp_path) -> dict:
    return make_original_layout(tmp_path / "data")


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data")


def run_cli(*args, cwd=None, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """`python -m alexnet_dali ARGS` in a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "alexnet_dali", *map(str, args)], cwd=cwd, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result
