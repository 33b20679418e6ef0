"""`AlexNet`: the original project's API, on top of the trainer and the ten-crop predictor.

    model = AlexNet("data", "labels.json", "label_encoding.json")   # indexes, checks, PCA
    history = model.fit(epochs=5)
    model.predict("a.jpg")            # [num_classes], sums to 1
    model.predict_n("a.jpg", n=5)     # [(label, probability), ...]
    model.save("model.pt"); AlexNet.load("model.pt")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistInfo, resolve_device
from .model import AlexNetModule
from .pca import PCA
from .predict import Predictor, full_names
from .prepare import prepare_data
from .train import HISTORY_KEYS, train


def default_run_dir() -> str:
    return str(Path("runs") / time.strftime("alexnet-%Y%m%d-%H%M%S"))


class AlexNet:
    """A trainable, saveable AlexNet bound to a data set (or, after `load`, to none)."""

    def __init__(self, data_path: str | Path, label_path: str | Path | None = None,
                 label_encoding: str | Path | None = None, *, batch_size: int = 128, device: str = "auto",
                 out_dir: str | Path | None = None, verbose: bool = True, **options):
        """Index the data, check every image decodes, and compute (or load the cached) RGB PCA.
        `options` are any other TrainConfig fields (lr, epochs, lighting, groups, seed, ...)."""
        self.config = TrainConfig(
            data=str(data_path), labels=None if label_path is None else str(label_path),
            label_encoding=None if label_encoding is None else str(label_encoding), batch_size=batch_size,
            device=device, out=str(out_dir) if out_dir is not None else default_run_dir(), **options,
        )
        self._log = print if verbose else (lambda *a, **k: None)
        kind = resolve_device(device)
        torch_device = torch.device("cuda", torch.cuda.current_device()) if kind == "gpu" else torch.device("cpu")
        self.data = prepare_data(self.config, DistInfo(0, 0, 1, 1, torch_device), self._log)
        self.pca: PCA = self.data.pca
        self.classes: tuple[str, ...] = self.data.train.classes
        self.class_names: tuple[str, ...] = full_names(self.data.train.class_names, len(self.classes))
        torch.manual_seed(self.config.seed)  # the same initial weights as `alexnet-dali train --seed`
        self.net = AlexNetModule(len(self.classes), self.config.groups, self.config.dropout)
        self.history: dict = {key: [] for key in HISTORY_KEYS}
        self._predictor: Predictor | None = None

    # -- training ------------------------------------------------------------------------------
    def fit(self, epochs: int = 1) -> dict:
        """Train `epochs` more epochs (a second call continues the first, optimiser state and lr
        schedule included). Returns the history: per-epoch lists of loss, accuracy, top5,
        val_loss, val_accuracy, val_top5, lr, images_per_sec."""
        if self.config.data == "":
            raise RuntimeError("this model was loaded without a data set; build AlexNet(data_path, ...) to train")
        done = len(self.history["loss"])
        config = self.config.replace(epochs=done + epochs, resume=done > 0)
        result = train(config, net=self.net, data=self.data, log=self._log)
        self.history, self.net = result.history, result.net
        self._predictor = None
        return self.history

    # -- inference -------------------------------------------------------------------------------
    def _predictor_for_use(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor(self.net, self.pca, self.classes, device=self.config.device,
                                        class_names=self.class_names)
        return self._predictor

    def predict(self, images: str | Path | Sequence[str | Path]) -> np.ndarray:
        """Ten-crop softmax average: [num_classes] for one path, [N, num_classes] for a list."""
        single = isinstance(images, (str, Path))
        probabilities = self._predictor_for_use().predict_files([images] if single else list(images))
        return probabilities[0] if single else probabilities

    def predict_n(self, image: str | Path, n: int = 5) -> list[tuple[str, float]]:
        """The n most likely (label, probability) pairs, most likely first."""
        return self._predictor_for_use().top(self.predict(image), n)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One file with everything prediction needs: weights, class names, PCA, config, history."""
        return save_checkpoint({
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "classes": list(self.classes), "class_names": list(self.class_names), "pca": self.pca.to_dict(),
            "config": self.config.to_dict(),
            "history": self.history, "epoch": len(self.history["loss"]),
        }, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> AlexNet:
        """A model from `save` or a training checkpoint (last.pt, best.pt); needs no data set."""
        state = load_checkpoint(path)
        model = cls.__new__(cls)
        saved = state.get("config", {})
        model.config = TrainConfig.from_dict({**saved, "device": device}) if saved else TrainConfig(device=device)
        model._log = print
        model.data = None
        model.pca = PCA.from_dict(state["pca"])
        model.classes = tuple(state["classes"])
        model.class_names = full_names(state.get("class_names", ()), len(model.classes))
        model.net = AlexNetModule(len(model.classes), model.config.groups, model.config.dropout)
        model.net.load_state_dict(state["model"])
        model.history = {key: list(state.get("history", {}).get(key, [])) for key in HISTORY_KEYS}
        model._predictor = None
        return model
