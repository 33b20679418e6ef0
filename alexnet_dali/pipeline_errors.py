"""When data changes under a run: a DALI pipeline that stops mid-pass ("Critical error in
pipeline") because a file the scan passed was deleted, or rewritten, since. The error becomes one
DataError line naming the file (or object) and what to do, never DALI's traceback.

DALI names the file when its reader cannot open a local one ("File mapping failed: PATH"); it
names nothing for a deleted s3:// object (`encountered: : `) or for bytes that no longer decode
("nvImageCodec failure: '#4'"). Then the culprit is found by asking, cheapest first: which of
the pass's files no longer exist (a stat each, or one listing of the bucket), and only then
which no longer decode (the scan's decoder over every file, its verdicts recorded in the scan
cache so that the next start, and --skip-bad, know the file is bad although its size and
modification time did not change).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from .errors import DataError, Problem
from .sources import missing_files, not_on_file_system

PIPELINE_ERROR = "Critical error in pipeline"
MISSING = "missing: deleted or moved after the run's scan"
NAMED_IN_LINE = 3  # files a one-line message names before "and N more"


def is_pipeline_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and PIPELINE_ERROR in str(error)


def dali_reason(text: str) -> str:
    """The line of DALI's error that says what went wrong ("" where it says nothing)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == "encountered:":
            for after in lines[index + 1:]:
                after = after.strip().strip(":").strip()
                if after and not after.startswith(("C++ context", "Current pipeline object")):
                    return after
            return ""
    return ""


def named_files(text: str, files: Sequence[str]) -> list[str]:
    """The files of the pass that DALI's error text names (a path may hold spaces, so each file
    is looked for as it is; a name inside a longer named one does not count)."""
    found = [f for f in files if f in text]
    return [f for f in found if not any(f != other and f in other for other in found)]


def named_reason(path: str, text: str) -> str:
    """Why DALI could not read a file its error names."""
    from .scan import diagnose

    if not not_on_file_system(path) and not os.path.lexists(path):
        return MISSING
    return diagnose(path) or dali_reason(text) or "DALI could not read it"


def find_bad_files(error: BaseException, files: Sequence[str], placement, *, cache_path: Path | None = None,
                   log: Callable[[str], None] = lambda line: None) -> list[Problem]:
    """The files of a pass (`files`) that stopped its pipeline with `error`, each with the reason.
    Empty where every file exists and decodes now (the failure was not the data's)."""
    from .scan import ScanCache, decode_check, save_scanned

    named = named_files(str(error), files)
    if named:
        return [Problem(f, named_reason(f, str(error))) for f in named]
    missing = missing_files(files)
    if missing:
        return [Problem(f, MISSING) for f in missing]
    log(f"DALI named no file ({dali_reason(str(error)) or 'no reason given'}): decoding the pass's {len(files)} "
        "images again to find the one that changed")
    results = decode_check(list(files), placement)
    if cache_path is not None:  # the file kept its size and mtime: only this verdict tells the next start
        save_scanned(ScanCache(cache_path), results, len(files))
    return [Problem(path, reason) for path, reason in results.items() if reason]


def describe(problems: list[Problem]) -> str:
    """The bad files in one line: up to NAMED_IN_LINE of them, with their reasons."""
    shown = "; ".join(str(p) for p in problems[:NAMED_IN_LINE])
    more = len(problems) - NAMED_IN_LINE
    return shown + (f"; and {more} more file(s)" if more > 0 else "")


def data_changed_error(error: BaseException, files: Sequence[str], placement, *, where: str, advice: str,
                       cache_path: Path | None = None, log: Callable[[str], None] = lambda line: None) -> DataError:
    """The one-line DataError for a pipeline that `error` stopped: `where` it stopped, the files
    at fault and why, then `advice`. Its `problems` list every bad file."""
    try:
        problems = find_bad_files(error, files, placement, cache_path=cache_path, log=log)
    except DataError as e:  # the store itself is now out of reach, say
        problems = [Problem("", str(e))]
    if problems:
        what = describe(problems)
    else:
        reason = dali_reason(str(error)) or "no reason given"
        what = f"DALI's pipeline failed ({reason}), but every file exists and decodes now (a passing read error?)"
    raised = DataError(f"{where}: {what}; {advice}")
    raised.problems = problems
    return raised
