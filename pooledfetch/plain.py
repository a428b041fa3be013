"""One tab-separated line per result on stdout, for grep, sort and awk."""

from __future__ import annotations

from typing import IO

from pooledfetch.results import Result
from pooledfetch.sink import FlushPace, Sink
from pooledfetch.text import printable

_COLOURS = {2: "32", 3: "36", 4: "33", 5: "31"}


class PlainLines(Sink):
    """`status-or-error <TAB> total ms <TAB> bytes <TAB> url`; coloured only on a terminal."""

    keeps_rows = True

    def __init__(self, stream: IO[str], colour: bool) -> None:
        self._stream = stream
        self._colour = colour
        self.broken = False
        self._pace = FlushPace()

    def write(self, result: Result) -> None:
        if self.broken:
            return
        outcome = result.error or str(result.status)
        if self._colour:
            code = "31" if result.error else _COLOURS.get((result.status or 0) // 100, "0")
            outcome = f"\x1b[{code}m{outcome}\x1b[0m"
        self._output(f"{outcome}\t{result.total_ms:.0f}\t{result.bytes}\t{printable(result.url)}\n", self._pace.due())

    def flush(self) -> None:
        if not self.broken:
            self._output("", flush=True)

    def close(self) -> None:
        self.flush()

    def _output(self, text: str, flush: bool) -> None:
        try:
            self._stream.write(text)
            if flush:
                self._stream.flush()
        except BrokenPipeError:
            # `pooledfetch urls | head`: the reader is gone; stop printing, keep the run's exports.
            self.broken = True
