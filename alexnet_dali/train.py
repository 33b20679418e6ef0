"""The training loop: one process, or N under torchrun (DDP, one GPU or the CPU per process).

    train(config, state) -> state: build the run from a state (None: a new model): optimizer,
    restore, loaders, wrap; then for each epoch: train_one_epoch -> evaluate -> lr schedule ->
    checkpoint, history, TensorBoard. The API keeps the state in memory between calls; the CLI
    and torchrun restarts read it from the run directory (resume.py).

    train_one_epoch: a train_step per batch (benchmarks/train.py times the same step); at each
    sync point, in the loop: the divergence check, then a checkpoint when one is due or a signal
    came; on the first batch of the first epoch, TensorBoard's sample grid.

Only the main process (rank 0) writes files and shows progress; metrics are all-reduced counts.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import __version__, distributed
from .checkpoint import BEST, HISTORY, LAST, CheckpointError, link, save_checkpoint, write_failure
from .config import TrainConfig, write_config
from .distributed import DistInfo
from .evaluate import autocast, evaluate
from .errors import DataError
from .jsonio import write_json
from .loader import DaliLoader, evaluation_loader, training_loader
from .log import logger
from .metrics import Counts, EpochMetrics, append
from .model import AlexNetModule
from .pipeline_errors import data_changed_error, is_pipeline_error
from .placement import Placement, place
from .schedule import DivergenceGuard, TrainingDiverged, Warmup, batch_plan, divergence_advice, lr_for_batch
from .dataset import TrainingData, load_training_data
from .resume import apply_resume_changes, check_resume
from .state import ModelBundle, TrainState, model_args
from .visualize import log_sample_grid

# Steps between the loop's host-device syncs (the progress bar's numbers; under DDP, the ranks'
# agreement on signals and checkpoints): a sync every step would stall the GPU's queue.
SYNC_EVERY = 10

# DDP's gradient buckets: AlexNet's 62M fp32 gradients are 250 MB, mostly fc6 (151 MB) and fc7
# (67 MB). Buckets of 50 MB cut that into a few all-reduces that overlap the backward pass
# without the per-call cost of DDP's default 25 MB.
DDP_BUCKET_MB = 50


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int):
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"stopped by {signal.Signals(signum).name} in epoch {epoch + 1} after step {step}; {where}")


# -- Signals and mid-epoch checkpoints -------------------------------------------------------

class StepControl:
    """After a step: should we checkpoint now, should we stop? Every rank must agree, so under DDP
    the flags are all-reduced (max) every SYNC_EVERY steps and at the epoch's last step: every rank
    is at the same step, so all take part or none. A signal is acted on within SYNC_EVERY steps."""

    def __init__(self, checkpoint_every_min: float, dist: DistInfo, device: torch.device):
        self.interval = checkpoint_every_min * 60.0
        self.dist, self.device = dist, device
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
        if self.dist.is_main:  # straight to the file: the handler may have interrupted a write to sys.stderr
            again = "; Ctrl-C again stops at once, without it" if signum == signal.SIGINT else ""
            try:
                os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint{again}\n"
                         .encode())
            except OSError:
                pass

    def poll(self, step: int, epoch_steps: int) -> tuple[bool, int]:
        due = self.interval > 0 and time.monotonic() - self.last_checkpoint >= self.interval
        if not self.dist.distributed:  # nothing to agree on: no tensor, no device sync
            return due or bool(self.signum), self.signum
        if step % SYNC_EVERY and step != epoch_steps:
            return False, 0
        flags = torch.tensor([float(due), float(self.signum)], device=self.device)
        due, signum = distributed.all_reduce_max(flags).tolist()
        return bool(due) or bool(signum), int(signum)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()


# -- One epoch -------------------------------------------------------------------------------

@dataclass
class EpochProgress:
    """What this rank has done so far in the current epoch (saved in mid-epoch checkpoints)."""

    counts: Counts
    step: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds, "totals": self.counts.values.cpu()}

    @classmethod
    def resumed(cls, saved: dict | None, device) -> EpochProgress:
        """The saved progress of an interrupted epoch, or a fresh one."""
        if not saved or not saved.get("step"):
            return cls(Counts(device))
        return cls(Counts(device, saved["totals"]), saved["step"], saved["seconds"])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch: forward and loss (under bf16 autocast where asked), backward,
    update. Returns the logits and the mean loss, still on the device (reading them syncs). The
    trainer and benchmarks/train.py both step through here."""
    with autocast(images.device, precision):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def train_one_epoch(run: Run, epoch: int, progress: EpochProgress, control: StepControl, bar) -> int:
    """Train over the rest of one epoch. Returns 0, or the signal that stopped it early."""
    run.model.train()
    loader = run.train_loader
    sample_grid = epoch == 0 and run.writer is not None
    start = time.perf_counter()
    for images, labels in loader:
        if sample_grid:  # TensorBoard: the first batch's inputs as the network sees them
            log_sample_grid(run.writer, images, run.bundle.pca.mean, epoch)
            sample_grid = False
        run.warmup.step()  # the lr of this step while warming up
        logits, loss = train_step(run.model, run.optimizer, images, labels, run.config.precision)
        own = loader.own_images(progress.step)
        if own == labels.numel():
            progress.counts.add(logits.detach(), labels, loss.detach() * own)
        else:  # FILL's repeats of the shard's last image are trained on, but each image counts once
            own_logits, own_labels = logits.detach()[:own].float(), labels[:own]
            progress.counts.add(own_logits, own_labels, nn.functional.cross_entropy(own_logits, own_labels,
                                                                                    reduction="sum"))
        progress.step += 1
        bar.update(1)
        synced = progress.step % SYNC_EVERY == 0 or progress.step == len(loader)
        if synced:
            elapsed = progress.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{progress.counts.images / elapsed:.1f}")
        save_now, signum = control.poll(progress.step, len(loader))
        if synced or save_now:  # before any checkpoint: a blown-up model is never saved
            run.stop_if_diverged(epoch, progress, images)
        if save_now:
            run.checkpoint(epoch, progress, progress.seconds + time.perf_counter() - start)
            control.checkpointed()
        if signum:
            return signum
    progress.seconds += time.perf_counter() - start
    return 0


