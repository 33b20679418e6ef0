"""Batched ten-crop prediction (section 4.1 of the paper: "the network makes a prediction by
extracting five 224×224 patches (the four corner patches and the center patch) as well as their
horizontal reflections ... and averaging the predictions made by the network's softmax layer on
the ten patches").

Encoded images are fed to one DALI pipeline (decode, short side 256, centre 256×256, ten
normalised views) under DALI's default executor, whose outputs torch reads through DLPack. The
next batch is scheduled before the current one reaches the model, so decoding overlaps the
network.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .data import is_image_name
from .errors import DataError, Problem
from .evaluate import TEN_VIEWS, compiled_for_batches, mean_log_softmax
from .loader import GpuHandOff, nchw_view
from .placement import Placement
from .s3 import is_s3_url
from .scan import diagnose_bytes, quiet_native_log, read_bytes
from .state import ModelBundle, load_state


def expand_paths(items: Sequence[str | Path]) -> list[str]:
    """Files (or s3:// objects) as given; a directory expands to its image files (sorted, not
    recursive)."""
    paths = []
    for item in items:
        if is_s3_url(str(item)):
            paths.append(str(item))
            continue
        item = Path(item)
        if item.is_dir():
            found = sorted(str(p) for p in item.iterdir() if p.is_file() and is_image_name(p.name))
            if not found:
                raise DataError(f"{item} holds no image files")
            paths += found
        else:
            paths.append(str(item))
    return paths


class Predictor:
    """Ten-crop predictions of a model bundle, in batches of `batch_size` images."""

    def __init__(self, bundle: ModelBundle, placement: Placement, *, batch_size: int, precision: str | None = None,
                 compile: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.bundle, self.placement, self.batch_size = bundle, placement, batch_size
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
        return ((list(blobs[i:i + self.batch_size]), names[i:i + self.batch_size])
                for i in range(0, len(blobs), self.batch_size))

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
        blobs, problems = [], []
        for path in paths:
            try:
                blobs.append(read_bytes(str(path)))
            except FileNotFoundError:
                problems.append(Problem(str(path), "no such file"))
            except IsADirectoryError:
                problems.append(Problem(str(path), "is a folder, not an image file"))
            except OSError as e:
                problems.append(Problem(str(path), f"cannot be read: {e.strerror or e}"))
        if problems:
            raise DataError(problems, "images that cannot be read")
        return self.predict_bytes(blobs, [str(p) for p in paths])

    def top(self, probabilities: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The n most likely (class, probability) pairs, most likely first."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        order = np.argsort(-probabilities, kind="stable")[:n]
        return [(self.classes[i], float(probabilities[i])) for i in order]
