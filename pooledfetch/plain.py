"""One tab-separated line per result on stdout, for grep, sort and awk."""

from __future__ import annotations

from typing import IO

from pooledfetch.results import Result
from pooledfetch.sink import Sink
from pooledfetch.text import printable

_COLOURS = {2: "32", 3: "36", 4: "33", 5: "31"}


class PlainLines(Sink):
    """`status-or-error <TAB> total ms <TAB> bytes <TAB> url`; coloured only on a terminal."""

    def __init__(self, stream: IO[str], colour: bool) -> None:
        self._stream = stream
        self._colour = colour
        self.broken = False

    def write(self, result: Result) -> None:
        if self.broken:
            return
        outcome = result.error or str(result.status)
        if self._colour:
            code = "31" if result.error else _COLOURS.get((result.status or 0) // 100, "0")
            outcome = f"\x1b[{code}m{outcome}\x1b[0m"
        line = f"{outcome}\t{result.total_ms:.0f}\t{result.bytes}\t{printable(result.url)}\n"
        try:
            self._stream.write(line)
            self._stream.flush()
        except BrokenPipeError:
            # `pooledfetch urls | head`: the reader is gone; stop printing, keep the run's exports.
            self.broken = True