# -- Set-up ----------------------------------------------------------------------------------

def start_process(config: TrainConfig) -> tuple[DistInfo, Placement]:
    """This process's ranks and placement, in the process group where there is one (joined once
    per process, however many runs it trains)."""
    dist = distributed.read_env()
    placement = place(config.device, local_rank=dist.local_rank, local_world_size=dist.local_world_size,
                      threads=config.dali_threads, hw_decoder_load=config.hw_decoder_load)
    distributed.join(dist, placement.device, config.dist_timeout)
    return dist, placement


def new_state(config: TrainConfig, data: TrainingData) -> TrainState:
    """A freshly initialised network (the paper's init, the same on every rank) for the data."""
    torch.manual_seed(config.seed)
    net = AlexNetModule(**model_args(config, len(data.train.classes)))
    bundle = ModelBundle(net, data.pca, data.train.classes, data.train.class_names, config.precision)
    return TrainState(bundle, config.to_dict())


@functools.cache
def _code_version() -> tuple[tuple[str, str | None], ...]:
    commit = None
    try:
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return (("package_version", __version__), ("commit", commit))


def code_version() -> dict:
    """The package version and commit that runs (asked of git once per process)."""
    return dict(_code_version())


@dataclass
class Run:
    """One training run's live parts, built from a state by `build_run`."""

    config: TrainConfig
    dist: DistInfo
    placement: Placement
    data: TrainingData  # its files: named when one changes under the run
    bundle: ModelBundle  # the network as checkpoints and validation see it
    model: nn.Module  # the bundle's net as the steps run it: in DDP under torchrun, compiled with --compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    warmup: Warmup
    guard: DivergenceGuard
    train_loader: DaliLoader
    val_loader: DaliLoader
    history: dict
    writer: object | None = None  # TensorBoard's SummaryWriter, on the main process
    ranks: list | None = None  # every rank's state at the last checkpoint

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def global_batch(self) -> int:
        return batch_plan(self.config, self.dist.world_size)[1]

    def state(self, epoch: int, ranks: list | None = None) -> TrainState:
        return TrainState(self.bundle, self.config.to_dict(), epoch, self.history, self.optimizer.state_dict(),
                          self.scheduler.state_dict(), self.warmup.state_dict(), self.global_batch, ranks or [],
                          code_version(), self.guard.state_dict())

    def stop_if_diverged(self, epoch: int, progress: EpochProgress, images: torch.Tensor) -> None:
        """Every rank sees the same summed totals, so all stop together, before anything is saved."""
        loss_sum, _, _, count = distributed.all_reduce_sum(progress.counts.values.clone()).tolist()
        reason = self.guard.check(epoch, loss_sum, count)
        if reason is None:
            return
        finite = [(top1, i) for i, (top1, loss) in
                  enumerate(zip(self.history["val_accuracy"], self.history["val_loss"])) if math.isfinite(loss)]
        kept = (f"best.pt holds epoch {max(finite)[1] + 1} (val top-1 {max(finite)[0]:.1%})" if finite
                else "no epoch finished, so there is no best.pt")
        advice = divergence_advice(bool(torch.isfinite(images).all()), self.warmup.peak_lr)
        raise TrainingDiverged(f"training stopped in epoch {epoch + 1} at step {progress.step}/"
                               f"{len(self.train_loader)}: {reason}; {advice}; nothing since was saved ({kept})",
                               epoch, progress.step)

    def checkpoint(self, epoch: int, progress: EpochProgress | None = None, seconds: float = 0.0) -> Path:
        """All ranks call this (they gather their states); rank 0 writes last.pt."""
        mine = {"dali": self.train_loader.state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.placement.device) if self.placement.on_gpu else None,
                "step": 0, "seconds": 0.0, "totals": None, "train_files": self.train_files}
        if progress is not None:
            mine.update(progress.to_dict(), seconds=seconds)
        ranks = self.ranks = distributed.gather_objects(mine)
        path = self.out / LAST
        if self.dist.is_main:
            save_checkpoint(self.state(epoch, ranks).to_dict(), path)
        return path

    @functools.cached_property
    def train_files(self) -> str:
        return files_digest(self.data.train.files)  # once: ImageNet's 1.28M paths take a while

    def stopped_by_data(self, error: RuntimeError, epoch: int, progress: EpochProgress | None,
                        seconds: float = 0.0) -> DataError:
        """A file changed under the run and DALI's pipeline stopped (pipeline_errors.py): save the
        progress up to the last good step, then the one line naming the file. `progress` is None
        for the validation pass. Under DDP the other ranks are inside a step and cannot join a
        checkpoint: last.pt keeps the last one written."""
        last = self.out / LAST
        if progress is not None and progress.step and not self.dist.distributed:
            self.stop_if_diverged(epoch, progress, torch.zeros(0))  # a blown-up model is never saved
            self.checkpoint(epoch, progress, seconds)  # DALI's reader state is still that of the last good batch
            kept = f"progress up to that step is saved in {last}"
        elif last.exists():
            kept = f"{last} holds the run as of its last checkpoint"
        else:
            kept = None
        fix = "restore or replace the file and run the same command"
        advice = (f"{kept}: {fix} with --resume, or add --skip-bad to it to train without the file" if kept else
                  f"no checkpoint was written yet: {fix} again, or add --skip-bad to train without the file")
        if progress is None:
            where, files = f"validation after epoch {epoch + 1} stopped", self.data.val.files
        else:
            where, files = f"training stopped in epoch {epoch + 1} at step {progress.step}/{len(self.train_loader)}", \
                self.data.train.files
        log = logger.info if self.dist.is_main else lambda line: None
        return data_changed_error(error, files, self.placement, where=where, advice=advice,
                                  cache_path=self.data.scan_cache if self.dist.is_main else None, log=log)


