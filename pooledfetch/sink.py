"""The shape every consumer of results has: opened on creation, written one row at a time on
one thread, flushed when the run waits, closed on every exit path (use it as a context manager)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from pooledfetch.results import Result


class Closing:
    """Something that holds a resource until `close`, closed on every exit path as a context manager."""

    def close(self) -> None:
        """Release what it holds; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Sink(Closing):
    # Whether the rows written here are kept where the user reads them (a file, the plain lines
    # on stdout): once every such sink has failed, a run has nowhere left to put its rows.
    keeps_rows = False

    def write(self, result: Result) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Push out what `write` left buffered: the run calls it when no result has come for a while."""


# A flush per row is a write system call per row, and each one hands the GIL to a fetch thread:
# about 7% of the CPU of a fast run. Rows still reach their file this soon while they flow, and
# Sink.flush pushes out the last of them once the run waits.
FLUSH_SECONDS = 0.1


class FlushPace:
    """Tells a buffering sink when a write should also flush: at most every FLUSH_SECONDS."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < FLUSH_SECONDS:
            return False
        self._last = now
        return True


class NullView(Sink):
    """The live view's twin for pipes, --no-live and --quiet: takes everything, shows nothing.

    It lives here, not in live.py, so a run without a terminal never imports rich.
    """

    def set_total(self, total: int) -> None:
        """Nothing to show it on."""

    def write(self, result: Result) -> None:
        """Nothing to show it on."""
