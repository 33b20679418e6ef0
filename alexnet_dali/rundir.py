"""The run directory (--out): checked before any work, held by one training run at a time, and
cleared of the partial files an interrupted run left.

    check_out_dir(out)     ConfigError unless OUT is, or can become, a folder this process writes in
    check_outside_data(c)  ConfigError where OUT (or --cache-dir) lies in a split of a local DATA
    RunLock(out)           an exclusive flock on OUT/.lock (the file names its holder's pid and host)
    hold_run_dir(out, d)   the CLI's: the main process takes the lock, every rank gets its verdict

The lock lives as long as its holder: the kernel drops a flock when the process ends, however it
ends, so a crashed or killed run never leaves the directory locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import weakref
from contextlib import contextmanager
from pathlib import Path

from . import distributed
from .config import ConfigError
from .log import logger

LOCK_NAME = ".lock"
# What checkpoint.save_checkpoint, checkpoint.link and jsonio.write_json write before their rename
# (NAME.tmp<pid>; NAME.tmp before the names were per process). Under the lock, any such file is
# the remains of a run that died while writing.
PARTIAL_FILE = re.compile(r".+\.(pt|json)\.tmp\d*")


def check_out_dir(out: str | os.PathLike, option: str = "--out") -> None:
    """Raise ConfigError (naming `option`) unless `out` is a folder this process can write in, or
    one it can make. Creates nothing."""
    path = Path(out)
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        if existing.is_symlink() and not existing.exists():
            where = "is a broken symbolic link" if existing == path else f"cannot be made: {existing} is a broken link"
        raise ConfigError(f"{option} {out} {where}, not a folder; pass a folder for the run")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is read-only" if existing == path else f"cannot be made: {existing} is read-only"
        raise ConfigError(f"{option} {out} {where} for this user; pass a folder you can write in")


def check_outside_data(config, out_option: str = "--out", cache_option: str = "--cache-dir") -> None:
    """Raise ConfigError (naming the option) where the run directory or the cache folder lies in a
    split of a local DATA: the run's files (last.pt, config.json, tensorboard/) would become
    files and classes of that split. Creates nothing."""
    from .imagenet import IMAGENET_TREE
    from .sources import not_on_file_system

    if not config.data or not_on_file_system(config.data):
        return
    splits = {}
    for root in ("", IMAGENET_TREE):
        for split in ("train", config.val_split):
            splits[split] = splits.get(split, []) + [os.path.realpath(os.path.join(config.data, root, split))]
    for option, location in ((out_option, config.out), (cache_option, config.cache_dir)):
        if not location:
            continue
        where = os.path.realpath(location)
        for split, folders in splits.items():
            if any(where == folder or where.startswith(folder + os.sep) for folder in folders):
                raise ConfigError(f"{option} {location} is inside the {split!r} split of DATA {config.data}: what a run "
                                  f"writes there would be read as images and classes of {split!r}; pass a folder "
                                  "outside DATA's splits")


class RunLock:
    """An exclusive lock on the run directory `out` (made if need be), held until `release()`,
    the object's end or the process's. A second holder is refused with a ConfigError naming the
    first. Stale partial files in `out` are removed once the lock is held."""

    def __init__(self, out: str | os.PathLike, option: str = "--out"):
        check_out_dir(out, option)
        self.out = Path(out)
        made = not os.path.lexists(self.out)  # removed again at the end if nothing was written in it
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{option} {out} cannot be made: {e.strerror or e}") from None
        self.path = self.out / LOCK_NAME
        fd = acquire(self.path, option)
        self._release = weakref.finalize(self, release, self.path, fd, self.out if made else None)
        remove_partial_files(self.out)

    def release(self) -> None:
        self._release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: Path, option: str) -> int:
    """An fd of `path` holding its exclusive flock, with our pid and host written in it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"{option} {path.parent} cannot be written: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without locks
                logger.warning(f"cannot lock {path} ({e.strerror}): make sure no other run uses {path.parent}")
                return -1
            if holder == f"pid {os.getpid()} on {socket.gethostname()}":
                holder = "this process: another AlexNet object or run"
            raise ConfigError(f"{path.parent} is in use by another training run ({holder or 'pid unknown'} holds "
                              f"{path}); wait for it to end, or pass another {option}") from None
        # The holder before us removes the file as it lets go: if it did so after we opened it, we
        # hold a lock on a name nobody else will see; take the new file instead.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)


def release(path: Path, fd: int, made: Path | None = None) -> None:
    """Remove the lock file (while still holding it, so that nobody locks a removed name unseen),
    then let go; and the folder `made` for the run, if the run left it empty (a refused start)."""
    if fd < 0:
        return
    try:
        current, mine = os.stat(path), os.fstat(fd)
        if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)
    if made is not None:
        try:
            made.rmdir()
        except OSError:  # not empty: the run wrote in it
            pass


def remove_partial_files(out: Path) -> None:
    removed = []
    for entry in out.iterdir():
        if PARTIAL_FILE.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            size = entry.stat().st_size
            entry.unlink(missing_ok=True)
            removed.append(f"{entry.name} ({size / 1e6:.0f} MB)" if size >= 1e6 else entry.name)
    if removed:
        logger.warning(f"removed {len(removed)} partial file(s) an interrupted run left in {out}: {', '.join(removed)}")


@contextmanager
def hold_run_dir(out: str | os.PathLike, dist_info):
    """The CLI's and torchrun's: the main process checks and locks `out` for the block; every rank
    raises the same error when it cannot (before any of them starts work)."""
    held = []
    distributed.on_main(dist_info, lambda: held.append(RunLock(out)))
    try:
        yield
    finally:
        for lock in held:
            lock.release()
