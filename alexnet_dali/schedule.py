"""The learning rate beside the paper's plateau rule: the lr for a batch, linear warmup, and the
guard that stops a run whose loss blows up.

    per_process, global_batch, lr = batch_plan(config, world_size)
    warmup = Warmup.for_epochs(optimizer, lr, config.warmup_epochs, steps_per_epoch)
    warmup.step()                                    # before each optimiser step
    reason = guard.check(epoch, loss_sum, images)    # at each sync point: None, or why to stop

How warmup and ReduceLROnPlateau share the lr: warmup owns it for its first `steps` optimiser
steps (step i runs at lr x (i + 1) / steps, the last at lr itself), then never touches it again.
The plateau rule is not stepped at an epoch end that falls inside warmup (train.py asks
`warmup.active`), so the two never write the lr in the same epoch and a reduction is never
overwritten: the plateau rule starts counting at the first epoch end after warmup.

The guard's rule, from the runs measured for issue 15 (per-epoch means on sets of 3-6 classes):
runs that went on to learn had loss spikes of up to 5x chance and 2.5x the running median; runs
that never recovered were at 10-17x chance in their first epoch (the paper's lr 0.01 at batch
16) and NaN within a few steps at larger lr. Hence: stop on NaN/inf, or on a loss both above
chance and more than 10x the running median (10x chance at the first look).
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

from .config import ConfigError, TrainConfig
from .errors import UserError

PAPER_LR, PAPER_BATCH = 0.01, 128  # section 5: lr 0.01 for a batch of 128


def batch_plan(config: TrainConfig, world_size: int) -> tuple[int, int, float]:
    """(images per process, global batch, lr). By default --batch-size is the global batch, split
    over the processes; with per_gpu_batch it is per process. The lr follows the global batch
    (schedule.lr_for_batch: linear scaling, Goyal et al., 2017)."""
    lr = lr_for_batch(config.lr, config.batch_size, world_size, config.per_gpu_batch)[0]
    if config.per_gpu_batch:
        return config.batch_size, config.batch_size * world_size, lr
    if config.batch_size % world_size:
        raise ConfigError(f"the global batch {config.batch_size} does not split evenly over {world_size} processes; "
                          f"pick a multiple of {world_size} or use --per-gpu-batch")
    return config.batch_size // world_size, config.batch_size, lr


def lr_for_batch(lr: float | None, batch_size: int, world_size: int, per_gpu_batch: bool) -> tuple[float, str]:
    """The initial lr and one line saying why. Not given, it is the paper's 0.01 scaled linearly to
    the global batch (timm's --lr-base convention, Goyal et al. 2017). Given, it is the lr for the
    batch that --batch-size names: the global batch, or with --per-gpu-batch one process's batch,
    and then it grows linearly with the number of processes."""
    global_batch = batch_size * world_size if per_gpu_batch else batch_size
    if lr is None:
        value = PAPER_LR * global_batch / PAPER_BATCH
        batch = "the global batch"
        if per_gpu_batch and world_size > 1:
            batch += f", {batch_size} per process x {world_size} processes"
        return value, (f"lr {value:g} = {PAPER_LR:g} x {global_batch} / {PAPER_BATCH} (the paper's lr for its batch "
                       f"of {PAPER_BATCH}, scaled to {batch}; --lr sets another)")
    if per_gpu_batch and world_size > 1:
        value = lr * world_size
        return value, (f"lr {value:g} = {lr:g} (--lr, for one process's batch) x {world_size} processes "
                       "(--per-gpu-batch)")
    return lr, f"lr {lr:g} (--lr)"


class Warmup:
    """Linear warmup over the first `steps` optimiser steps (0: none). Call `step()` before each
    optimiser step. Its state (the steps taken) goes into checkpoints, so a resumed run continues
    the ramp exactly where it stopped."""

    def __init__(self, optimizer, peak_lr: float, steps: int):
        self.optimizer, self.peak_lr, self.steps = optimizer, peak_lr, steps
        self.taken = 0  # optimiser steps taken since the run began

    @classmethod
    def for_epochs(cls, optimizer, peak_lr: float, epochs: float, steps_per_epoch: int) -> Warmup:
        return cls(optimizer, peak_lr, math.ceil(epochs * steps_per_epoch))

    def factor(self, step: int) -> float:
        """The share of the peak lr that optimiser step `step` (0-based) runs at."""
        return 1.0 if step >= self.steps else (step + 1) / self.steps

    @property
    def active(self) -> bool:
        return self.taken < self.steps

    def step(self) -> None:
        if self.active:
            for group in self.optimizer.param_groups:
                group["lr"] = self.peak_lr * self.factor(self.taken)
        self.taken += 1

    def state_dict(self) -> dict:
        return {"peak_lr": self.peak_lr, "steps": self.steps, "taken": self.taken}

    def load_state_dict(self, state: dict | None) -> None:
        """`None` (a checkpoint from before warmup existed): the run is past its start, no warmup."""
        if state is None:
            self.taken = self.steps
            return
        self.peak_lr, self.steps, self.taken = state["peak_lr"], state["steps"], state["taken"]


class TrainingDiverged(UserError):
    """The training loss blew up; the run stopped before saving anything after it. A UserError, not
    a ConfigError (no option was invalid): a setting (mostly the lr) is what the user changes, so
    the CLI prints it as one line."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class DivergenceGuard:
    """Fed the epoch's loss totals (summed over all ranks, so every rank decides alike) at each
    sync point; looks at the mean loss of the stretch since the last one. Says why to stop when that
    mean is NaN or infinite, or when it is both worse than guessing (ln of the class count) and more
    than RATIO times the median of the last HISTORY stretches (the chance loss before the first)."""

    RATIO = 10.0
    HISTORY = 100

    def __init__(self, num_classes: int):
        self.chance = math.log(max(num_classes, 2))
        self.recent: deque[float] = deque(maxlen=self.HISTORY)
        self.seen = (-1, 0.0, 0.0)  # (epoch, loss sum, images) at the last look

    def check(self, epoch: int, loss_sum: float, images: float) -> str | None:
        last_epoch, last_sum, last_images = self.seen
        if epoch != last_epoch:
            last_sum, last_images = 0.0, 0.0
        self.seen = (epoch, loss_sum, images)
        if images <= last_images:  # nothing trained since the last look
            return None
        return self.observe((loss_sum - last_sum) / (images - last_images))

    def observe(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"the training loss became {loss}"
        if self.recent:
            reference = median(self.recent)
            against = f"its running median {reference:.3g}, and above chance ({self.chance:.3g})"
        else:  # the first look: an untrained network's loss is about chance
            reference = self.chance
            against = f"chance ({self.chance:.3g})"
        if loss > self.chance and loss > self.RATIO * reference:
            return f"the training loss rose to {loss:.3g}, {loss / reference:.0f}x {against}"
        self.recent.append(loss)
        return None

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "seen": list(self.seen)}

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self.recent.clear()
            self.recent.extend(state["recent"])
            self.seen = tuple(state["seen"])


def divergence_advice(inputs_finite: bool, lr: float) -> str:
    """What to try, by cause: broken inputs are not fixed by a lower lr. (Warmup is not offered: on
    the small sets measured for issue 15 it delayed loss spikes but did not prevent them.)"""
    if not inputs_finite:
        return ("the input images themselves hold NaN or infinite values, so no lr helps: the model's RGB PCA "
                "statistics are broken (a run takes them from the cached pca-*.json in DATA/.alexnet-dali or "
                "RUN/cache when it starts, and keeps them in its checkpoints: delete it and start a new run)")
    return f"the run diverged: try a lower lr (--lr {lr / 10:g}, a tenth of this run's {lr:g})"
