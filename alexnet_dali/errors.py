"""The errors a user's input raises. `UserError` is their base: the CLI prints one as an
`error: ...` line (exit status 2), never a traceback. `DataError` carries every problem found,
each naming a file or label and what is wrong, reported together (a person fixes a folder in one
pass, not one error per run)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_LISTED = 20  # problems listed in an error message before "... and N more"


class UserError(Exception):
    """Something the person running it can fix (an option, a file, a run directory, a run that
    diverged): the message says what and how."""


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class DataError(UserError, ValueError):
    """Bad input, with every problem found (each names a file or label and what is wrong)."""

    def __init__(self, problems: list[Problem] | str, summary: str = "problems with the data"):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"... and {len(self.problems) - MAX_LISTED} more")
        if len(self.problems) == 1:
            message = lines[0]
        else:
            message = f"{summary} ({len(self.problems)}):\n  " + "\n  ".join(lines)
        super().__init__(message)
