"""Batched ten-crop prediction (section 4.1 of the paper: "the network makes a prediction by
extracting five 224×224 patches (the four corner patches and the center patch) as well as their
horizontal reflections ... and averaging the predictions made by the network's softmax layer on
the ten patches").

Encoded images are fed to one DALI pipeline (decode, short side 256, centre 256×256, ten
normalised views) under DALI's default executor, whose outputs torch reads through DLPack. The
next batch is scheduled before the current one reaches the model, so decoding overlaps the
network. A batch holds at most `max_pixels` decoded pixels (read from each image's header, as the
scan does), so a folder of huge photos is predicted in bounded memory.

Images already decoded (a PIL image, an HxWx3 uint8 array) are written as binary PPM, which is
lossless and costs one copy, and go through the same pipeline as a file.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import DataError, Problem
from .evaluate import TEN_VIEWS, compiled_for_batches, mean_log_softmax
from .loader import GpuHandOff, nchw_view
from .placement import Placement
from .scan import MAX_SCAN_PIXELS, diagnose_bytes, header_pixels, pixel_batches, quiet_native_log, read_bytes
from .sources import predicted_files
from .state import ModelBundle, load_state

ONE_IMAGE = ("a path (str or pathlib.Path, s3:// too), encoded image bytes (JPEG, PNG, ...), a PIL image or an "
             "HxWx3 uint8 RGB numpy array")
ACCEPTED = f"{ONE_IMAGE}, or a list of these"


def expand_paths(items: Sequence[str | Path]) -> list[str]:
    """Files (or s3:// objects) as given; a directory, or an s3:// prefix, expands to its image
    files (sorted, not recursive)."""
    return [path for item in items for path in predicted_files(item)]


def is_one_image(item) -> bool:
    """Whether `item` is one image (as opposed to a list of them) in one of the accepted forms,
    or an array (which is refused unless it is HxWx3 uint8, never taken as a list)."""
    from PIL import Image

    return isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image))


def describe(item) -> str:
    """What an item is, for an error message."""
    from PIL import Image

    if isinstance(item, np.ndarray):
        return f"a {item.dtype} array of shape {item.shape}"
    if isinstance(item, Image.Image):
        return f"a {item.width}x{item.height} {item.mode} PIL image"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{len(bytes(item))} encoded bytes"
    kind = type(item)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    shape = f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else ""  # a tensor, say
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}{shape}"


def ppm(pixels: np.ndarray) -> bytes:
    """An HxWx3 uint8 image as binary PPM: lossless, no compression to pay for, and read by DALI's
    decoder like any image file."""
    height, width, _ = pixels.shape
    return f"P6\n{width} {height}\n255\n".encode() + np.ascontiguousarray(pixels).tobytes()


def in_memory_image(item) -> bytes | None:
    """Encoded bytes for DALI from a bytes-like, a PIL image or an HxWx3 uint8 array; None for
    anything else. OSError where PIL cannot read a lazily opened image."""
    from PIL import Image, ImageOps

    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, Image.Image):
        # As its file is read: EXIF orientation applied (DALI's decoder does), then RGB.
        image = ImageOps.exif_transpose(item)
        return ppm(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
    if (isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3
            and item.shape[0] > 0 and item.shape[1] > 0):
        return ppm(item)
    return None


def as_image_list(images) -> list:
    """One image -> [it]; a list, tuple or other iterable of images -> a list. TypeError saying
    what is accepted for anything else."""
    if is_one_image(images):
        return [images]
    # an array of another library (a tensor) is one image of a kind not taken, not a list of rows
    if isinstance(images, (dict, set, frozenset)) or hasattr(images, "shape") or not isinstance(images, Iterable):
        raise TypeError(f"images must be {ACCEPTED}; got {describe(images)}")
    return list(images)


class Predictor:
    """Ten-crop predictions of a model bundle, in batches of at most `batch_size` images and
    `max_pixels` decoded pixels (an image larger than that is a batch of its own)."""

    def __init__(self, bundle: ModelBundle, placement: Placement, *, batch_size: int, precision: str | None = None,
                 compile: bool = False, max_pixels: int = MAX_SCAN_PIXELS):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.bundle, self.placement, self.batch_size, self.max_pixels = bundle, placement, batch_size, max_pixels
        self.precision = precision or bundle.precision  # the precision it was trained in, unless told
        self.net = placement.put_model(bundle.net).eval()
        # Ten-crop is ten forward passes an image, so the network is the limit: on an H100 it
        # alone does 2,597 images/s eager and 7,111 compiled (bf16), the pipeline alone 10,989.
        self.forward = compiled_for_batches(self.net, batch_size * TEN_VIEWS) if compile else self.net
        self._pipe = None
        self._hand_off = GpuHandOff()

    @classmethod
    def from_checkpoint(cls, path: str | Path, placement: Placement, **options) -> Predictor:
        return cls(load_state(path).bundle, placement, **options)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def _pipeline(self):
        if self._pipe is None:
            from .pipelines.tencrop import tencrop_pipeline

            # prefetch 1: the inputs are fed by hand (feed_input), one batch ahead of the model,
            # so DALI must not run ahead of what has been fed
            self._pipe = tencrop_pipeline(**self.placement.pipeline_args(), mean=self.bundle.pca.mean,
                                          batch_size=self.batch_size, prefetch_queue_depth=1)
            self._pipe.build()
        return self._pipe

    def _views(self, batches: Iterable[tuple[list[bytes], list[str]]]):
        """[B, 10, 3, 224, 224] views per batch, on the model's device; batch i+1 is scheduled
        before batch i is handed out. A file DALI cannot decode is named in a DataError (and the
        pipeline rebuilt: after an error it stays broken)."""
        from .pipelines.tencrop import ENCODED_INPUT

        pipe, pending = self._pipeline(), deque()
        batches = iter(batches)

        def schedule() -> None:
            batch = next(batches, None)
            if batch is not None:
                pipe.feed_input(ENCODED_INPUT, [np.frombuffer(b, dtype=np.uint8) for b in batch[0]])
                pipe.schedule_run()
                pending.append(batch)

        try:
            schedule()
            while pending:
                (output,) = pipe.share_outputs()
                with torch.device(self.placement.device):
                    (views,) = self._hand_off.own(torch.from_dlpack(output.as_tensor()))
                pipe.release_outputs()
                pending.popleft()
                schedule()  # DALI decodes the next batch while the model runs on this one
                yield nchw_view(views)
        except (RuntimeError, IndexError):
            self._pipe = None
            problems = [Problem(name, reason) for blobs, names in pending for name, blob in zip(names, blobs)
                        if (reason := diagnose_bytes(blob))]
            names = [name for _, batch_names in pending for name in batch_names]
            raise DataError(problems or [Problem(", ".join(names), "one of these cannot be decoded by DALI")],
                            "images that cannot be decoded") from None

    def _batches(self, blobs: Sequence[bytes], names: Sequence[str] | None):
        names = list(names) if names is not None else [f"<image {i}>" for i in range(len(blobs))]
        empty = [Problem(name, "empty file (0 bytes)") for blob, name in zip(blobs, names) if not blob]
        if empty:
            raise DataError(empty, "images that cannot be decoded")
        # DALI holds every decoded image of a batch at once: bound the batch by pixels, from the
        # headers alone (one 20000×20000 PNG decodes to 1.2 GB)
        sizes = [header_pixels(blob) for blob in blobs]
        return (([blobs[i] for i in batch], [names[i] for i in batch])
                for batch in pixel_batches(sizes, self.batch_size, self.max_pixels))

    def views(self, blobs: Sequence[bytes], names: Sequence[str] | None = None):
        """The ten views of each encoded image, [B, 10, 3, 224, 224] per batch on the model's
        device, valid until the next batch is asked for (benchmarks/predict.py times this alone)."""
        batches = self._batches(blobs, names)
        with quiet_native_log():  # DALI's own [ERROR] lines about a bad file: the DataError names it
            yield from self._views(batches)

    def crops(self, blobs: Sequence[bytes], names: Sequence[str] | None = None) -> torch.Tensor:
        """[N, 10, 3, 224, 224]: the ten views of each encoded image, on the model's device."""
        return torch.cat([views.clone() for views in self.views(blobs, names)])

    @torch.inference_mode()
    def predict_bytes(self, blobs: Sequence[bytes], names: Sequence[str] | None = None) -> np.ndarray:
        """[N, C] probabilities, each row the ten-crop mean of the softmax."""
        rows = [mean_log_softmax(self.forward, views, self.precision).exp() for views in self.views(blobs, names)]
        return torch.cat(rows).cpu().numpy() if rows else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        return self.predict_images([os.fspath(path) for path in paths])

    def predict_images(self, images: Sequence) -> np.ndarray:
        """[N, C] probabilities for a list of images, each a path, encoded bytes, a PIL image or an
        HxWx3 uint8 RGB array. TypeError naming every item of another kind; DataError naming
        every file that cannot be read."""
        blobs, names, problems, refused = [], [], [], []
        for index, item in enumerate(images):
            if isinstance(item, (str, os.PathLike)):
                path = os.fspath(item)
                names.append(path)
                try:
                    blobs.append(read_bytes(path))
                except FileNotFoundError:
                    problems.append(Problem(path, "no such file"))
                except IsADirectoryError:
                    problems.append(Problem(path, "is a folder, not an image file"))
                except OSError as e:
                    problems.append(Problem(path, f"cannot be read: {e.strerror or e}"))
                continue
            names.append(name := f"image {index} ({describe(item)})")
            try:
                encoded = in_memory_image(item)
            except OSError as e:  # a PIL image opened from a damaged file
                problems.append(Problem(name, f"PIL cannot read it: {e}"))
                continue
            if encoded is None:
                refused.append(name)
            else:
                blobs.append(encoded)
        if refused:
            raise TypeError(f"images must be {ACCEPTED}; got {', '.join(refused)}")
        if problems:
            raise DataError(problems, "images that cannot be read")
        return self.predict_bytes(blobs, names)

    def top(self, probabilities: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The n most likely (class, probability) pairs, most likely first."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        order = np.argsort(-probabilities, kind="stable")[:n]
        return [(self.classes[i], float(probabilities[i])) for i in order]
