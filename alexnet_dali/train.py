"""The training loop: one process, or N under torchrun (DDP, one GPU or the CPU per process).

    prepare data (index, scan, PCA) -> model, SGD, ReduceLROnPlateau -> resume if asked
    -> for each epoch: train_one_epoch -> evaluate -> lr schedule -> checkpoint, history, TensorBoard

Only the main process (rank 0) writes files and shows progress; metrics are all-reduced counts.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import __version__, distributed
from .checkpoint import BEST, LAST, CheckpointError, link, newest_valid_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, write_config
from .data import write_json
from .distributed import DistInfo
from .loader import LoaderSettings, dali_threads, evaluation_loader, training_loader
from .model import AlexNetModule
from .pca import PCA
from .prepare import PreparedData, prepare_data
from .schedule import DivergenceGuard, TrainingDiverged, Warmup, divergence_advice, lr_for_batch
from .visualize import log_sample_grid

# Steps between the loop's host-device syncs (the progress bar's numbers; under DDP, the ranks'
# agreement on signals and checkpoints): a sync every step would stall the GPU's queue.
SYNC_EVERY = 10

HISTORY_KEYS = ("loss", "accuracy", "top5", "val_loss", "val_accuracy", "val_top5", "lr", "images_per_sec")


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int):
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        name = signal.Signals(signum).name
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"stopped by {name} in epoch {epoch + 1} after step {step}; {where}; "
                         "run the same command with --resume to continue")


@dataclass
class TrainResult:
    history: dict
    checkpoint: Path
    pca: PCA
    classes: tuple[str, ...]
    net: nn.Module


# -- Metrics ---------------------------------------------------------------------------------

def batch_counts(logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
    """[loss sum, top-1 correct, top-5 correct, images] of one batch, as float64 on its device."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return torch.stack([loss_sum.detach().double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                        torch.full((), float(labels.numel()), dtype=torch.float64, device=logits.device)])


def rates(totals: torch.Tensor) -> tuple[float, float, float]:
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return loss_sum / count, top1 / count, top5 / count


# -- Signals and mid-epoch checkpoints -------------------------------------------------------

class StepControl:
    """After a step: should we checkpoint now, should we stop? Every rank must agree, so under DDP
    the flags are all-reduced (max) every SYNC_EVERY steps and at the epoch's last step: every rank
    is at the same step, so all take part or none. A signal is acted on within SYNC_EVERY steps."""

    def __init__(self, checkpoint_every_min: float, dist_info: DistInfo):
        self.interval = checkpoint_every_min * 60.0
        self.dist_info = dist_info
        self.last_checkpoint = time.monotonic()
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum  # acted on after the current step

    def poll(self, step: int, epoch_steps: int) -> tuple[bool, int]:
        due = self.interval > 0 and time.monotonic() - self.last_checkpoint >= self.interval
        if not self.dist_info.distributed:  # nothing to agree on: no tensor, no device sync
            return due or bool(self.signum), self.signum
        if step % SYNC_EVERY and step != epoch_steps:
            return False, 0
        flags = torch.tensor([float(due), float(self.signum)], device=self.dist_info.device)
        due, signum = distributed.all_reduce_max(flags).tolist()
        return bool(due) or bool(signum), int(signum)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()


# -- One epoch -------------------------------------------------------------------------------

@dataclass
class EpochProgress:
    """What this rank has done so far in the current epoch (saved in mid-epoch checkpoints)."""

    totals: torch.Tensor
    step: int = 0
    seconds: float = 0.0

    @classmethod
    def fresh(cls, device) -> EpochProgress:
        return cls(torch.zeros(4, dtype=torch.float64, device=device))


