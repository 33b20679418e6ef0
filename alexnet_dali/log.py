"""The package's messages: one logger, "alexnet_dali", set up once per process. Rank 0 shows
progress (INFO); other ranks show only what is theirs alone to say (WARNING and above), so eight
processes do not print every line eight times."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("alexnet_dali")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (pytest and notebooks swap them)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it
        pass


def setup_logging(rank: int = 0, stream: str = "stdout") -> None:
    """Rank 0 at INFO, other ranks at WARNING. Progress goes to sys.stdout (or "stderr", where
    stdout carries a command's result, e.g. --json), warnings and errors to sys.stderr. Calling
    it again only changes the level and stream."""
    for handler in [h for h in logger.handlers if isinstance(h, _CurrentStream)]:
        logger.removeHandler(handler)
    progress, problems = _CurrentStream(stream), _CurrentStream("stderr")
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler.setFormatter(_Format("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
