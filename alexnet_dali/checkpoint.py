"""Checkpoints: one file, written atomically, loaded without ever running code from it.

Save: write `NAME.tmp`, flush + fsync, `os.replace` onto the name (a crash leaves the old file
or the new one, never half of one), then fsync the folder. Before `last.pt` is replaced the
previous one is kept as `previous.pt` (a hard link), so one bad file never loses the run.
Load: `torch.load(weights_only=True)`; a pickle that asks for code, a truncated file or a file
that is not ours raises CheckpointError naming the file and the reason.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

FORMAT = "alexnet-dali-checkpoint"
VERSION = 2  # 2: the typed state (state.py) adds arch, precision, warmup; format 1 loads too
LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    if path.name == LAST and path.exists():
        link(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def link(source: Path, target: Path) -> None:
    """target becomes another name of source (atomically; a copy where links are not allowed)."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        import shutil

        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} was refused: it is not plain data (tensors, numbers, strings) but a pickle that asks "
            f"to run code or build objects ({first[:200]}). It was not loaded and nothing in it ran."
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = f"a dict with keys {sorted(state)[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an alexnet-dali checkpoint (found {what})")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer alexnet-dali (format {state['version']} > {VERSION})")
    return state


def newest_valid_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, Path] | None:
    """last.pt, or previous.pt with a warning if last.pt cannot be read; None if neither exists."""
    run_dir = Path(run_dir)
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    if not last.exists() and not previous.exists():
        return None
    try:
        return load_checkpoint(last), last
    except CheckpointError as e:
        if not previous.exists():
            raise
        state = load_checkpoint(previous)
        warnings.warn(f"{e}; resuming from the older {previous} (epoch {state.get('epoch')})", stacklevel=2)
        return state, previous