def autocast(images: torch.Tensor, precision: str):
    """bf16 autocast (fp32 weights, bf16 matmuls and convolutions), or nothing for fp32."""
    return torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_one_epoch(model, criterion, optimizer, loader, progress: EpochProgress, *, control: StepControl,
                    on_checkpoint, bar, on_first_batch=None, precision: str = "fp32", warmup: Warmup | None = None,
                    on_sync=None) -> int:
    """Train over the rest of one epoch. Returns 0, or the signal that stopped it early.
    `on_sync(progress, images)` runs at each sync point and before each checkpoint (issue 15: the
    divergence guard, which raises TrainingDiverged)."""
    model.train()
    start = time.perf_counter()
    for images, labels in loader:
        if on_first_batch is not None:  # the TensorBoard sample grid: the inputs as the network sees them
            on_first_batch(images)
            on_first_batch = None
        if warmup is not None:  # issue 15: the lr of this step during warmup
            warmup.step()
        with autocast(images, precision):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.totals += batch_counts(logits, labels, loss.detach() * labels.numel())
        progress.step += 1
        bar.update(1)
        synced = progress.step % SYNC_EVERY == 0 or progress.step == len(loader)
        if synced:
            elapsed = progress.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{progress.totals[3].item() / elapsed:.1f}")
        save_now, signum = control.poll(progress.step, len(loader))
        if on_sync is not None and (synced or save_now):  # issue 15: never checkpoint a blown-up model
            on_sync(progress, images)
        if save_now:
            on_checkpoint(progress, progress.seconds + time.perf_counter() - start)
            control.checkpointed()
        if signum:
            return signum
    progress.seconds += time.perf_counter() - start
    return 0


@torch.inference_mode()
def evaluate(model, loader, dist_info: DistInfo, expected: int | None = None,
             precision: str = "fp32") -> tuple[float, float, float]:
    """Validation loss, top-1 and top-5 accuracy over the whole set: counts summed over ranks."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(4, dtype=torch.float64, device=dist_info.device)
    for images, labels in loader:
        with autocast(images, precision):
            logits = model(images)
            loss_sum = criterion(logits, labels)
        totals += batch_counts(logits, labels, loss_sum)
    distributed.all_reduce_sum(totals)
    if expected is not None and int(totals[3].item()) != expected:
        warnings.warn(f"validation counted {int(totals[3].item())} images, the split has {expected}", stacklevel=2)
    return rates(totals)


# -- Set-up ----------------------------------------------------------------------------------

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


def run_dir_state(config: TrainConfig, dist_info: DistInfo) -> dict | None:
    """The checkpoint to resume from, or None for a new run. A torchrun restart resumes by itself."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    found = newest_valid_checkpoint(config.out)
    if found is None:
        return None
    if not (config.resume or restarted):
        raise CheckpointError(f"{Path(config.out) / LAST} exists: pass --resume to continue that run, "
                              "or --out for a new run directory")
    return found[0]


def check_resume(state: dict, config: TrainConfig, num_classes: int, global_batch: int) -> None:
    saved = state["config"]
    saved_batch = state.get("global_batch")
    conflicts = []
    if saved.get("groups") != config.groups:
        conflicts.append(f"groups: {saved.get('groups')} -> {config.groups}")
    if len(state["classes"]) != num_classes:
        conflicts.append(f"classes: {len(state['classes'])} -> {num_classes}")
    if saved_batch != global_batch:
        conflicts.append(f"global batch: {saved_batch} -> {global_batch}")
    if conflicts:
        raise CheckpointError(f"cannot resume {config.out}: the checkpoint was made with a different set-up:\n  "
                              + "\n  ".join(conflicts))


def restore(state: dict, raw_model, optimizer, scheduler, dist_info: DistInfo):
    """Load a checkpoint into the run: (history, first epoch to run, this rank's saved state or None)."""
    raw_model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    history = {key: list(state["history"].get(key, [])) for key in HISTORY_KEYS}
    ranks = state.get("ranks") or []
    if len(ranks) != dist_info.world_size:
        warnings.warn(f"the checkpoint was written by {len(ranks)} processes, this run has {dist_info.world_size}: "
                      f"the data order restarts at epoch {state['epoch'] + 1}", stacklevel=3)
        return history, state["epoch"], None
    mine = ranks[dist_info.rank]
    torch.set_rng_state(mine["torch_rng"])
    if dist_info.device.type == "cuda" and mine.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(mine["cuda_rng"])
    return history, state["epoch"], mine


def code_version() -> dict:
    commit = None
    try:
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": __version__, "commit": commit}


# -- The run ---------------------------------------------------------------------------------

