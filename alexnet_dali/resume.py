"""Continuing a run: the CLI's and torchrun's path back into a run directory, and the rules for
what a resumed run may change.

    state = resume_state(config)                           # last.pt when --resume or a torchrun restart
    config = resumed_config(state, config, given, world)   # the options this command changed, checked
    check_resume(state, config, data, global_batch)        # the network and classes still fit the data
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from . import distributed
from .checkpoint import LAST, CheckpointError, newest_valid_checkpoint
from .config import CHANGES, COMMAND, FIXES, TrainConfig, with_resume_rule
from .log import logger
from .schedule import batch_plan
from .state import TrainState, model_args, state_from_checkpoint

if TYPE_CHECKING:
    from .dataset import TrainingData


def resume_state(config: TrainConfig) -> TrainState | None:
    """The CLI's and torchrun's path: the run directory's newest checkpoint when --resume is given
    or torchrun restarted this worker; None for a new run."""
    restarted = distributed.restarted()  # counted by this node's agent or not
    found = newest_valid_checkpoint(config.out)
    if found is None:
        # A torchrun restart before the first checkpoint starts afresh; --resume by hand means the
        # user expects a run there (a typo in --out must not quietly start another from scratch).
        if config.resume and not restarted:
            raise CheckpointError(f"--resume was given, but {config.out} holds no checkpoint (last.pt or previous.pt)"
                                  "; check --out, or leave out --resume to start a new run")
        return None
    if not (config.resume or restarted):
        raise CheckpointError(f"{Path(config.out) / LAST} exists: pass --resume to continue that run, "
                              "or --out for a new run directory")
    return state_from_checkpoint(*found)


# On resume, an option left out of the command takes the checkpoint's value. One that is given and
# differs follows its field's resume rule (config.py): CHANGES take effect from now on (and are
# reported); COMMAND options belong to this command alone (where and how fast it runs); FIXES (the
# network, the seed, the augmentation, the global batch) are the run's identity, and a change is
# refused. A saved key this version does not know is dropped (TrainConfig.recorded).
RESUME_CHANGES = with_resume_rule(CHANGES)
RESUME_INVOCATION = with_resume_rule(COMMAND)


def option_name(name: str) -> str:
    return "DATA" if name == "data" else f"--{name.replace('_', '-')}"


def resumed_config(state: TrainState, config: TrainConfig, given: set[str], world_size: int) -> TrainConfig:
    """The config a resumed run really uses: the checkpoint's, with the options `given` on this
    command applied where they may change. CheckpointError listing every refused change."""
    saved = TrainConfig.recorded(state.config)
    values = config.to_dict()
    for name, value in saved.items():
        if name not in given and name not in RESUME_INVOCATION:
            values[name] = value
    resumed = TrainConfig.from_dict(values)
    changed, refused = [], []
    for name in sorted(given & saved.keys()):
        if name in RESUME_INVOCATION or saved[name] == values[name]:
            continue
        change = f"{option_name(name)}: {saved[name]} -> {values[name]}"
        (changed if name in RESUME_CHANGES else refused).append(change)
    global_batch = batch_plan(resumed, world_size)[1]
    if state.global_batch is not None and state.global_batch != global_batch:
        refused.append(f"global batch: {state.global_batch} -> {global_batch}")
    if refused:
        raise CheckpointError(f"cannot resume {config.out} with these changes, which would make it another run: "
                              f"{'; '.join(refused)}. Leave them out to continue as it was, or pass another --out "
                              f"for a new run (may change on resume: {', '.join(RESUME_CHANGES)})")
    if changed:
        logger.info(f"changed on resume, from epoch {state.epoch + 1}: {'; '.join(changed)}"
                    + (" (the learning rate from now on; the plateau rule goes on from it)" if "lr" in given
                       and saved.get("lr") != values["lr"] else ""))
    return resumed


def nothing_left(state: TrainState, config: TrainConfig) -> str:
    """What --resume says when the run has already done the epochs asked for."""
    return (f"{config.out} has finished {state.epoch} epoch(s), and --epochs is {config.epochs}: nothing left to do. "
            f"To train on, pass the total you want, e.g. --resume --epochs {state.epoch + 1} for one more epoch")


def apply_resume_changes(optimizer, scheduler, saved: dict, config: TrainConfig, lr: float) -> None:
    """A resumed optimiser and schedule carry their own settings: apply those the config changed."""
    for name, value in (("lr", lr), ("momentum", config.momentum), ("weight_decay", config.weight_decay)):
        if name in saved and saved[name] != getattr(config, name):
            for group in optimizer.param_groups:
                group[name] = value
    if "lr_patience" in saved and saved["lr_patience"] != config.lr_patience:
        scheduler.patience = config.lr_patience
    if "min_lr" in saved and saved["min_lr"] != config.min_lr:
        scheduler.min_lrs = [config.min_lr] * len(optimizer.param_groups)


def check_resume(state: TrainState, config: TrainConfig, data: TrainingData, global_batch: int | None) -> None:
    """A model trains on only with its network and classes; an optimiser state continues only
    with the global batch it was made with (None: not checked)."""
    conflicts = []
    wanted = model_args(config, len(data.train.classes))
    for name, value in state.bundle.net.arch.items():  # the class count is compared as classes, below
        if name != "num_classes" and wanted[name] != value:
            conflicts.append(f"{name}: {value} -> {wanted[name]}")
    if state.bundle.classes != data.train.classes:
        conflicts.append(class_change(state.bundle.classes, data.train.classes))
    if None not in (state.global_batch, global_batch) and state.global_batch != global_batch:
        conflicts.append(f"global batch: {state.global_batch} -> {global_batch}")
    if conflicts:
        raise CheckpointError(f"cannot train on into {config.out}: the model was made with a different set-up:\n  "
                              + "\n  ".join(conflicts))


def class_change(old: tuple[str, ...], new: tuple[str, ...]) -> str:
    """The classes, or their indices, that differ between a model and the data."""
    if sorted(old) != sorted(new):
        return f"classes (index order): {short_list(old)} -> {short_list(new)}"
    index = {name: i for i, name in enumerate(new)}
    moved = [f"{name!r} {i} -> {index[name]}" for i, name in enumerate(old) if index[name] != i]
    more = f", ... ({len(moved)} in all)" if len(moved) > 8 else ""
    return (f"class indices: the same {len(old)} classes, but {len(moved)} moved (model -> data): "
            f"{', '.join(moved[:8])}{more}; pass the label encoding the model was trained with")


def short_list(names, shown: int = 8) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(map(repr, names[:shown])) + more + "]"


# README.md's list of the resume rules, between these lines: generated from the fields' metadata
# (tests/test_runs.py checks that README holds what this gives), so it cannot drift.
README_START = "  <!-- resume rules: generated by alexnet_dali.resume.readme_rules() -->"
README_END = "  <!-- end of the resume rules -->"
RULE_TEXT = {CHANGES: "takes effect from now on, and is listed in a `changed on resume` line",
             COMMAND: "belongs to this command alone (where and how fast it runs)",
             FIXES: "is refused, with every such change listed, as it would make another run"}


def readme_rules() -> str:
    """The README's block: for each rule, the options that follow it."""
    lines = [README_START]
    for rule in (CHANGES, COMMAND, FIXES):
        options = ", ".join(f"`{option_name(name)}`" for name in with_resume_rule(rule))
        lines += textwrap.wrap(f"{RULE_TEXT[rule]}: {options};", 96, initial_indent="  - ", subsequent_indent="    ",
                               break_on_hyphens=False)
    return "\n".join([*lines, README_END])


if __name__ == "__main__":  # python -m alexnet_dali.resume: the block to paste into README.md
    print(readme_rules())
