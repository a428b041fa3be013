"""live: the live view's frames at several console sizes, its escaping, its frame rate and its memory."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator

import helpers
import pytest
from rich.console import Console

from pooledfetch.config import FetchConfig
from pooledfetch.engine import RunProgress
from pooledfetch.live import FRAMES_PER_SECOND, MAX_ROWS, LiveView, shorten_middle
from pooledfetch.results import Result
from pooledfetch.sink import NullView
from pooledfetch.stats import RunStats

ROW = re.compile(r"^\s*(\d+) (?:200|404|timeout)\b")
HOSTILE = "\x1b[31mred\x1b]0;x\x07[blink]x[/blink]"


def make_result(index: int, **changes: object) -> Result:
    url = f"https://host{index % 3}.example.com/path/{index}"
    values: dict[str, object] = {
        "index": index,
        "url": url,
        "final_url": url,
        "ttfb_ms": 5.0 + index,
        "total_ms": 10.0 + index,
        "bytes": 2048,
        "conn_reused": index % 2 == 1,
        "connect_ms": 1.5,
        "pool_wait_ms": 0.25,
    }
    return helpers.make_result(**{**values, **changes})


def failed_result(index: int, error: str = "timeout") -> Result:
    return make_result(
        index, status=None, reason="", ok=False, error=error, error_detail="timed out", bytes=0, conn_reused=None
    )


def mixed_results(count: int) -> list[Result]:
    """Every tenth result from 7 on failed, from 8 on a 404 after two retries; the rest 200."""
    kinds = {7: failed_result, 8: lambda index: make_result(index, status=404, ok=False, retries=2)}
    return [kinds.get(index % 10, make_result)(index) for index in range(count)]


def recording_console(width: int = 80, height: int = 30, terminal: bool = True) -> Console:
    if terminal:
        return Console(
            file=io.StringIO(), force_terminal=True, width=width, height=height, record=True, color_system="truecolor"
        )
    return Console(file=io.StringIO(), force_terminal=False, width=width, height=height, record=True, no_color=True)


def raw_output(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def row_indexes(lines: list[str]) -> list[int]:
    """The `#` of every result row among the lines of a frame."""
    return [int(match[1]) for line in lines if (match := ROW.match(line))]


class Run:
    """A view and the figures it reads. Its own console is never looked at: tests print frames by hand."""

    def __init__(
        self, total: int | None = None, console: Console | None = None, config: FetchConfig | None = None
    ) -> None:
        self.stats = RunStats()
        self.progress = RunProgress()
        self.progress.in_flight = 7
        self.progress.accounting.connections_opened = 3
        self.progress.accounting.requests_sent = 42
        config = config or FetchConfig(workers=8)
        self.view = LiveView(console or recording_console(), self.stats, self.progress, config, total)

    def feed(self, results: list[Result]) -> None:
        for result in results:
            self.stats.write(result)
            self.view.write(result)

    def frame_text(self, width: int, height: int = 30) -> str:
        console = recording_console(width, height)
        console.print(self.view.frame())
        return console.export_text()


@pytest.fixture
def make_run() -> Iterator[Callable[..., Run]]:
    """Makes `Run`s whose views are closed when the test ends, passed or not."""
    runs: list[Run] = []

    def make(total: int | None = None, config: FetchConfig | None = None) -> Run:
        runs.append(Run(total, config=config))
        return runs[-1]

    yield make
    for run in runs:
        run.view.close()


@pytest.mark.parametrize("width", [40, 80, 160])
def test_frame_shows_the_latest_rows_and_fits_the_width(make_run: Callable[..., Run], width: int) -> None:
    run = make_run(total=100)
    run.feed(mixed_results(50))
    text = run.frame_text(width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    assert len(lines) <= 30 - 1
    assert "https://host" in text
    assert row_indexes(lines) == list(range(50 - MAX_ROWS, 50))


@pytest.mark.parametrize("width", [40, 80, 160])
def test_frame_shows_the_running_figures(make_run: Callable[..., Run], width: int) -> None:
    run = make_run(total=100)
    run.feed(mixed_results(50))
    text = " ".join(run.frame_text(width).split())
    assert "40 ok" in text
    assert "5 HTTP errors" in text
    assert "5 failed" in text
    assert "7 in flight / 8 workers" in text
    assert "3 connections / 42 requests" in text
    assert f"p50 {run.stats.total_time.percentile(50):,.0f} ms" in text
    assert f"p95 {run.stats.total_time.percentile(95):,.0f} ms" in text
    assert "URLs/s" in text
    assert "50/100" in text


def test_frame_shows_the_limits_in_force_and_the_time_waited_on_them(make_run: Callable[..., Run]) -> None:
    unlimited = make_run(total=10)
    unlimited.feed(mixed_results(5))
    assert "waited" not in unlimited.frame_text(160)
    run = make_run(total=10, config=FetchConfig(workers=8, rate=20, per_host_concurrency=2))
    run.progress.accounting.waited_for_limits(1.25)
    run.feed(mixed_results(5))
    text = " ".join(run.frame_text(160).split())
    assert "--rate 20/s --per-host-concurrency 2: 1.2 s waited" in text


def test_narrow_consoles_drop_columns_in_order(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed(mixed_results(20))
    headers = {width: run.frame_text(width).splitlines()[0].split() for width in (160, 56, 52, 44, 40)}
    assert headers[160] == ["#", "status", "time", "size", "retries", "conn", "URL"]
    assert headers[56] == ["#", "status", "time", "size", "conn", "URL"]
    assert headers[52] == ["#", "status", "time", "size", "URL"]
    assert headers[44] == ["#", "status", "time", "URL"]
    assert headers[40] == ["#", "status", "URL"]


@pytest.mark.parametrize("width", [40, 80, 160])
def test_a_long_url_never_wraps_a_row(make_run: Callable[..., Run], width: int) -> None:
    run = make_run()
    run.feed([make_result(index, url="https://example.com/" + "segment/" * 300 + "end.html") for index in range(5)])
    rows = [line for line in run.frame_text(width).splitlines() if "https://" in line]
    assert row_indexes(rows) == [0, 1, 2, 3, 4]
    assert all(row.rstrip().endswith("end.html") and "…" in row for row in rows)
    assert all(len(row) <= width for row in rows)


def test_cells_show_status_or_error_time_size_retries_and_connection(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed(
        [
            make_result(1, total_ms=1234.4, bytes=1_500_000, retries=3, conn_reused=False),
            make_result(2, conn_reused=True),
            failed_result(3, "dns"),
            make_result(4, status=200, error="body_too_large", ok=False),
        ]
    )
    lines = {line.split()[0]: line.split() for line in run.frame_text(160).splitlines()[1:5]}
    assert lines["1"][:7] == ["1", "200", "1,234", "ms", "1.5", "MB", "3"]
    assert lines["1"][7] == "new"
    assert "reused" in lines["2"]
    assert lines["3"][1] == "dns"
    assert "ms" in lines["3"] and "MB" not in lines["3"] and "KB" not in lines["3"]
    assert lines["4"][1] == "body_too_large"


def test_status_colours_follow_the_class(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed(
        [
            make_result(1, status=204),
            make_result(2, status=301),
            make_result(3, status=418, ok=False),
            make_result(4, status=503, ok=False),
            failed_result(5, "connect"),
        ]
    )
    console = recording_console(120)
    console.print(run.view.frame())
    raw = raw_output(console)
    # rich writes the standard colours as SGR 30-37: green 32, cyan 36, yellow 33, red 31.
    for code, text in (("32", "204"), ("36", "301"), ("33", "418"), ("31", "503"), ("31", "connect")):
        assert f"\x1b[{code}m{text}" in raw, text


def test_without_a_total_a_counter_and_no_eta(make_run: Callable[..., Run]) -> None:
    run = make_run(total=None)
    run.feed(mixed_results(12))
    progress_line = run.frame_text(80).splitlines()[-1]
    assert "12 done" in progress_line
    assert "elapsed" in progress_line
    assert "ETA" not in progress_line and "%" not in progress_line


def test_a_total_set_later_brings_the_bar_and_eta(make_run: Callable[..., Run]) -> None:
    run = make_run(total=None)
    run.feed(mixed_results(25))
    run.view.set_total(100)
    progress_line = run.frame_text(100).splitlines()[-1]
    assert "━" in progress_line
    assert "25/100 · 25% · ETA " in progress_line
    assert "elapsed" in progress_line


def test_a_short_console_shows_fewer_rows_but_keeps_the_figures(make_run: Callable[..., Run]) -> None:
    run = make_run(total=100)
    run.feed(mixed_results(50))
    lines = run.frame_text(80, height=10).splitlines()
    figures = [line for line in lines if "in flight" in line or "connections" in line]
    assert len(lines) == 9  # one line left for the cursor
    assert "50/100" in lines[-1]
    assert figures
    assert row_indexes(lines) == list(range(50 - (9 - 2 - len(figures)), 50))


@pytest.mark.parametrize(("width", "height"), [(20, 5), (30, 8), (12, 4)])
def test_a_console_too_short_for_the_figures_keeps_the_progress_line(
    make_run: Callable[..., Run], width: int, height: int
) -> None:
    """On a 20 × 5 terminal the frame was 9 lines: cropped, it lost its progress line, and its
    top lines were left above the summary when it was cleared."""
    run = make_run(total=100)
    run.feed(mixed_results(50))
    lines = run.frame_text(width, height=height).splitlines()
    assert len(lines) <= height - 1  # one line left for the cursor
    assert "50/100" in lines[-1]


def test_untrusted_text_is_inert_on_a_plain_console(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed([make_result(1, url="https://x.test/" + HOSTILE, reason=HOSTILE, error_detail=HOSTILE)])
    run.feed([failed_result(2, error=HOSTILE)])
    console = recording_console(200, terminal=False)
    console.print(run.view.frame())
    raw = raw_output(console)
    assert "\x1b" not in raw and "\x07" not in raw
    assert "[blink]x[/blink]" in raw
    assert "\\x1b[31mred\\x1b]0;x\\x07" in raw


def test_untrusted_text_is_inert_on_a_terminal() -> None:
    console = recording_console(200)
    run = Run(console=console)
    run.feed([make_result(1, url="https://x.test/" + HOSTILE, reason=HOSTILE, error_detail=HOSTILE)])
    run.feed([failed_result(2, error=HOSTILE)])
    run.view.close()
    raw = raw_output(console)
    assert "\x1b]0;" not in raw and "\x07" not in raw
    assert "\x1b[31mred" not in raw
    assert "[blink]x[/blink]" in console.export_text()


def test_frames_are_snapshots_so_the_refresh_thread_never_sees_later_writes(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed([make_result(1)])
    frame = run.view.frame()
    run.feed([make_result(2)])
    console = recording_console()
    console.print(frame)
    text = console.export_text()
    assert "/path/1" in text and "/path/2" not in text
    assert frame.snapshot.rows == (make_result(1),)


def test_a_burst_of_results_is_drawn_at_most_a_few_times_a_second(make_run: Callable[..., Run]) -> None:
    run = make_run(total=1000)
    start = time.monotonic()
    before = run.view.renders
    run.feed(mixed_results(1000))
    elapsed = time.monotonic() - start
    assert run.view.renders - before <= elapsed * FRAMES_PER_SECOND + 1


def test_results_that_came_between_frames_show_once_the_run_waits(make_run: Callable[..., Run]) -> None:
    """The last results before a slow URL (and the count in flight) showed only when the next
    result came: seconds of `0 done` while five were done."""
    run = make_run()
    run.feed([make_result(0), make_result(1)])  # within a frame's time of the view's first frame
    assert [row.index for row in run.view.shown.snapshot.rows] == []
    run.view.flush()  # what the run calls while no result comes
    assert [row.index for row in run.view.shown.snapshot.rows] == [0, 1]


def test_a_steady_stream_is_redrawn_about_eight_times_a_second(make_run: Callable[..., Run]) -> None:
    run = make_run()
    before = run.view.renders
    start = time.monotonic()
    index = 0
    while time.monotonic() - start < 0.6:
        run.feed([make_result(index)])
        index += 1
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    frames = run.view.renders - before
    assert 2 <= frames <= elapsed * FRAMES_PER_SECOND + 1


def test_memory_is_bounded_whatever_the_number_of_results(make_run: Callable[..., Run]) -> None:
    run = make_run()
    run.feed(mixed_results(5000))
    assert run.view._recent.maxlen == MAX_ROWS
    assert len(run.view._recent) == MAX_ROWS
    assert len(run.view.frame().snapshot.rows) == MAX_ROWS


def test_the_live_display_draws_then_clears_and_close_is_idempotent() -> None:
    console = recording_console(100)
    with LiveView(console, RunStats(), RunProgress(), FetchConfig(workers=4), total=3) as view:
        view.write(make_result(1, url="https://shown.example/"))
        renders = view.renders
    assert "https://shown.example/" in console.export_text()
    view.close()
    view.write(make_result(2))
    assert view.renders == renders + 1  # the final frame in close(), nothing after
    # Transient: after showing the cursor again, rich erases the display line by line, upwards.
    after_cursor_shown = raw_output(console).rpartition("\x1b[?25h")[2]
    assert re.fullmatch(r"\r(\x1b\[1A\x1b\[2K)+", after_cursor_shown)


def test_null_view_shows_nothing() -> None:
    view = NullView()
    with view:
        view.set_total(10)
        view.write(make_result(1))
    view.close()


def test_shorten_middle_keeps_both_ends_within_the_width() -> None:
    url = "https://example.com/a/very/long/path/to/file.html"
    assert shorten_middle(url, 100) == url
    short = shorten_middle(url, 21)
    assert short == "https://ex…/file.html"
    assert len(short) == 21
    assert shorten_middle(url, 1) == "…"
    assert shorten_middle(url, 0) == ""


def test_shorten_middle_counts_wide_characters_as_two_cells() -> None:
    from rich.cells import cell_len

    url = "https://例え.jp/" + "日本語" * 10
    for width in range(2, 30):
        assert cell_len(shorten_middle(url, width)) <= width
    assert shorten_middle(url, 10).startswith("https")
