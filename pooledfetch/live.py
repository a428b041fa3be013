"""The live terminal view: the latest results, progress and running figures, redrawn a few times a second.

Threading: sinks are fed on one thread, while rich's `Live` redraws from its own refresh thread.
So the consuming thread copies what a frame shows into an immutable `Snapshot` (rate-limited),
and the refresh thread only lays that snapshot out; it never reads the deque or the stats.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from pooledfetch.config import FetchConfig
from pooledfetch.engine import RunProgress
from pooledfetch.results import Result
from pooledfetch.sink import Sink
from pooledfetch.stats import RunStats, human_bytes
from pooledfetch.summary import STATUS_STYLES, limits_in_force
from pooledfetch.text import printable

MAX_ROWS = 20
# A frame costs ~7 ms of rich rendering (with the GIL held) at 120 × 40; 4 a second keeps the
# view at ~3% of a busy run's throughput.
FRAMES_PER_SECOND = 4
# Below this the URL is too short to recognise, so optional columns make room for it.
MIN_URL_WIDTH = 24
# Least telling first: a narrow console drops these, in this order, rather than wrap a row.
OPTIONAL_COLUMNS = ("retries", "conn", "size", "time")
_MIN_BAR_WIDTH = 10
# Lines a frame needs besides its results: the table header, the progress line, and the line
# the cursor sits on (a frame as tall as the console would scroll its first line away).
_FIXED_LINES = 3
_SEPARATOR = Text(" · ", style="dim")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame shows, copied on the consuming thread."""

    rows: tuple[Result, ...]
    done: int
    total: int | None
    rate: float
    in_flight: int
    workers: int
    ok: int
    http_errors: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None
    connections_opened: int
    requests_sent: int
    started: float
    limits: tuple[str, ...] = ()
    limit_wait_s: float = 0.0

    @classmethod
    def take(
        cls, rows: deque[Result], stats: RunStats, progress: RunProgress, config: FetchConfig, total: int | None
    ) -> Snapshot:
        measured = stats.total_time.count > 0
        return cls(
            rows=tuple(rows),
            done=stats.total,
            total=total,
            rate=stats.recent_rate,
            in_flight=progress.in_flight,
            workers=config.workers,
            ok=stats.ok,
            http_errors=stats.http_errors,
            failed=stats.failed,
            p50_ms=stats.total_time.percentile(50) if measured else None,
            p95_ms=stats.total_time.percentile(95) if measured else None,
            connections_opened=progress.accounting.connections_opened,
            requests_sent=progress.accounting.requests_sent,
            started=stats.started,
            limits=tuple(limits_in_force(config)),
            limit_wait_s=progress.accounting.limit_wait_seconds,
        )


class Frame:
    """A snapshot laid out at draw time, so a resized terminal gets rows that fit it."""

    def __init__(self, snapshot: Snapshot, spinner: Spinner) -> None:
        self.snapshot = snapshot
        self._spinner = spinner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        # On a console too short for them all, the figures that fit: a frame taller than the
        # console leaves its top lines behind when cleared, and the progress line goes first.
        figures = _pack(_figures(self.snapshot), width)[: max(0, options.max_height - 2)]
        room = options.max_height - len(figures) - _FIXED_LINES
        if room > 0 and self.snapshot.rows:
            yield from _results_lines(self.snapshot.rows[-room:], width)
        yield from figures
        yield _progress_line(self.snapshot, self._spinner, width)


