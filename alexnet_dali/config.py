"""The one training configuration: built once (defaults, then the command line or the API's
keyword arguments), passed explicitly, written to the run directory and into every checkpoint."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field

from .errors import UserError


# 1.0, not DALI's 0.65 (tuned on an A100): on an H100, 22,900 images/s against 12,900 at 8 threads
# (an H200: 17,300 against 10,600; benchmarks/RESULTS.md). GPUs without the hardware decoder ignore it.
HW_DECODER_LOAD = 1.0

# The biases of conv2, conv4, conv5, fc6 and fc7 at initialisation: Caffe's 0.1 (model.py).
# Runs recorded before the option existed were initialised with the paper's 1.
INIT_BIAS = 0.1
INIT_BIAS_BEFORE_THE_OPTION = 1.0


class ConfigError(UserError, ValueError):
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


# What a resumed run (resume.py) does with an option given again with another value. Every
# TrainConfig field names one, so none is refused by being forgotten.
CHANGES = "may change on resume"  # takes effect from now on, and is reported
COMMAND = "this command's alone"  # where and how fast this command runs: never compared
FIXES = "fixes the run"  # the network, the seed, the augmentation, the global batch: refused
RESUME_RULES = (CHANGES, COMMAND, FIXES)


def _opt(default, help: str, **extra):
    """A field declared with its command-line help and its rules (`resume=`, `choices=`, ...)."""
    return field(default=default, metadata={"help": help, **extra})


PRECISIONS = ("fp32", "bf16")
DEVICE_CHOICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class TrainConfig:
    # Data
    data: str = _opt("", "data root (or http(s) URL): DATA/train, DATA/val, ... in either layout", resume=CHANGES)
    labels: str | None = _opt(None, "JSON mapping image id -> label (the original project's layout)", resume=CHANGES)
    label_encoding: str | None = _opt(None, "JSON mapping label -> class index (default: sorted labels)",
                                      resume=CHANGES)
    val_split: str = _opt("val", "name of the validation split folder", resume=CHANGES)
    cache_dir: str | None = _opt(None, "where URL data sets are downloaded (default: ~/.cache/alexnet-dali)",
                                 resume=COMMAND)
    refresh: bool = _opt(False, "URL data: ask the server whether each cached image changed (a conditional GET each)",
                         resume=COMMAND)
    skip_bad: bool = _opt(False, "exclude images that fail the pre-training scan (recorded in the run directory)",
                          resume=CHANGES)

    # Run
    out: str = _opt("runs/alexnet", "run directory: checkpoints, history.json, TensorBoard logs", resume=COMMAND)
    epochs: int = _opt(90, "total epochs (the paper: about 90)", resume=CHANGES)
    device: str = _opt("auto", "where decoding, augmentation and the network run (auto: a GPU if there is one)",
                       choices=DEVICE_CHOICES, resume=COMMAND)
    seed: int = _opt(0, "run seed: model init, DALI augmentation and shuffling derive from it", resume=FIXES)
    resume: bool = _opt(False, "continue from OUT/last.pt, with the run's options where none are given "
                               "(automatic after a torchrun restart)", resume=COMMAND)
    checkpoint_every: float = _opt(0.0, "minutes between mid-epoch checkpoints (0: at epoch ends only)",
                                   resume=CHANGES)
    dist_timeout: float = _opt(5.0, "minutes joining the process group waits for every rank (torchrun) before it stops "
                                    "with a line naming the missing ranks", resume=COMMAND)

    # Optimisation (section 5 of the paper)
    batch_size: int = _opt(128, "global batch: images per step summed over all processes", resume=FIXES)
    per_gpu_batch: bool = _opt(False, "treat --batch-size as per process and scale lr by the world size",
                               resume=FIXES)
    lr: float | None = _opt(None, "initial learning rate for the batch --batch-size names; not given: the paper's "
                                  "0.01 scaled to the global batch, 0.01 x batch / 128", resume=CHANGES)
    warmup_epochs: float = _opt(0.0, "epochs (fractions allowed) of linear warmup: lr rises step by step from near 0 "
                                     "to its value; the plateau rule starts after it (0: none, as in the paper)",
                               resume=FIXES)
    momentum: float = _opt(0.9, "SGD momentum", resume=CHANGES)
    weight_decay: float = _opt(5e-4, "SGD weight decay", resume=CHANGES)
    lr_patience: int = _opt(5, "epochs without a lower validation error before lr is divided by 10",
                            resume=CHANGES)
    min_lr: float = _opt(1e-6, "lr is never reduced below this", resume=CHANGES)

    # Model and augmentation
    groups: int = _opt(1, "1: one tower; 2: the paper's two-tower connectivity in conv2/4/5", resume=FIXES)
    dropout: float = _opt(0.5, "dropout probability in fc6 and fc7", resume=FIXES)
    # Caffe's reference AlexNet (bvlc_alexnet) starts these biases at 0.1: "found necessary for
    # training, as initialization to 1 gave flat loss". Measured here: on few classes, 1 makes the
    # output's class prior swing (loss 3-5x chance in epochs 2-3); 0.1 does not (README, Train).
    init_bias: float = _opt(INIT_BIAS, "bias of conv2, conv4, conv5, fc6 and fc7 at initialisation (Caffe's "
                                       "reference AlexNet: 0.1; the paper: 1)", resume=FIXES)
    precision: str = _opt("fp32", "bf16: bf16 autocast for the forward pass and loss (weights, gradients and SGD "
                                  "stay fp32); benchmarks/train.py measures both", choices=PRECISIONS, resume=CHANGES)
    compile: bool = _opt(False, "torch.compile the network for the training steps (benchmarks/RESULTS.md measures "
                                "what it gains); compiling takes a while at the start, and validation runs the network "
                                "as it is", resume=COMMAND)
    lighting: float = _opt(0.1, "std of the PCA lighting coefficients alpha (0 disables)", resume=FIXES)
    pca_images: int = _opt(10000, "images sampled for the RGB PCA (0: every training image)", resume=FIXES)

    # Input pipeline
    dali_threads: int = _opt(0, "DALI CPU worker threads per process (0: chosen for the machine)",
                             resume=COMMAND)
    prefetch: int = _opt(2, "batches DALI prepares ahead of the model", resume=COMMAND)
    hw_decoder_load: float = _opt(HW_DECODER_LOAD, "GPU: share of the JPEGs sent to the hardware decoder (A100, H100, H200; "
                                       "the rest go to nvJPEG on the CUDA cores; on an A100 try DALI's 0.65); "
                                       "benchmarks/pipeline.py measures it", resume=COMMAND)

    def __post_init__(self):
        check_types(self)
        check_finite(self)
        # Recorded in config.json and checkpoints: a relative path would name another folder (or
        # none) when the run is resumed or loaded from another working directory.
        for name in ("data", "labels", "label_encoding"):
            object.__setattr__(self, name, absolute_location(getattr(self, name)))
        check_values(self.to_dict())

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
    from .sources import not_on_file_system

    if not location or not_on_file_system(location):
        return location
    return os.path.abspath(location)


SHAPE = ("groups", "dropout", "init_bias")  # checked by the network itself (model.check_args)


def check_values(values: dict) -> None:
    """The one check of each option's value, for the fields `values` names: TrainConfig runs it on
    all of them, `place` on the device options that predict, evaluate and check take alone."""
    for name, value in values.items():
        problem = bound_problem(name, value) if name in BOUNDS else None
        if problem:
            raise ConfigError(problem)
    for name, allowed in (("device", DEVICE_CHOICES), ("precision", PRECISIONS)):
        if name in values and values[name] not in allowed:
            raise ConfigError(f"{name} must be {_either(allowed)}, got {values[name]!r}")
    shape = {name: values[name] for name in SHAPE if name in values}
    if shape:
        from .model import check_args  # torch: only where a network's options are checked

        try:
            check_args(**shape)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _either(allowed) -> str:
    return ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]


def check_resume_rules(config_class) -> None:
    """TypeError naming the fields that declare no resume rule: one would be refused on resume
    with no word why (checked when this module loads, so a new option cannot forget its rule)."""
    unruled = [f.name for f in dataclasses.fields(config_class) if f.metadata.get("resume") not in RESUME_RULES]
    if unruled:
        raise TypeError(f"{config_class.__name__} fields without a resume rule: {', '.join(unruled)}")


check_resume_rules(TrainConfig)


def with_resume_rule(rule: str) -> tuple[str, ...]:
    """The TrainConfig fields whose resume rule is `rule` (CHANGES, COMMAND or FIXES)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == rule)


@dataclass(frozen=True)
class InferenceOptions:
    """The options of predict and evaluate besides the device ones they share with train: this
    command's alone, recorded nowhere. Declared here so that the CLI builds them as it builds train's."""

    batch_size: int = _opt(32, "images per batch", minimum=1)
    compile: bool = _opt(False, "torch.compile the network (ten views an image make the network the likely limit on "
                                "a GPU: benchmarks/predict.py's +compile row); compiling takes a while at the start")
    topk: int = _opt(5, "classes shown per image", minimum=1)
    split: str = _opt("val", "split to evaluate")
    ten_crop: bool = _opt(False, "average ten views per image (the paper's test)")
    json: bool = _opt(False, "print JSON instead of text")


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
