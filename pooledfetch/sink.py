"""The shape every consumer of results has: opened on creation, written one row at a time on
one thread, closed on every exit path (use it as a context manager)."""

from __future__ import annotations

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
    def write(self, result: Result) -> None:
        raise NotImplementedError


class NullView(Sink):
    """The live view's twin for pipes, --no-live and --quiet: takes everything, shows nothing.

    It lives here, not in live.py, so a run without a terminal never imports rich.
    """

    def set_total(self, total: int) -> None:
        """Nothing to show it on."""

    def write(self, result: Result) -> None:
        """Nothing to show it on."""