class LiveView(Sink):
    """The most recent results and running figures, on a console that is a terminal."""

    def __init__(
        self, console: Console, stats: RunStats, progress: RunProgress, config: FetchConfig, total: int | None = None
    ) -> None:
        self._stats = stats
        self._progress = progress
        self._config = config
        self._total = total
        self._recent: deque[Result] = deque(maxlen=MAX_ROWS)
        self._spinner = Spinner("dots", style="cyan")
        self._last_frame = float("-inf")
        self.renders = 0
        # stdout carries the results (maybe into a file): only stderr-style chatter, such as the
        # interrupt notice, is routed above the display instead of tearing it.
        self._live: Live | None = Live(
            console=console, refresh_per_second=FRAMES_PER_SECOND, transient=True, redirect_stdout=False
        )
        self._live.start()
        self._show(self._live, refresh=True)

    def set_total(self, total: int) -> None:
        self._total = total

    def write(self, result: Result) -> None:
        self._recent.append(result)
        if self._live is not None and time.monotonic() - self._last_frame >= 1 / FRAMES_PER_SECOND:
            # Drawn by the refresh thread on its next tick, not here: feeding sinks stays cheap.
            self._show(self._live, refresh=False)

    def flush(self) -> None:
        """Called while no result comes: a fresh snapshot, or the last results, the count in
        flight and the total would wait for the next result (a slow URL's seconds) to show."""
        if self._live is not None:
            self._show(self._live, refresh=False)

    def close(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        try:
            self._show(live, refresh=False)
        finally:
            live.stop()  # draws the last frame, then clears it (transient) for the summary

    def frame(self) -> Frame:
        """The view as it stands, as a renderable that is safe to draw from any thread."""
        snapshot = Snapshot.take(self._recent, self._stats, self._progress, self._config, self._total)
        return Frame(snapshot, self._spinner)

    def _show(self, live: Live, *, refresh: bool) -> None:
        self.renders += 1
        self._last_frame = time.monotonic()
        self.shown = self.frame()  # what the display draws until the next one
        live.update(self.shown, refresh=refresh)


def _results_lines(rows: tuple[Result, ...], width: int) -> list[Text]:
    """A header and one line per result, the URL shortened in the middle so no row wraps at `width`.

    Laid out by hand, not as a rich Table: the column widths are known here anyway, and a
    Table renders each of its ~150 cells through rich's full layout. A whole frame at 120 × 40
    cost ~21 ms with a Table and ~7 ms with these lines, with the GIL held: time taken from
    the fetch threads.
    """
    cells = [_cells(result) for result in rows]
    widths = {name: max(cell_len(name), *(cell_len(row[name].plain) for row in cells)) for name in _HEADERS}
    columns = _fit_columns(widths, width)
    # Columns are one space apart.
    url_width = max(1, width - sum(widths[name] + 1 for name in columns))
    header = _line([Text(name) for name in columns], columns, widths, Text("URL"))
    header.stylize("bold")
    lines = [header]
    for row, result in zip(cells, rows, strict=True):
        url = Text(shorten_middle(printable(result.url), url_width))
        lines.append(_line([row[name] for name in columns], columns, widths, url))
    return lines


def _line(cells: list[Text], columns: list[str], widths: dict[str, int], url: Text) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    for cell, name in zip(cells, columns, strict=True):
        padded = cell.copy()
        room = widths[name] - cell.cell_len
        if _HEADERS[name] == "right":
            padded.pad_left(room)
        else:
            padded.pad_right(room)
        line.append_text(padded)
        line.append(" ")
    line.append_text(url)
    return line


# Every column but the URL, in display order, with its alignment.
_HEADERS: dict[str, JustifyMethod] = {
    "#": "right",
    "status": "left",
    "time": "right",
    "size": "right",
    "retries": "right",
    "conn": "left",
}


def _cells(result: Result) -> dict[str, Text]:
    responded = result.status is not None
    return {
        "#": Text(str(result.index), style="dim"),
        "status": _status(result),
        "time": Text(f"{result.total_ms:,.0f} ms" if result.total_ms > 0 else ""),
        "size": Text(human_bytes(result.bytes) if responded else ""),
        "retries": Text(str(result.retries) if result.retries else ""),
        "conn": Text({None: "", True: "reused", False: "new"}[result.conn_reused]),
    }


def _status(result: Result) -> Text:
    # An error wins over a status: a 200 whose body broke off is a failure, counted as one.
    if result.error or result.status is None:
        return Text(printable(result.error), style="red")
    return Text(str(result.status), style=STATUS_STYLES.get(result.status // 100, ""))


def _fit_columns(widths: dict[str, int], width: int) -> list[str]:
    columns = list(_HEADERS)
    for optional in OPTIONAL_COLUMNS:
        if sum(widths[name] + 1 for name in columns) + MIN_URL_WIDTH <= width:
            break
        columns.remove(optional)
    return columns


def shorten_middle(text: str, width: int) -> str:
    """`text` cut to `width` cells by replacing its middle with "…" (scheme, host and file stay)."""
    if cell_len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    keep = width - 1
    head = _leading_cells(text, keep - keep // 2)
    tail = _leading_cells(text[::-1], keep // 2)[::-1]
    return f"{head}…{tail}"


def _leading_cells(text: str, width: int) -> str:
    used = 0
    for position, character in enumerate(text):
        used += cell_len(character)
        if used > width:
            return text[:position]
    return text


def _figures(snapshot: Snapshot) -> list[Text]:
    limits = [Text(f"{' '.join(snapshot.limits)}: {snapshot.limit_wait_s:,.1f} s waited", style="magenta")]
    return [
        Text(f"{snapshot.rate:,.1f} URLs/s"),
        Text(f"{snapshot.in_flight} in flight / {snapshot.workers} workers"),
        Text(f"{snapshot.ok:,} ok", style="green"),
        Text(f"{snapshot.http_errors:,} HTTP errors", style="yellow" if snapshot.http_errors else ""),
        Text(f"{snapshot.failed:,} failed", style="red" if snapshot.failed else ""),
        Text(f"p50 {_ms(snapshot.p50_ms)}"),
        Text(f"p95 {_ms(snapshot.p95_ms)}"),
        Text(f"{snapshot.connections_opened:,} connections / {snapshot.requests_sent:,} requests"),
        *(limits if snapshot.limits else []),
    ]


def _pack(parts: list[Text], width: int) -> list[Text]:
    """Parts joined with separators into as few lines as fit `width`, never breaking a part."""
    lines: list[Text] = []
    for part in parts:
        if lines and lines[-1].cell_len + _SEPARATOR.cell_len + part.cell_len <= width:
            lines[-1].append_text(_SEPARATOR)
            lines[-1].append_text(part)
        else:
            lines.append(part.copy())
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return lines


def _progress_line(snapshot: Snapshot, spinner: Spinner, width: int) -> Table:
    # Only a bar stretches: without a total the counter sits next to the spinner.
    line = Table.grid(padding=(0, 1), expand=snapshot.total is not None)
    line.add_column(no_wrap=True)
    if snapshot.total is None:
        line.add_column(no_wrap=True, overflow="ellipsis")
        line.add_row(spinner, _counter(snapshot, width - 2))
        return line
    counter = _counter(snapshot, width - 3 - _MIN_BAR_WIDTH)
    line.add_column(ratio=1)
    line.add_column(no_wrap=True, overflow="ellipsis", justify="right")
    line.add_row(spinner, ProgressBar(total=snapshot.total, completed=min(snapshot.done, snapshot.total)), counter)
    return line


def _counter(snapshot: Snapshot, width: int) -> Text:
    """Done (of total), then as many of percentage, ETA and elapsed time as fit."""
    # Read at draw time, so the clock keeps moving while no result arrives.
    elapsed = f"{_clock(time.monotonic() - snapshot.started)} elapsed"
    if snapshot.total is None:
        parts = [f"{snapshot.done:,} done", elapsed]
    else:
        parts = [f"{snapshot.done:,}/{snapshot.total:,}", _percent(snapshot), _eta(snapshot), elapsed]
    while len(parts) > 1 and cell_len(" · ".join(parts)) > width:
        parts.pop()
    return Text(" · ".join(parts))


def _percent(snapshot: Snapshot) -> str:
    assert snapshot.total is not None
    share = min(1.0, snapshot.done / snapshot.total) if snapshot.total else 1.0
    return f"{share:.0%}"


def _eta(snapshot: Snapshot) -> str:
    assert snapshot.total is not None
    remaining = snapshot.total - snapshot.done
    if remaining <= 0:
        return "ETA 0:00"
    if snapshot.rate <= 0:
        return "ETA -:--"
    return f"ETA {_clock(remaining / snapshot.rate)}"


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"
