"""`AlexNet`: the original project's API, on top of the trainer and the ten-crop predictor.

    model = AlexNet("data", "labels.json", "label_encoding.json")   # indexes, checks, PCA
    history = model.fit(epochs=5)
    model.predict("a.jpg")            # [num_classes], sums to 1; also a PIL image, an HxWx3 uint8
                                      # array, encoded bytes, or a list of any of these
    model.predict_n("a.jpg", n=5)     # [(label, probability), ...]
    model.save("model.pt"); AlexNet.load("model.pt")

The model's state (weights, optimiser, schedule, history) lives in memory: `fit` continues it,
whatever was done to `model.net` in between, and never reads it back from a run directory.
The run directory (out_dir) is checked before any work and locked at the first `fit`, for the
object's life: between two fits no other run (object or process) can write into it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from .checkpoint import LAST, PREVIOUS, CheckpointError, save_checkpoint
from .config import TrainConfig
from .log import logger, setup_logging
from .predict import ONE_IMAGE, Predictor, as_image_list, describe, is_one_image
from .dataset import TrainingData, load_training_data
from .rundir import RunLock, check_out_dir, check_outside_data
from .state import TrainState, load_state
from .train import new_state, start_process, train

PREDICT_BATCH = 32  # images per ten-crop batch (320 views through the network)


_default_run_dirs: set[str] = set()  # handed out by this process (a run directory is made at the first fit)


def default_run_dir() -> str:
    """runs/alexnet-<date>-<time>, with -2, -3, ... where that name is taken: by a model made
    earlier in the same second, or by a run directory already on disk."""
    base = Path("runs") / time.strftime("alexnet-%Y%m%d-%H%M%S")
    candidate, n = str(base), 1
    while candidate in _default_run_dirs or os.path.lexists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    _default_run_dirs.add(candidate)
    return candidate


class AlexNet:
    """A trainable, saveable AlexNet bound to a data set (or, after `load`, to the one it was
    trained on, if that is still there)."""

    def __init__(self, data_path: str | Path, label_path: str | Path | None = None,
                 label_encoding: str | Path | None = None, *, batch_size: int = 128, device: str = "auto",
                 out_dir: str | Path | None = None, verbose: bool = True, **options):
        """Index the data, check every image decodes, and compute (or load the cached) RGB PCA.
        `options` are any other TrainConfig fields (lr, epochs, lighting, groups, seed, ...)."""
        config = TrainConfig(
            data=str(data_path), labels=None if label_path is None else str(label_path),
            label_encoding=None if label_encoding is None else str(label_encoding), batch_size=batch_size,
            device=device, out=str(out_dir) if out_dir is not None else default_run_dir(), **options,
        )
        check_out_dir(config.out, "out_dir")  # before the scan and the PCA pass, which take minutes on ImageNet
        check_outside_data(config, "out_dir", "cache_dir")
        self._start(config, verbose)
        self.data: TrainingData | None = load_training_data(config, self._dist, self._placement)
        self.state: TrainState = new_state(config, self.data)

    def _start(self, config: TrainConfig, verbose: bool) -> None:
        self.config = config
        setup_logging(0)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        self._dist, self._placement = start_process(config)
        self._predictor: Predictor | None = None
        self._run_lock: RunLock | None = None  # taken by the first fit, held while the object lives

    # -- what the model holds --------------------------------------------------------------------
    @property
    def net(self):
        """The torch.nn.Module (AlexNetModule); `fit` and `predict` use whatever it holds now."""
        return self.state.bundle.net

    @net.setter
    def net(self, net) -> None:
        if net.num_classes != len(self.classes):
            raise ValueError(f"the network has {net.num_classes} outputs, this model has {len(self.classes)} classes")
        self.state.bundle.net = net
        self._predictor = None

    @property
    def pca(self):
        return self.state.bundle.pca

    @property
    def classes(self) -> tuple[str, ...]:
        return self.state.bundle.classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.state.bundle.class_names

    @property
    def history(self) -> dict:
        return self.state.history

    # -- training ------------------------------------------------------------------------------
    def fit(self, epochs: int = 1) -> dict:
        """Train `epochs` more epochs, continuing from the model's current weights (optimiser state
        and lr schedule included, where it has them). Returns the history: per-epoch lists of
        loss, accuracy, top5, val_loss, val_accuracy, val_top5, lr, images_per_sec."""
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if self._run_lock is None:
            self._run_lock = self._lock_new_run_dir()
        if self.data is None:
            if not self.config.data:
                raise RuntimeError("this model has no data set to train on: build AlexNet(data_path, ...) and copy "
                                   "the weights into its net, or save a model that records its data")
            self.data = load_training_data(self.config, self._dist, self._placement)
        config = self.config.replace(epochs=self.state.epoch + epochs)
        self.state = train(config, self.state, data=self.data, dist=self._dist, placement=self._placement)
        self._predictor = None
        return self.history

    def _lock_new_run_dir(self) -> RunLock:
        """The first fit writes a run of its own: out_dir must hold no other run's checkpoints
        (the CLI's `train --resume` is the way to continue a run directory)."""
        check_outside_data(self.config, "out_dir", "cache_dir")
        lock = RunLock(self.config.out, "out_dir")
        held = [name for name in (LAST, PREVIOUS) if (Path(self.config.out) / name).exists()]
        if held:
            lock.release()
            raise CheckpointError(f"out_dir {self.config.out} already holds a training run ({', '.join(held)}); fit "
                                  "writes a run of its own and would overwrite it: pass another out_dir, or none for "
                                  "a new one under runs/ (to continue that run, use the command line's train --resume)")
        return lock

    # -- inference -------------------------------------------------------------------------------
    def _predictor_for_use(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor(self.state.bundle, self._placement, batch_size=PREDICT_BATCH)
        return self._predictor

    def predict(self, images) -> np.ndarray:
        """Ten-crop softmax average: [num_classes] for one image, [N, num_classes] for a list.
        An image is a path (s3:// too), encoded bytes, a PIL image or an HxWx3 uint8 RGB array;
        a list may mix them. Decoded images go through the same pipeline as files."""
        single = is_one_image(images)
        probabilities = self._predictor_for_use().predict_images(as_image_list(images))
        return probabilities[0] if single else probabilities

    def predict_n(self, image, n: int = 5) -> list[tuple[str, float]]:
        """The n most likely (label, probability) pairs for one image (any form predict takes),
        most likely first."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not is_one_image(image):
            raise TypeError(f"predict_n takes one image: {ONE_IMAGE}; "
                            f"got {describe(image)} (predict takes a list)")
        return self._predictor_for_use().top(self.predict(image), n)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One file with everything prediction needs: weights, classes, PCA, config, history.
        `path` is a file name in a folder that exists."""
        path = Path(path)
        if not path.is_dir() and not path.parent.is_dir():
            raise CheckpointError(f"cannot save to {path}: the folder {path.parent} does not exist; make it first or "
                                  "pass a path in a folder that exists")
        return save_checkpoint(self.state.model_only().to_dict(), path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", *, out_dir: str | Path | None = None,
             verbose: bool = True) -> AlexNet:
        """A model from `save` or a training checkpoint (last.pt, best.pt); needs no data set to
        predict. `fit` trains its weights on the data it was trained on, into `out_dir` (default:
        a new run directory)."""
        state = load_state(path)
        config = TrainConfig.from_dict({**TrainConfig.recorded(state.config), "device": device, "resume": False,
                                        "out": str(out_dir) if out_dir is not None else default_run_dir()})
        model = cls.__new__(cls)
        model._start(config, verbose)
        model.data, model.state = None, state
        return model
