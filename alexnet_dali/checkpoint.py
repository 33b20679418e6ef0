"""Checkpoints: one file, written atomically, loaded without ever running code from it.

Save: write `NAME.tmp<pid>` (a name no other process uses), flush + fsync, `os.replace` onto the
name (a crash leaves the old file or the new one, never half of one), then fsync the folder.
Before `last.pt` is replaced the previous one is kept as `previous.pt` (a hard link), so one bad
file never loses the run. A write that fails (disk full) or is interrupted (a second Ctrl-C)
removes its partial file and leaves the old checkpoint as it was.
Load: `torch.load(weights_only=True)`; whatever else a file is (empty, text, truncated, not ours,
a pickle that asks to run code) raises CheckpointError naming the file and what it is.
Digest: every file records the CRC-32 of each tensor's bytes (`tensor_crc32`), and loading checks
them, so flipped bits in the weights name the file and the tensor instead of loading silently
(torch.load reads the tensors as raw bytes and would not notice). Files without it load unchecked.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from .errors import UserError
from .log import logger

FORMAT = "alexnet-dali-checkpoint"
VERSION = 2  # 2: the typed state (state.py) adds arch, precision, warmup; format 1 loads too
LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
HISTORY = "history.json"  # written by the trainer beside the checkpoints
DIGEST = "tensor_crc32"  # where -> CRC-32 of the tensor's bytes, for every tensor in the file


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or run directory that cannot be used as asked: names the file and what to do."""


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed: unique to this process, so two writers never
    share one (the run directory's lock cleans up those a dead process left)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def save_checkpoint(state: dict, path: str | os.PathLike, *, digest: bool = True) -> Path:
    """Write `state` to `path` atomically, with the CRC-32 of every tensor (digest=False: without,
    as files written before the digest; benchmarks/checkpoint.py measures what it costs)."""
    path = Path(path)
    if path.is_dir():  # checked first: os.replace would fail only after the whole file is written
        raise CheckpointError(f"cannot write {path}: it is a folder; pass a file name, e.g. {path / 'model.pt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"format": FORMAT, "version": VERSION, **state}
    if digest:
        values[DIGEST] = tensor_crc32(state)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f, without_zip_checksums():
            torch.save(values, f)
            f.flush()
            os.fsync(f.fileno())
        if path.name == LAST and path.exists():
            link(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise (e if isinstance(e, CheckpointError) else write_failure(e, path)) from None
    fsync_dir(path.parent)
    return path


def tensor_crc32(values) -> dict[str, int]:
    """"model/features.0.weight" -> zlib.crc32 of that tensor's bytes, for every tensor in the
    nested dicts and lists of `values` (weights, optimiser state, RNG states)."""
    return {where: zlib.crc32(tensor_bytes(tensor)) for where, tensor in tensors_in(values)}


def tensors_in(values, where: str = ""):
    if isinstance(values, torch.Tensor):
        yield where, values
    elif isinstance(values, dict):
        for key, value in values.items():
            if key != DIGEST:
                yield from tensors_in(value, f"{where}/{key}" if where else str(key))
    elif isinstance(values, (list, tuple)):
        for i, value in enumerate(values):
            yield from tensors_in(value, f"{where}/{i}" if where else str(i))


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's data as bytes, without a copy where it is already contiguous on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def damaged_tensors(state: dict, recorded: dict) -> list[str]:
    """The tensors of a loaded file whose bytes differ from their recorded CRC-32, and those the
    digest names that are missing (or are not tensors)."""
    found = dict(tensors_in(state))
    damaged = [where for where, crc in recorded.items()
               if where not in found or zlib.crc32(tensor_bytes(found[where])) != crc]
    return damaged + [f"{where} (not in the digest)" for where in found if where not in recorded]


@contextlib.contextmanager
def without_zip_checksums():
    """torch.save without the zip's CRC-32 of every tensor: torch.load never checks them, and
    computing them is most of a save (0.8 of 0.9 s for AlexNet's 466 MB with momentum, measured).
    `unzip -t` would report the zeros; torch.load and load_checkpoint do not read them."""
    if not hasattr(torch.serialization, "set_crc32_options"):  # torch < 2.6 always computes them
        yield
        return
    from torch.utils.serialization import config

    before = config.save.compute_crc32
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def write_failure(error: BaseException, path: Path) -> BaseException:
    """What to raise when writing `path` failed. torch.save, interrupted, tries to finish its
    archive and raises a RuntimeError of its own over the cause: look through it for a Ctrl-C
    (re-raised as is) or an OS error (disk full, file too large), which becomes one clear line."""
    cause = error
    while cause is not None and not isinstance(cause, (KeyboardInterrupt, OSError)):
        cause = cause.__context__
    if isinstance(cause, KeyboardInterrupt):
        return cause
    if isinstance(cause, OSError):
        unchanged = f"{path} is unchanged" if path.exists() else f"no {path.name} was written"
        resumable = (path.parent / LAST).exists() or (path.parent / PREVIOUS).exists()
        if path.name in (LAST, PREVIOUS, BEST, HISTORY) and not resumable:  # the run's first checkpoint
            again = (" (or pass another --out) and run the same command again, without --resume: the run holds no "
                     "checkpoint yet, so it starts from the beginning")
        elif path.name in (LAST, PREVIOUS, BEST):
            again = " (or pass another --out) and run again with --resume"
        elif path.name == HISTORY:
            again = f" and run again with --resume ({LAST} holds the epoch)"
        else:
            again = " and try again"
        return CheckpointError(f"cannot write {path}: {cause.strerror or cause} (errno {cause.errno}); the partial "
                               f"file was removed and {unchanged}. Free space on that disk{again}")
    return error


def link(source: Path, target: Path) -> None:
    """target becomes another name of source (atomically; a copy where links are not allowed)."""
    tmp = temporary_name(target)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(e, target) from None


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


# -- Loading ---------------------------------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a zip archive holding a pickle and the tensors
PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol 2 or later (torch's legacy format too)
# What a weights-only load may import: torch's tensor rebuilders and storages, ordered dicts.
PLAIN_GLOBALS = re.compile(r"(torch(\.|$)|collections\.OrderedDict$|_codecs\.encode$)")


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    head = read_head(path)
    kind = file_kind(path, head)  # raises for files that are no checkpoint at all
    try:
        with warnings.catch_warnings():  # torch's note on a pickle's protocol: the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(refused_pickle(path, kind, e)) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
        if kind == "zip" and not zipfile.is_zipfile(path):
            what = "a truncated checkpoint: a zip archive cut short (the index at its end is missing)"
        else:
            what = f"a damaged {'checkpoint' if kind == 'zip' else 'pickle'} ({type(e).__name__}: {first_line(e)[:160]})"
        raise CheckpointError(f"{path} is {what}; use another checkpoint (previous.pt, best.pt)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an alexnet-dali checkpoint (found {what})")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer alexnet-dali (format {state['version']} > {VERSION})")
    recorded = state.pop(DIGEST, None)  # None: written before the digest
    if recorded is not None:
        damaged = damaged_tensors(state, recorded)
        if damaged:
            more = f", ... ({len(damaged)} in all)" if len(damaged) > 4 else ""
            raise CheckpointError(f"{path} is damaged: the bytes of tensor {', '.join(damaged[:4])}{more} differ from "
                                  "the CRC-32 recorded when it was saved; use another checkpoint (previous.pt, best.pt)")
    return state


def read_head(path: Path, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None


def file_kind(path: Path, head: bytes) -> str:
    """"zip" or "pickle": what torch.load can read; CheckpointError naming anything else."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[:1] == bytes([PICKLE_PROTO]) and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if not head:
        raise CheckpointError(f"{path} is an empty file (0 bytes), not a checkpoint")
    if is_text(head):
        begins = head[:40].decode("utf-8", errors="replace").split("\n")[0]
        raise CheckpointError(f"{path} is a text file, not a checkpoint (it begins {begins!r})")
    raise CheckpointError(f"{path} is not a checkpoint: neither a zip archive (torch.save's format) nor a pickle "
                          f"(it begins with the bytes {head[:8].hex(' ')})")


def is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two by the end of `head`
            return False
        text = head[:e.start].decode("utf-8")
    return sum(c.isprintable() or c in "\t\n\r" for c in text) >= 0.95 * len(text)


def refused_pickle(path: Path, kind: str, error: pickle.UnpicklingError) -> str:
    """What a file that the weights-only unpickler refused is, read without running it."""
    try:
        names = pickle_globals(pickle_bytes(path, kind))
    except (OSError, zipfile.BadZipFile, KeyError):
        names = None
    if names is None:
        return (f"{path} is a truncated or damaged pickle, not a checkpoint ({refusal_reason(error)}); use another "
                "checkpoint (previous.pt, best.pt)")
    code = [name for name in names if not PLAIN_GLOBALS.match(name)]
    if code:
        what = (f"a pickle that asks to run code or build objects when loaded (it names "
                f"{', '.join(dict.fromkeys(code))}), which a checkpoint never needs")
    else:
        what = f"a pickle that a safe load cannot read ({refusal_reason(error)})"
    return (f"{path} was refused: it is {what}. It was not loaded and nothing in it ran; use a checkpoint "
            "written by alexnet-dali (last.pt, best.pt, AlexNet.save)")


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """torch's specific complaint ("Unsupported operand 149"), without the advice around it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return reason.split(". ")[0][:160] or "refused"
    return type(error).__name__


def pickle_bytes(path: Path, kind: str) -> bytes:
    if kind == "zip":
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            return archive.read(name) if name else b""
    return path.read_bytes()


def pickle_globals(data: bytes) -> list[str] | None:
    """The module.name of every import a pickle would make, read with pickletools (which runs
    nothing); None where the pickle is cut short or damaged."""
    names, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
    except Exception:  # noqa: BLE001 - any failure to parse means the same: not a whole pickle
        return None
    return names


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
        logger.warning(f"{e}; resuming from the older {previous} (epoch {state.get('epoch')})")
        return state, previous
