"""The input as the consuming thread takes it: a target at a time, and for an input that can
keep the reader waiting (a pipe, a terminal), without waiting for it.

The consuming thread both hands targets to the workers and writes finished rows to the sinks.
Reading a pipe on that thread held back every finished row until the next line came: with
`tail -f log | pooledfetch -`, a row waited for the next URL, however long that took.
`ReadAhead` reads such an input on a thread of its own, so the consuming thread takes a target
only when one has arrived and is woken when one does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from pooledfetch.sources import Target

# Targets a ReadAhead reads ahead of the consuming thread; it reads on once half are taken, so
# a fast pipe does not wake the reading thread for every target.
READ_AHEAD = 1024
# What a cancelled run still reads of a pipe whose writer goes on (a SIGTERM to pooledfetch
# alone; in a shell, Ctrl-C ends the writer too): lines until it has been quiet this long...
REST_QUIET_SECONDS = 1.0
# ... and for this long at most, so a writer that never stops cannot keep the run going.
REST_MAX_SECONDS = 5.0


class Feed:
    """Targets taken one at a time from an input that is read when asked (a file, a list).

    `take()` gives the next target, or None when none is ready now; `exhausted` is True once
    the input has ended and every target has been taken.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        self._targets = iter(targets)
        self._ended = False

    @property
    def exhausted(self) -> bool:
        return self._ended

    def take(self) -> Target | None:
        target = next(self._targets, None)
        if target is None:
            self._ended = True
        return target

    def rest(self) -> Iterator[Target]:
        """Every target not taken yet, waiting for the input to end."""
        while (target := self.take()) is not None:
            yield target

    def __iter__(self) -> Iterator[Target]:
        return self.rest()

    def on_arrival(self, wake: Callable[[], None]) -> None:
        """Have `wake` called when a target arrives after `take()` found none (never, here)."""

    def close(self) -> None:
        """Stop reading ahead (nothing to stop here)."""


class _End:
    """What the reading thread leaves after the last target: how the input ended."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ReadAhead(Feed):
    """A Feed whose input is read on a thread of its own, up to READ_AHEAD targets ahead.

    An error reading the input (a file that cannot be opened, a bad row header) is raised by
    the `take()` that reaches it, on the consuming thread, as reading on that thread would.

    `rest()` (what a cancelled run gives rows to) reads on to the end of the input: a pipe ends
    when its writer does, and Ctrl-C in a shell ends the whole pipeline. A writer that goes on
    is read until REST_QUIET_SECONDS pass without a line, or REST_MAX_SECONDS in all: what it
    writes after that is never read. A terminal ends only when the user types Ctrl-D; with
    `until_end=False`, `rest()` gives what has been read so far (a terminal discards
    typed-ahead input on Ctrl-C anyway).
    """

    def __init__(self, targets: Iterable[Target], depth: int = READ_AHEAD, *, until_end: bool = True) -> None:
        super().__init__(())
        self._depth = depth
        self._until_end = until_end
        # Appends and pops of a deque are atomic: the lock is taken only to wait for room.
        self._buffer: deque[Target | _End] = deque()
        self._room = threading.Condition()
        self._arrived = threading.Event()
        self._wake: Callable[[], None] | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._read, args=(targets,), name="pooledfetch-input", daemon=True)
        self._thread.start()

    def take(self) -> Target | None:
        if self.exhausted:
            return None
        try:
            item = self._buffer.popleft()
        except IndexError:
            return None
        if len(self._buffer) == self._depth // 2:
            with self._room:
                self._room.notify()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            return None
        return item

    def rest(self) -> Iterator[Target]:
        if not self._until_end:
            self.close()
            yield from super().rest()
            return
        deadline = time.monotonic() + REST_MAX_SECONDS
        while not self.exhausted:
            # Cleared before looking: an arrival after an empty look sets it again.
            self._arrived.clear()
            target = self.take()
            if target is not None:
                yield target
                continue
            wait = min(REST_QUIET_SECONDS, deadline - time.monotonic())
            if not self.exhausted and (wait <= 0 or not self._arrived.wait(wait)):
                self.close()
                return

    def on_arrival(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        """Let the reading thread end once its current read returns (a read itself cannot be cut short)."""
        with self._room:
            self._stopped = True
            self._room.notify()

    def _read(self, targets: Iterable[Target]) -> None:
        try:
            for target in targets:
                if len(self._buffer) >= self._depth:
                    with self._room:
                        while len(self._buffer) >= self._depth // 2 + 1 and not self._stopped:
                            self._room.wait()
                if self._stopped:
                    return
                self._put(target)
        except BaseException as exc:  # noqa: BLE001 - raised again on the consuming thread
            self._put(_End(exc))
        else:
            self._put(_End(None))

    def _put(self, item: Target | _End) -> None:
        self._buffer.append(item)
        # One left after the append: the buffer was empty, and the taker may be waiting for it.
        if len(self._buffer) == 1:
            self._arrived.set()
            if self._wake is not None:
                self._wake()
