"""Shared helpers: real image files written by the tests, small data sets in both layouts."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch

# pytest-xdist runs the suite in 2 worker processes (setup.cfg): one torch thread each, and in
# the processes they start, so that two workers share the machine's cores without fighting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The tests' folders in memory where Linux offers it: every epoch of a test run writes and fsyncs
# a 466 MB checkpoint, 0.3 s into /dev/shm against 0.4-1.9 s onto this disk. A passed test's
# folder is removed as it ends (setup.cfg's tmp_path_retention_policy), so memory holds only the
# running tests' folders and the module fixtures'. PYTEST_DEBUG_TEMPROOT set by hand wins.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/dev/shm")

# glibc gives every freed block over 32 MB back to the kernel, and the next step page-faults it in
# again: the fc6 gradient alone is 151 MB. In 8 steps of AlexNet at batch 4 on one core that
# was 0.9 s of system time in 5.5 s (getrusage), 0.07 s without it. The tests' processes
# (xdist's workers and what they start inherit the variables) keep freed memory for reuse.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 40))

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(scope="module", autouse=True)
def module_folders_removed(request, tmp_path_factory):
    """The folders a module's fixtures made (their runs hold 0.5-2 GB of checkpoints, in memory
    under /dev/shm) are removed as the module ends, unless one of its tests failed: the policy
    setup.cfg sets for a test's own folder. Autouse, so it is set up before the module's other
    fixtures and torn down after them."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


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



@pytest.fixture
def compiled_without_codegen(monkeypatch):
    """torch.compile with the aot_eager backend: dynamo and AOTAutograd as in a real compile, but
    not inductor's code generation (about 45 s for AlexNet on 2 cores; the GPU tests run it).
    Yields the modules compiled; dynamo's caches and counters start and end empty."""
    import torch

    compile_for_real, compiled = torch.compile, []

    def compile_with_aot_eager(model, **options):
        compiled.append(model)
        return compile_for_real(model, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield compiled
    torch._dynamo.reset()


def graphs_captured() -> int:
    """Graphs dynamo has captured since compiled_without_codegen began."""
    import torch

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def run_cli(*args, cwd=None, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """`python -m alexnet_dali ARGS` in a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "alexnet_dali", *map(str, args)], cwd=cwd, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_main(*args, capfd=None, check=False) -> subprocess.CompletedProcess:
    """`alexnet-dali ARGS` through its main() in this process: the command's own code without a
    process start (torch and DALI imports: seconds of CPU each), for tests of what a command does
    rather than of its process. With capfd, what it printed, DALI's C++ output included. An
    exception escaping main() fails the test, as the traceback a user would see."""
    from alexnet_dali.cli import main

    if capfd is not None:
        capfd.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as ended:  # argparse's usage errors and --help, as the process would end
        status = ended.code if isinstance(ended.code, int) else int(ended.code is not None)
    out, err = capfd.readouterr() if capfd is not None else ("", "")
    if check and status != 0:
        raise AssertionError(f"exit {status}\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(args, status, out, err)


def wait_for_progress(process: subprocess.Popen, text: str, timeout: float = 120) -> None:
    """Read the progress bar (stderr, redrawn with carriage returns) until it shows `text`."""
    deadline, seen = time.monotonic() + timeout, ""
    while text not in seen:
        char = process.stderr.read(1)
        assert char and time.monotonic() < deadline, f"no {text!r} in the progress bar: {seen[-500:]!r}"
        seen = seen[-200:] + char


def torchrun(*args, nproc=2, env=None, max_restarts=0, timeout=300, popen=False):
    """`torchrun --standalone` of a script or module with `nproc` CPU processes (gloo); the tests'
    folder is on PYTHONPATH for the drivers in it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--max-restarts={max_restarts}", *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **(env or {})}
    if popen:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)


# -- ImageNet as distributed ------------------------------------------------------------------

SYNSET_NAMES = {
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n01484850": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
}
UNUSED_SYNSET = ("n01491361", "tiger shark, Galeocerdo cuvieri")  # in the mapping, not in this train set


def make_imagenet(root: Path, *, tree: tuple[str, ...] = (), csv_in_val: bool = False, mapping: bool = True,
                  train_per_class: int = 2, val_images: int = 7) -> dict:
    """A look-alike of the ILSVRC-2012 download: IMAGES/train/<synset>/<synset>_<n>.JPEG,
    IMAGES/val/ILSVRC2012_val_<n>.JPEG, LOC_val_solution.csv (rows in no order, several boxes per
    row) and LOC_synset_mapping.txt. IMAGES is root/<tree>. Returns the ground truth it wrote."""
    images = root.joinpath(*tree)
    synsets = sorted(SYNSET_NAMES)
    for c, synset in enumerate(synsets):
        for i in range(train_per_class):
            write_image(images / "train" / synset / f"{synset}_{i + 1}.JPEG", 40, 32, seed=10 * c + i)
    rng = random.Random(0)
    truth = {}
    for n in range(1, val_images + 1):
        image_id = f"ILSVRC2012_val_{n:08d}"
        truth[image_id] = rng.choice(synsets)
        write_image(images / "val" / f"{image_id}.JPEG", 40, 32, seed=100 + n)
    rows = [f"{image_id},{synset} 10 12 30 28 {synset} 1 2 20 22 " for image_id, synset in truth.items()]
    rng.shuffle(rows)
    csv_path = (images / "val" if csv_in_val else root) / "LOC_val_solution.csv"
    csv_path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    if mapping:
        lines = [f"{s} {name}" for s, name in sorted({**SYNSET_NAMES, UNUSED_SYNSET[0]: UNUSED_SYNSET[1]}.items())]
        (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "images": images, "csv": csv_path, "truth": truth}


def weights(path):
    """A checkpoint's network weights."""
    return torch.load(path, weights_only=True)["model"]


def assert_same_run(out, reference):
    """The run in `out` (interrupted and resumed, say) matches the uninterrupted `reference`:
    history and final weights."""
    ours = json.loads((out / "history.json").read_text())
    uninterrupted = json.loads((reference / "history.json").read_text())
    assert ours["lr"] == uninterrupted["lr"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ours[key] == pytest.approx(uninterrupted[key], rel=1e-5), key
    mine, theirs = weights(out / "last.pt"), weights(reference / "last.pt")
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