def files_digest(files) -> str:
    """Which training files a checkpoint's reader position belongs to."""
    import hashlib

    return hashlib.sha1("\0".join(files).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def fmt_rgb(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def build_run(config: TrainConfig, state: TrainState, data: TrainingData, dist: DistInfo,
              placement: Placement) -> tuple[Run, dict | None]:
    """The model, optimiser, schedule and loaders of a run continuing `state`, and this rank's
    saved reader and RNG state where it resumes mid-run (None: the data order starts afresh)."""
    per_process, global_batch, lr = batch_plan(config, dist.world_size)
    check_resume(state, config, data, global_batch if state.resumable else None)
    net = placement.put_model(state.bundle.net)
    # The model's own PCA (its input mean and lighting), never one recomputed from the data: a run
    # resumed or fitted on a changed data set must see its inputs centred as it was trained.
    pca = state.bundle.pca
    if pca != data.pca and dist.is_main:
        logger.info(f"the model's RGB PCA (mean {fmt_rgb(pca.mean)}, over {pca.images} images) is kept; this data's "
                    f"differs (mean {fmt_rgb(data.pca.mean)}, over {data.pca.images} images)")
    optimizer, scheduler = make_optimizer(net, config, lr)
    rank_state = restore(state, config, dist, placement, data, optimizer, scheduler, lr)
    train_loader, val_loader = make_loaders(config, data, pca, placement, dist, per_process, rank_state)
    warmup = Warmup.for_epochs(optimizer, lr, config.warmup_epochs, len(train_loader))
    guard = DivergenceGuard(len(data.train.classes))
    if state.resumable:  # continuing: the ramp and the guard's memory go on where they were
        warmup.load_state_dict(state.warmup)
        warmup.peak_lr = lr  # a --lr changed on resume is the lr from now on
        guard.load_state_dict(state.guard)
    bundle = ModelBundle(net, pca, data.train.classes, data.train.class_names, config.precision)
    run = Run(config, dist, placement, data, bundle, wrap(net, config, dist, placement), optimizer, scheduler, warmup,
              guard, train_loader, val_loader, {key: list(values) for key, values in state.history.items()})
    if dist.is_main:
        start_logs(run, data, state.epoch, per_process, lr)
    return run, rank_state


def sgd(parameters, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Section 5's update rule, in PyTorch's fused implementation: one pass over the 61M weights
    rather than one per term (model-only training at 1.30x the default's rate on 2 CPU cores;
    benchmarks/RESULTS.md)."""
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


def load_optimizer_state(optimizer: torch.optim.SGD, saved: dict) -> None:
    """The saved momentum and settings, in the implementation the optimiser was built with:
    load_state_dict would also restore a checkpoint's `fused` (None before the fused SGD)."""
    built = [group["fused"] for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, fused in zip(optimizer.param_groups, built):
        group["fused"] = fused


def make_optimizer(net: nn.Module, config: TrainConfig, lr: float):
    """Section 5: SGD with momentum and weight decay; lr / 10 when the validation error stalls."""
    optimizer = sgd(net.parameters(), lr, config.momentum, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=config.lr_patience, min_lr=config.min_lr)
    return optimizer, scheduler


def restore(state: TrainState, config: TrainConfig, dist: DistInfo, placement: Placement, data: TrainingData,
            optimizer, scheduler, lr: float) -> dict | None:
    """Load a resumed run's optimiser and schedule (with what the config changed), then seed this
    rank's RNG: its saved one where it resumes, a fresh one per rank otherwise (dropout masks differ
    per rank). Returns this rank's saved state, or None."""
    rank_state = None
    if state.resumable:
        load_optimizer_state(optimizer, state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        apply_resume_changes(optimizer, scheduler, state.config, config, lr)
        rank_state = restore_rank(state, dist, data)
        step = f", step {rank_state['step']}" if rank_state and rank_state["step"] else ""
        logger.info(f"resuming {config.out} at epoch {state.epoch + 1}{step}, lr {optimizer.param_groups[0]['lr']:g}")
    torch.manual_seed(config.seed + 1 + dist.rank)
    if rank_state is not None:
        torch.set_rng_state(rank_state["torch_rng"])
        if placement.on_gpu and rank_state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(rank_state["cuda_rng"], placement.device)
    return rank_state


def restore_rank(state: TrainState, dist: DistInfo, data: TrainingData) -> dict | None:
    """This rank's saved reader and RNG state, or None where the number of processes or the
    training files changed (a reader position means nothing in another list of files)."""
    if len(state.ranks) != dist.world_size:
        if dist.is_main:
            logger.warning(f"the checkpoint was written by {len(state.ranks)} processes, this run has "
                           f"{dist.world_size}: the data order restarts at epoch {state.epoch + 1}")
        return None
    saved = state.ranks[dist.rank]
    if saved.get("train_files") not in (None, files_digest(data.train.files)):
        if dist.is_main and saved.get("step"):
            logger.warning(f"the training files differ from those of the checkpoint (left out by --skip-bad, or "
                           f"changed): epoch {state.epoch + 1} starts its data order again from the weights "
                           f"of step {saved['step']}")
        return None
    return saved


def make_loaders(config: TrainConfig, data: TrainingData, pca, placement: Placement, dist: DistInfo,
                 per_process: int, rank_state: dict | None) -> tuple[DaliLoader, DaliLoader]:
    """This rank's shard of the training split (its reader where it was saved) and of validation."""
    train_loader = training_loader(data.train, pca, placement, dist, batch_size=per_process, seed=config.seed,
                                   lighting=config.lighting, prefetch=config.prefetch,
                                   state=rank_state and rank_state["dali"])
    val_loader = evaluation_loader(data.val, pca, placement, dist, batch_size=per_process, prefetch=config.prefetch)
    return train_loader, val_loader


def wrap(net: nn.Module, config: TrainConfig, dist: DistInfo, placement: Placement) -> nn.Module:
    """The network as the training steps run it: in DDP under torchrun, through torch.compile with
    --compile (checkpoints and validation use `net` itself, whose keys stay plain)."""
    model = net
    if dist.distributed:
        model = DistributedDataParallel(net, device_ids=[placement.device] if placement.on_gpu else None,
                                        gradient_as_bucket_view=True, bucket_cap_mb=DDP_BUCKET_MB)
    return torch.compile(model) if config.compile else model


def start_logs(run: Run, data: TrainingData, start_epoch: int, per_process: int, lr: float) -> None:
    """config.json, the TensorBoard writer and the opening lines (main process only)."""
    from torch.utils.tensorboard import SummaryWriter

    config, out = run.config, run.out
    out.mkdir(parents=True, exist_ok=True)
    lr_rule = lr_for_batch(config.lr, config.batch_size, run.dist.world_size, config.per_gpu_batch)[1]
    write_run_file(lambda path: write_config(
        config, path, **code_version(), world_size=run.dist.world_size, global_batch=run.global_batch,
        batch_per_process=per_process, lr_effective=lr, lr_rule=lr_rule, train_images=len(data.train),
        val_images=len(data.val), classes=list(data.train.classes)), out / "config.json")
    run.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch)
    logger.info(f"training on {len(data.train)} images ({len(data.train.classes)} classes), validating on "
                f"{len(data.val)}; {run.dist.world_size} process(es) on {run.placement.device.type}, "
                f"global batch {run.global_batch}; run directory {out}")
    logger.info(lr_rule + (f", reached after {run.warmup.steps} warmup steps" if run.warmup.steps else ""))
    if config.compile:
        logger.info("--compile: the first training step compiles the network (torch.compile), which takes a while")
    logger.info(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")


def write_run_file(write, path: Path) -> None:
    """config.json, history.json: a write that fails (a full disk) is one line, as a checkpoint's is."""
    try:
        write(path)
    except OSError as e:
        raise write_failure(e, path) from None


def end_epoch(run: Run, epoch: int, metrics: EpochMetrics) -> None:
    """Checkpoint (all ranks), then best.pt, history.json, TensorBoard and the epoch's line."""
    path = run.checkpoint(epoch + 1)
    if not run.dist.is_main:
        return
    finite = [top1 for top1, loss in zip(run.history["val_accuracy"][:-1], run.history["val_loss"][:-1])
              if math.isfinite(loss)]
    if math.isfinite(metrics.val_loss) and metrics.val_accuracy > max(finite, default=-1.0):
        link(path, run.out / BEST)  # never a model whose validation loss is NaN
    write_run_file(lambda path: write_json(run.history, path, indent=2), run.out / HISTORY)
    metrics.write(run.writer, epoch + 1)
    run.writer.flush()
    logger.info(f"epoch {epoch + 1}/{run.config.epochs}: loss {metrics.loss:.4f}, top-1 {metrics.accuracy:.1%}, "
                f"val loss {metrics.val_loss:.4f}, val top-1 {metrics.val_accuracy:.1%}, "
                f"val top-5 {metrics.val_top5:.1%}, lr {metrics.lr:g}, {metrics.images_per_sec:.1f} images/s")


# -- The run ---------------------------------------------------------------------------------

def train(config: TrainConfig, state: TrainState | None = None, *, data: TrainingData | None = None,
          dist: DistInfo | None = None, placement: Placement | None = None) -> TrainState:
    """Train until `config.epochs` epochs are done, continuing `state` (None: a new model), and
    return the state reached. `data`, `dist` and `placement` let a caller reuse what it built."""
    from tqdm import tqdm

    if dist is None or placement is None:
        dist, placement = start_process(config)
    data = data or load_training_data(config, dist, placement)
    state = state or new_state(config, data)
    fresh = state.epoch == 0 and state.optimizer is None
    if fresh and dist.is_main and (Path(config.out) / LAST).exists():
        raise CheckpointError(f"{config.out} already holds a training run (last.pt); train into another run directory")
    run, rank_state = build_run(config, state, data, dist, placement)
    with StepControl(config.checkpoint_every, dist, placement.device) as control:
        for epoch in range(state.epoch, config.epochs):
            progress = EpochProgress.resumed(rank_state, placement.device)
            rank_state = None
            with tqdm(total=len(run.train_loader), initial=progress.step, disable=not dist.is_main,
                      desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", dynamic_ncols=True) as bar:
                started = time.perf_counter()
                try:
                    signum = train_one_epoch(run, epoch, progress, control, bar)
                except RuntimeError as e:  # a file deleted or rewritten since the scan
                    if not is_pipeline_error(e):
                        raise
                    bar.close()
                    raise run.stopped_by_data(e, epoch, progress,
                                              progress.seconds + time.perf_counter() - started) from None
            lr = run.optimizer.param_groups[0]["lr"]  # the lr of the epoch's last step (warmup moves it within)
            if signum:
                raise TrainingInterrupted(signum, run.out / LAST, epoch, progress.step)
            counts = progress.counts.summed()
            loss, top1, top5 = counts.rates()
            images_per_sec = counts.images / max(progress.seconds, 1e-9)
            try:
                val = evaluate(run.bundle.net, run.val_loader, config.precision).summed()
            except RuntimeError as e:
                if not is_pipeline_error(e):
                    raise
                raise run.stopped_by_data(e, epoch, None) from None
            if val.images != len(data.val) and dist.is_main:
                logger.warning(f"validation counted {val.images} images, the split has {len(data.val)}")
            metrics = EpochMetrics(loss, top1, top5, *val.rates(), lr, images_per_sec)
            if not run.warmup.active:  # the plateau rule starts counting after warmup (schedule.py)
                run.scheduler.step(1.0 - metrics.val_accuracy)  # section 5: lr / 10 when validation error stalls
            append(run.history, metrics)
            end_epoch(run, epoch, metrics)
            control.checkpointed()
    if run.writer is not None:
        run.writer.close()
    if run.ranks is None:  # nothing left to train
        return state
    return run.state(config.epochs, run.ranks)