def train(config: TrainConfig, *, net: AlexNetModule | None = None, data: PreparedData | None = None,
          log=print) -> TrainResult:
    """Train as `config` says; `net` and `data` let the API hand in what it already built."""
    dist_info = distributed.setup(config.device)
    try:
        return _train(config, dist_info, net, data, log if dist_info.is_main else (lambda *a, **k: None))
    finally:
        distributed.cleanup()


def _train(config: TrainConfig, dist_info: DistInfo, net: AlexNetModule | None, data: PreparedData | None,
           log) -> TrainResult:
    from tqdm import tqdm

    out = Path(config.out)
    version = code_version()
    resume_state = run_dir_state(config, dist_info)
    data = data or prepare_data(config, dist_info, log)
    train_split, val_split, pca = data.train, data.val, data.pca
    per_process, global_batch, lr = batch_plan(config, dist_info.world_size)
    lr_why = lr_for_batch(config.lr, config.batch_size, dist_info.world_size, config.per_gpu_batch)[1]
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    raw_model = net if net is not None else AlexNetModule(len(train_split.classes), config.groups, config.dropout)
    if net is not None and net.num_classes != len(train_split.classes):
        raise ConfigError(f"the network has {net.num_classes} outputs but the data has {len(train_split.classes)} classes")
    raw_model.to(dist_info.device)
    if dist_info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        raw_model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(raw_model.parameters(), lr=lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=config.lr_patience, min_lr=config.min_lr)
    torch.manual_seed(config.seed + 1 + dist_info.rank)  # dropout masks differ per rank
    history, start_epoch, rank_state = {key: [] for key in HISTORY_KEYS}, 0, None
    if resume_state is not None:
        check_resume(resume_state, config, len(train_split.classes), global_batch)
        history, start_epoch, rank_state = restore(resume_state, raw_model, optimizer, scheduler, dist_info)
        log(f"resuming {out} at epoch {start_epoch + 1}" +
            (f", step {rank_state['step']}" if rank_state and rank_state["step"] else ""))
    best = max(history["val_accuracy"], default=-1.0)
    model = raw_model
    if dist_info.distributed:
        model = DistributedDataParallel(raw_model, device_ids=[dist_info.local_rank] if dist_info.device.type == "cuda" else None)

    settings = LoaderSettings(per_process, dali_threads(config.dali_threads, dist_info), config.prefetch,
                              config.seed, config.lighting, config.hw_decoder_load)
    train_loader = training_loader(train_split, pca, settings, dist_info, state=rank_state and rank_state["dali"])
    val_loader = evaluation_loader(val_split, pca, settings, dist_info)
    # -- issue 15: warmup and the divergence guard, restored exactly on resume
    warmup = Warmup.for_epochs(optimizer, lr, config.warmup_epochs, len(train_loader))
    guard = DivergenceGuard(len(train_split.classes))
    if resume_state is not None:
        warmup.load_state_dict(resume_state.get("warmup"))
        guard.load_state_dict(resume_state.get("divergence_guard"))
    writer = None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(config, out / "config.json", **version, world_size=dist_info.world_size,
                   global_batch=global_batch, batch_per_process=per_process, lr_effective=lr,
                   lr_rule=lr_why,  # issue 15: the lr used and why
                   train_images=len(train_split), val_images=len(val_split), classes=list(train_split.classes))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch)
        log(f"training on {len(train_split)} images ({len(train_split.classes)} classes), validating on "
            f"{len(val_split)}; {dist_info.world_size} process(es) on {dist_info.device.type}, "
            f"global batch {global_batch}; run directory {out}")
        log(lr_why + (f", reached after {warmup.steps} warmup steps" if warmup.steps else ""))
        log(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")

    def checkpoint(epoch: int, progress: EpochProgress | None, seconds: float = 0.0) -> Path:
        """All ranks call this (they gather their states); rank 0 writes."""
        mine = {"dali": train_loader.state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if dist_info.device.type == "cuda" else None,
                "step": progress.step if progress else 0, "seconds": seconds,
                "totals": progress.totals.cpu() if progress else None}
        ranks = distributed.gather_objects(mine)
        path = out / LAST
        if dist_info.is_main:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "ranks": ranks,
                "warmup": warmup.state_dict(), "divergence_guard": guard.state_dict(),
                "classes": list(train_split.classes), "class_names": list(train_split.class_names),
                "pca": pca.to_dict(), "config": config.to_dict(),
                "global_batch": global_batch, "world_size": dist_info.world_size, **version,
            }, path)
        return path

    def stop_if_diverged(epoch: int, progress: EpochProgress, images: torch.Tensor) -> None:
        """Issue 15: all ranks see the same totals, so all stop together, before anything is saved."""
        totals = distributed.all_reduce_sum(progress.totals.clone()).tolist()
        reason = guard.check(epoch, totals[0], totals[3])
        if reason is None:
            return
        kept = (f"best.pt holds epoch {history['val_accuracy'].index(best) + 1} (val top-1 {best:.1%})"
                if best >= 0 else "no epoch finished, so there is no best.pt")
        advice = divergence_advice(bool(torch.isfinite(images).all()), lr)
        raise TrainingDiverged(f"training stopped in epoch {epoch + 1} at step {progress.step}/{len(train_loader)}: "
                               f"{reason}; {advice}; nothing since was saved ({kept})", epoch, progress.step)

    criterion = nn.CrossEntropyLoss()
    with StepControl(config.checkpoint_every, dist_info) as control:
        for epoch in range(start_epoch, config.epochs):
            progress = EpochProgress.fresh(dist_info.device)
            if rank_state and rank_state["step"]:  # resume inside this epoch
                progress = EpochProgress(rank_state["totals"].to(dist_info.device), rank_state["step"],
                                         rank_state["seconds"])
            rank_state = None
            bar = tqdm(total=len(train_loader), initial=progress.step, disable=not dist_info.is_main,
                       desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", dynamic_ncols=True)
            try:
                signum = train_one_epoch(
                    model, criterion, optimizer, train_loader, progress, control=control, bar=bar,
                    on_first_batch=(lambda images: log_sample_grid(writer, images, pca.mean, epoch))
                    if writer is not None and epoch == 0 else None,
                    on_checkpoint=lambda p, s: checkpoint(epoch, p, s), precision=config.precision,
                    warmup=warmup, on_sync=lambda p, images: stop_if_diverged(epoch, p, images))
            finally:
                bar.close()  # so that an error's line starts on a line of its own
            lr_now = optimizer.param_groups[0]["lr"]  # the lr of the epoch's last step (warmup moves it within)
            if signum:
                raise TrainingInterrupted(signum, out / LAST, epoch, progress.step)
            totals = distributed.all_reduce_sum(progress.totals.clone())
            loss, top1, top5 = rates(totals)
            images_per_sec = totals[3].item() / max(progress.seconds, 1e-9)
            val_loss, val_top1, val_top5 = evaluate(raw_model, val_loader, dist_info, expected=len(val_split),
                                                  precision=config.precision)
            if not warmup.active:  # issue 15: the plateau rule starts counting after warmup (schedule.py)
                scheduler.step(1.0 - val_top1)  # section 5: lr / 10 when the validation error stops improving
            metrics = dict(zip(HISTORY_KEYS, (loss, top1, top5, val_loss, val_top1, val_top5, lr_now, images_per_sec)))
            for key, value in metrics.items():
                history[key].append(value)
            path = checkpoint(epoch + 1, None)
            control.checkpointed()
            if dist_info.is_main:
                if val_top1 > best and math.isfinite(val_loss):  # issue 13: never a NaN model as best.pt
                    best = val_top1
                    link(path, out / BEST)
                write_json(history, out / "history.json", indent=2)
                for key, value in metrics.items():
                    writer.add_scalar(SCALAR_NAMES[key], value, epoch + 1)
                writer.flush()
                log(f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, top-1 {top1:.1%}, val loss {val_loss:.4f}, "
                    f"val top-1 {val_top1:.1%}, val top-5 {val_top5:.1%}, lr {lr_now:g}, {images_per_sec:.1f} images/s")
    if writer is not None:
        writer.close()
    return TrainResult(history, out / LAST, pca, train_split.classes, raw_model)


SCALAR_NAMES = {
    "loss": "train/loss", "accuracy": "train/top1", "top5": "train/top5", "val_loss": "val/loss",
    "val_accuracy": "val/top1", "val_top5": "val/top5", "lr": "lr", "images_per_sec": "images_per_sec",
}
