"""The model and training state as types: what a checkpoint, a saved model and `AlexNet` hold.

    ModelBundle  everything prediction needs: the network (shape and weights), PCA, classes,
                 class names, the precision it was trained in
    TrainState   a bundle plus what continuing needs: optimiser, scheduler, warmup, epoch,
                 history, and each rank's reader and RNG state for an exact mid-epoch resume

One file shape serves both (a saved model is a TrainState without optimiser or rank states), and
`load_state` is the one loader behind `AlexNet.load`, `Predictor.from_checkpoint` and resume.
Files of format 1 (before these types) load too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .checkpoint import CheckpointError, first_line, load_checkpoint
from .labels import class_label
from .metrics import HISTORY_KEYS, empty_history
from .model import SHAPE_OPTIONS, AlexNetModule
from .pca import PCA


@dataclass
class ModelBundle:
    net: AlexNetModule  # live: training updates it in place
    pca: PCA
    classes: tuple[str, ...]
    class_names: tuple[str, ...] = ()  # "" per class where the data gives no human-readable name
    precision: str = "fp32"  # what it was trained in; prediction uses it unless told otherwise

    def __post_init__(self):
        self.classes = tuple(self.classes)
        self.class_names = tuple(self.class_names) or ("",) * len(self.classes)
        if self.net.num_classes != len(self.classes):
            raise CheckpointError(f"the network has {self.net.num_classes} outputs but {len(self.classes)} classes")

    def to_dict(self) -> dict:
        return {"model": self.net.state_dict(), "arch": self.net.arch,
                "pca": self.pca.to_dict(), "classes": list(self.classes), "class_names": list(self.class_names),
                "precision": self.precision}

    @classmethod
    def from_dict(cls, values: dict) -> ModelBundle:
        config = values.get("config") or {}
        # Format 1 has no "arch": its config holds the shape options; files before num_classes was
        # recorded take it from the classes.
        arch = values.get("arch") or {name: config[name] for name in SHAPE_OPTIONS if name in config}
        net = AlexNetModule(**{"num_classes": len(values["classes"]), **arch})
        net.load_state_dict(values["model"])
        return cls(net, PCA.from_dict(values["pca"]), tuple(values["classes"]), tuple(values.get("class_names") or ()),
                   values.get("precision") or config.get("precision", "fp32"))

    def label(self, index: int) -> str:
        return class_label(self.classes, self.class_names, index)


@dataclass
class TrainState:
    bundle: ModelBundle
    config: dict  # the TrainConfig that made it (as a dict: a newer config may have more fields)
    epoch: int = 0  # epochs completed
    history: dict = field(default_factory=empty_history)
    optimizer: dict | None = None  # SGD's state_dict; None for a saved model
    scheduler: dict | None = None  # ReduceLROnPlateau's state_dict
    warmup: dict | None = None  # the warmup's state_dict, where the run has one
    global_batch: int | None = None
    ranks: list = field(default_factory=list)  # per rank: reader, RNG, partial-epoch counts (mid-epoch resume)
    version: dict = field(default_factory=dict)  # package version and commit that wrote it
    guard: dict | None = None  # the divergence guard's memory of the recent losses

    def to_dict(self) -> dict:
        values = {**self.bundle.to_dict(), "config": self.config, "epoch": self.epoch, "history": self.history,
                  "global_batch": self.global_batch, "ranks": self.ranks, "world_size": len(self.ranks) or None,
                  **self.version}
        for name, key in (("optimizer", "optimizer"), ("scheduler", "scheduler"), ("warmup", "warmup"),
                          ("guard", "divergence_guard")):
            if getattr(self, name) is not None:
                values[key] = getattr(self, name)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        history = values.get("history") or {}
        return cls(ModelBundle.from_dict(values), dict(values.get("config") or {}),
                   epoch=int(values.get("epoch", len(history.get("loss", [])))),
                   history={key: list(history.get(key, [])) for key in HISTORY_KEYS},
                   optimizer=values.get("optimizer"), scheduler=values.get("scheduler"), warmup=values.get("warmup"),
                   global_batch=values.get("global_batch"), ranks=list(values.get("ranks") or []),
                   version={k: values[k] for k in ("package_version", "commit") if k in values},
                   guard=values.get("divergence_guard"))

    def model_only(self) -> TrainState:
        """What `AlexNet.save` writes: no optimiser, scheduler or rank states (half the size)."""
        return replace(self, optimizer=None, scheduler=None, warmup=None, ranks=[], guard=None)

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None


def model_args(config, num_classes: int) -> dict:
    """The network a TrainConfig asks for, as AlexNetModule's keyword arguments (nanoGPT's
    model_args): its shape options, and init_bias, which only a new network uses."""
    return {"num_classes": num_classes, **{name: getattr(config, name) for name in SHAPE_OPTIONS},
            "init_bias": config.init_bias}


REQUIRED_KEYS = ("model", "classes", "pca")


def load_state(path: str | os.PathLike) -> TrainState:
    """A checkpoint or saved model as a TrainState; CheckpointError naming the file and what is
    wrong with it otherwise."""
    return state_from_checkpoint(load_checkpoint(path), path)


def state_from_checkpoint(values: dict, path: str | os.PathLike) -> TrainState:
    """The TrainState in a loaded checkpoint `values` (read from `path`, named in errors)."""
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise CheckpointError(f"{path} is a checkpoint missing keys ({', '.join(missing)}): it is incomplete or was "
                              "edited; use another checkpoint (last.pt, previous.pt, best.pt)")
    try:
        return TrainState.from_dict(values)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path} holds an alexnet-dali checkpoint that does not fit together "
                              f"({type(e).__name__}: {first_line(e)[:200]})") from None
