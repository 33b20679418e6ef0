"""The one training configuration: built once (defaults, then the command line or the API's
keyword arguments), passed explicitly, written to the run directory and into every checkpoint."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field


# 1.0, not DALI's 0.65 (tuned on an A100): on an H100, 22,900 images/s against 12,900 at 8 threads
# (an H200: 17,300 against 10,600; benchmarks/RESULTS.md). GPUs without the hardware decoder ignore it.
HW_DECODER_LOAD = 1.0

# The biases of conv2, conv4, conv5, fc6 and fc7 at initialisation: Caffe's 0.1 (model.py).
# Runs recorded before the option existed were initialised with the paper's 1.
INIT_BIAS = 0.1
INIT_BIAS_BEFORE_THE_OPTION = 1.0


class ConfigError(ValueError):
    """A configuration value (from the command line or the API) that cannot be used."""


@dataclass(frozen=True)
class Bound:
    """The values a number option may take: what a real run needs, with the reason, so that a
    typo (--prefetch 1000, --seed -1) is refused in one line before any work."""

    low: float
    high: float
    why: str
    low_open: bool = False  # low itself is refused
    high_open: bool = False  # high itself is refused

    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def holds(self, value) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return above_low and below_high


# Every number option (tests/test_learning.py checks that none is missing). None: not given.
BOUNDS = {
    "epochs": Bound(1, 10_000, "the paper trains about 90 epochs"),
    "seed": Bound(0, 2**32 - 1, "a 32-bit seed, which numpy, torch and DALI all take"),
    "checkpoint_every": Bound(0, 10_080, "minutes, at most a week"),
    "dist_timeout": Bound(0, 1_440, "minutes, at most a day", low_open=True),
    "batch_size": Bound(1, 65_536, "the largest ImageNet batches published are 32,768 (LARS)"),
    "lr": Bound(0, 10, "the paper's 0.01 scaled to a batch of 65,536 is 5.12; far above, SGD diverges at once",
                low_open=True),
    "warmup_epochs": Bound(0, 100, "Goyal et al. warm up for 5 epochs; a longer ramp never ends in a real run"),
    "momentum": Bound(0, 1, "at 1 or more the velocity never decays", high_open=True),
    "weight_decay": Bound(0, 1, "SGD scales the weights by 1 - lr x decay a step; the paper's decay is 5e-4",
                          high_open=True),
    "lr_patience": Bound(0, 10_000, "epochs, as many as --epochs allows"),
    "min_lr": Bound(0, 10, "an lr, bounded as --lr"),
    "dropout": Bound(0, 1, "a probability; at 1 fc6 and fc7 pass nothing", high_open=True),
    "init_bias": Bound(0, 10, "10x the paper's 1; far larger biases swamp the inputs and overflow"),
    "lighting": Bound(0, 10, "the std of alpha, 100x the paper's 0.1"),
    "pca_images": Bound(0, 2**31 - 1, "images; 0 or more than the split holds: every training image"),
    "dali_threads": Bound(0, 1_024, "threads per process, more than a machine has cores; 100,000 aborts DALI"),
    "prefetch": Bound(1, 32, "batches held ahead, each 600 KB an image (1,000 at batch 128 took 11.6 GB); "
                             "DALI's default is 2"),
    "hw_decoder_load": Bound(0, 1, "a share of the images"),
}


def bound_problem(name: str, value) -> str | None:
    """Why `value` is outside the bounds of option `name` (BOUNDS), or None."""
    bound = BOUNDS[name]
    if value is None or bound.holds(value):
        return None
    if value < bound.low or (value == bound.low and bound.low_open):  # in the words of the usual cases
        if bound.low == 0 and not bound.low_open:
            return f"{name} must not be negative, got {value}"
        if bound.low == 0 or (bound.low == 1 and isinstance(value, int)):
            return f"{name} must be positive, got {value}"
    return f"{name} must be in {bound.interval()}, got {value}: {bound.why}"


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


PRECISIONS = ("fp32", "bf16")
DEVICE_CHOICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class TrainConfig:
    # Data
    data: str = _opt("", "data root (or http(s) URL): DATA/train, DATA/val, ... in either layout")
    labels: str | None = _opt(None, "JSON mapping image id -> label (the original project's layout)")
    label_encoding: str | None = _opt(None, "JSON mapping label -> class index (default: sorted labels)")
    val_split: str = _opt("val", "name of the validation split folder")
    cache_dir: str | None = _opt(None, "where URL data sets are downloaded (default: ~/.cache/alexnet-dali)")
    refresh: bool = _opt(False, "URL data: ask the server whether each cached image changed (a conditional GET each)")
    skip_bad: bool = _opt(False, "exclude images that fail the pre-training scan (recorded in the run directory)")

    # Run
    out: str = _opt("runs/alexnet", "run directory: checkpoints, history.json, TensorBoard logs")
    epochs: int = _opt(90, "total epochs (the paper: about 90)")
    device: str = _opt("auto", "where decoding, augmentation and the network run (auto: a GPU if there is one)",
                       choices=DEVICE_CHOICES)
    seed: int = _opt(0, "run seed: model init, DALI augmentation and shuffling derive from it")
    resume: bool = _opt(False, "continue from OUT/last.pt, with the run's options where none are given "
                               "(automatic after a torchrun restart)")
    checkpoint_every: float = _opt(0.0, "minutes between mid-epoch checkpoints (0: at epoch ends only)")
    dist_timeout: float = _opt(5.0, "minutes joining the process group waits for every rank (torchrun) before it stops "
                                    "with a line naming the missing ranks")

    # Optimisation (section 5 of the paper)
    batch_size: int = _opt(128, "global batch: images per step summed over all processes")
    per_gpu_batch: bool = _opt(False, "treat --batch-size as per process and scale lr by the world size")
    lr: float | None = _opt(None, "initial learning rate for the batch --batch-size names; not given: the paper's "
                                  "0.01 scaled to the global batch, 0.01 x batch / 128")
    warmup_epochs: float = _opt(0.0, "epochs (fractions allowed) of linear warmup: lr rises step by step from near 0 "
                                     "to its value; the plateau rule starts after it (0: none, as in the paper)")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    lr_patience: int = _opt(5, "epochs without a lower validation error before lr is divided by 10")
    min_lr: float = _opt(1e-6, "lr is never reduced below this")

    # Model and augmentation
    groups: int = _opt(1, "1: one tower; 2: the paper's two-tower connectivity in conv2/4/5")
    dropout: float = _opt(0.5, "dropout probability in fc6 and fc7")
    # Caffe's reference AlexNet (bvlc_alexnet) starts these biases at 0.1: "found necessary for
    # training, as initialization to 1 gave flat loss". Measured here: on few classes, 1 makes the
    # output's class prior swing (loss 3-5x chance in epochs 2-3); 0.1 does not (README, Train).
    init_bias: float = _opt(INIT_BIAS, "bias of conv2, conv4, conv5, fc6 and fc7 at initialisation (Caffe's "
                                       "reference AlexNet: 0.1; the paper: 1)")
    precision: str = _opt("fp32", "bf16: bf16 autocast for the forward pass and loss (weights, gradients and SGD "
                                  "stay fp32); benchmarks/train.py measures both", choices=PRECISIONS)
    compile: bool = _opt(False, "torch.compile the network for the training steps (on an H100 in bf16 the trainer ran "
                                "at 12,300 images/s with it, 6,900 without); compiling takes about half a minute at the "
                                "start, and validation runs the network as it is")
    lighting: float = _opt(0.1, "std of the PCA lighting coefficients alpha (0 disables)")
    pca_images: int = _opt(10000, "images sampled for the RGB PCA (0: every training image)")

    # Input pipeline
    dali_threads: int = _opt(0, "DALI CPU worker threads per process (0: chosen for the machine)")
    prefetch: int = _opt(2, "batches DALI prepares ahead of the model")
    hw_decoder_load: float = _opt(HW_DECODER_LOAD, "GPU: share of the JPEGs sent to the hardware decoder (A100, H100, H200; "
                                       "the rest go to nvJPEG on the CUDA cores; on an A100 try DALI's 0.65); "
                                       "benchmarks/pipeline.py measures it")

    def __post_init__(self):
        check_types(self)
        check_finite(self)
        # Recorded in config.json and checkpoints: a relative path would name another folder (or
        # none) when the run is resumed or loaded from another working directory.
        for name in ("data", "labels", "label_encoding"):
            object.__setattr__(self, name, absolute_location(getattr(self, name)))
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"device must be {', '.join(DEVICE_CHOICES)}, got {self.device!r}")
        for name in BOUNDS:
            problem = bound_problem(name, getattr(self, name))
            if problem:
                raise ConfigError(problem)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}, got {self.precision!r}")
        if self.groups not in (1, 2):
            raise ConfigError(f"groups must be 1 or 2, got {self.groups}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def recorded(cls, saved: dict) -> dict:
        """The fields a run's saved config (config.json, a checkpoint) records, as it ran: keys of
        another version are dropped, and a run saved before --init-bias existed gets the paper's 1
        it was initialised with (not today's default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {name: value for name, value in saved.items() if name in known}
        if saved and "init_bias" not in saved:
            values["init_bias"] = INIT_BIAS_BEFORE_THE_OPTION
        return values

    def replace(self, **changes) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})


def absolute_location(location: str | None) -> str | None:
    """A local path made absolute (symbolic links kept as given); a URL, s3:// or nothing as is."""
    from .sources import kind_of

    if not location or not kind_of(location).on_file_system:
        return location
    return os.path.abspath(location)


def check_types(config) -> None:
    """Raise ConfigError for any field whose value does not match its annotation."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"config field {f.name} must be {_describe(hints[f.name])}, got {value!r}")


def check_finite(config) -> None:
    """Raise ConfigError for a NaN or infinite number in any field: no option means either."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")


def _matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation) -> str:
    args = typing.get_args(annotation)
    if args:
        return " or ".join(_describe(a) for a in args)
    return "None" if annotation is type(None) else annotation.__name__


def write_config(config: TrainConfig, path, **extra) -> None:
    """config.json of a run: every field, and what the run adds (version, world size, ...)."""
    from .jsonio import write_json

    write_json({**config.to_dict(), **extra}, path, indent=2, sort_keys=True)
