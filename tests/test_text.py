"""Terminal-facing text: printable(), the PlainLines sink and the RunStats summary line."""

from __future__ import annotations

import io
import unicodedata
from collections import Counter

import helpers
import pytest

from pooledfetch.plain import PlainLines
from pooledfetch.results import Result
from pooledfetch.stats import RunStats
from pooledfetch.text import printable


def make_result(**changes: object) -> Result:
    return helpers.make_result(**{"started_at": "2024-01-01T00:00:00.000+00:00", **changes})


def failed(error: str = "dns", **changes) -> Result:
    base = {"status": None, "reason": "", "ok": False, "error": error, "error_detail": "x", "bytes": 0}
    base.update(changes)
    return make_result(**base)


# --- printable ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("csi\x9b2J", "csi\\x9b2J"),  # one-byte C1 CSI
        ("c1\x80\x9f", "c1\\x80\\x9f"),
        ("ünïcødé ✓ 日本", "ünïcødé ✓ 日本"),  # printable non-ASCII untouched
        ("\xa0nbsp", "\xa0nbsp"),  # first char after C1 is not a control
        ("invoice\u202etxt.exe", "invoice\\u202etxt.exe"),  # a bidi override would show "exe.txt"
        ("pay\u200bpal.example", "pay\\u200bpal.example"),  # zero-width space
        ("line\u2028break", "line\\u2028break"),
        ("lone\udcff", "lone\\udcff"),  # a surrogate (surrogateescape) a terminal cannot encode
        ("tag\U000e0041", "tag\\U000e0041"),
        ("emoji \U0001f600", "emoji \U0001f600"),
    ],
)
def test_printable(text, expected):
    assert printable(text) == expected


def test_printable_output_has_no_control_characters():
    everything = "".join(chr(code) for code in range(0x100))
    out = printable(everything)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in out)
    assert out.count("\\x") == 0x20 + 0x21 + 1  # C0 (32) + DEL and C1 (33) + the soft hyphen


def test_printable_leaves_no_hidden_character_of_any_plane():
    """Every control, format (bidi, zero-width), separator and surrogate code point is escaped."""
    hidden = [
        chr(code) for code in range(0x110000) if unicodedata.category(chr(code)) in ("Cc", "Cf", "Zl", "Zp", "Cs")
    ]
    out = printable("".join(hidden))
    assert out.isascii() and out.count("\\") == len(hidden)


# --- PlainLines ---------------------------------------------------------------------------------


def test_plain_line_without_colour():
    stream = io.StringIO()
    sink = PlainLines(stream, colour=False)
    sink.write(make_result(status=200, total_ms=12.6, bytes=512, url="https://example.com/a"))
    sink.write(failed("timeout", total_ms=30000.0, url="https://slow.example/"))
    sink.write(make_result(status=404, ok=False, total_ms=0.4, bytes=9, url="https://example.com/missing"))
    assert stream.getvalue().splitlines() == [
        "200\t13\t512\thttps://example.com/a",
        "timeout\t30000\t0\thttps://slow.example/",
        "404\t0\t9\thttps://example.com/missing",
    ]
    assert "\x1b" not in stream.getvalue()


def test_plain_line_escapes_control_characters_in_url():
    stream = io.StringIO()
    PlainLines(stream, colour=False).write(failed("invalid_url", url="http://x/\x1b[2J\nfake\tline"))
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "\x1b" not in line
    assert line == "invalid_url\t12\t0\thttp://x/\\x1b[2J\\x0afake\\x09line\n"


@pytest.mark.parametrize(
    ("status", "code"),
    [(200, "32"), (204, "32"), (301, "36"), (404, "33"), (429, "33"), (500, "31"), (503, "31"), (101, "0")],
)
def test_plain_line_colour_by_status_class(status, code):
    stream = io.StringIO()
    PlainLines(stream, colour=True).write(make_result(status=status, ok=status < 400))
    assert stream.getvalue().startswith(f"\x1b[{code}m{status}\x1b[0m\t")


def test_plain_line_colour_for_errors_is_red():
    stream = io.StringIO()
    PlainLines(stream, colour=True).write(failed("connect"))
    assert stream.getvalue().startswith("\x1b[31mconnect\x1b[0m\t")
    # only the outcome column is coloured
    assert stream.getvalue().count("\x1b[") == 2


class FlushCounter(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_plain_lines_flush_when_due_and_when_told(monkeypatch):
    stream = FlushCounter()
    lines = PlainLines(stream, colour=False)
    monkeypatch.setattr("pooledfetch.sink.FLUSH_SECONDS", 3600)
    lines.write(make_result())
    lines.write(make_result())
    assert stream.flushes == 0
    lines.flush()
    assert stream.flushes == 1
    monkeypatch.setattr("pooledfetch.sink.FLUSH_SECONDS", 0)
    lines.write(make_result())
    assert stream.flushes == 2
    lines.close()
    assert stream.flushes == 3
    assert stream.getvalue().count("\n") == 3


class BrokenPipeStream(io.StringIO):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.writes = 0
        self.fail_after = fail_after

    def write(self, text):
        self.writes += 1
        if self.writes > self.fail_after:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_broken_pipe_stops_printing_quietly():
    stream = BrokenPipeStream(fail_after=1)
    sink = PlainLines(stream, colour=False)
    sink.write(make_result(url="https://example.com/1"))
    assert not sink.broken
    sink.write(make_result(url="https://example.com/2"))  # raises inside, swallowed
    assert sink.broken
    sink.write(make_result(url="https://example.com/3"))  # not even attempted
    assert stream.writes == 2
    assert stream.getvalue() == "200\t12\t512\thttps://example.com/1\n"
    sink.close()


def test_broken_pipe_on_flush_is_handled_too():
    class FlushBreaks(io.StringIO):
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    lines = PlainLines(FlushBreaks(), colour=False)
    lines.write(make_result())
    lines.flush()
    assert lines.broken


def test_other_os_errors_are_not_swallowed():
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        PlainLines(Full(), colour=False).write(make_result())


# --- RunStats -----------------------------------------------------------------------------------


def test_run_stats_counts():
    stats = RunStats()
    stats.write(make_result(bytes=100))
    stats.write(make_result(status=404, ok=False, bytes=20))
    stats.write(failed("dns"))
    stats.write(failed("timeout"))
    stats.write(failed("dns"))
    assert (stats.total, stats.ok, stats.http_errors, stats.failed) == (5, 1, 1, 3)
    assert stats.bytes_received == 120
    assert stats.errors == Counter({"dns": 2, "timeout": 1})


def test_rows_cut_short_or_never_sent_stay_out_of_latency_and_host_figures():
    """After Ctrl-C, rows given up after the grace period (0 ms) pulled the p50 to 0.01 ms, and
    cancelled rows, never sent, counted as requests and errors of their host."""
    stats = RunStats()
    stats.write(make_result(total_ms=40.0, final_url="http://a.test/1"))
    stats.write(failed("interrupted", total_ms=0.0, final_url="http://a.test/2"))
    stats.write(failed("cancelled", total_ms=0.0, final_url="http://a.test/3"))
    stats.write(failed("timeout", total_ms=1000.0, final_url="http://a.test/4"))
    assert stats.total == 4
    assert stats.total_time.count == 2
    assert 39.0 < stats.total_time.percentile(50) <= 41.0
    host = stats.hosts["a.test"]
    assert (host.requests, host.failures) == (3, 2)


def test_summary_line_exact():
    stats = RunStats(started=100.0)
    stats.write(make_result(bytes=1000))
    stats.write(make_result(bytes=500))
    stats.write(make_result(status=500, ok=False, bytes=0))
    stats.write(failed("dns"))
    stats.write(failed("dns"))
    stats.write(failed("timeout"))
    stats.finished = 102.0
    assert stats.summary_line() == (
        "6 URLs: 2 ok, 1 HTTP errors, 3 failed (dns 2, timeout 1) in 2.00 s (3.0 URLs/s, 1.5 KB)"
    )


def test_summary_line_without_failures_has_no_parenthesis():
    stats = RunStats(started=0.0)
    stats.write(make_result(bytes=999))
    stats.finished = 0.5
    assert stats.summary_line() == "1 URLs: 1 ok, 0 HTTP errors, 0 failed in 0.50 s (2.0 URLs/s, 999 B)"


def test_summary_line_empty_run_with_zero_duration():
    stats = RunStats(started=5.0)
    stats.finished = 5.0
    assert stats.rate == 0.0
    assert stats.summary_line() == "0 URLs: 0 ok, 0 HTTP errors, 0 failed in 0.00 s (0.0 URLs/s, 0 B)"


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1000, "1.0 KB"), (2_500_000, "2.5 MB"), (3 * 10**9, "3.0 GB"), (5 * 10**12, "5000.0 GB")],
)
def test_summary_line_bytes_units(count, text):
    stats = RunStats(started=0.0, finished=1.0, bytes_received=count)
    assert stats.summary_line().endswith(f", {text})")


def test_summary_line_rate_uses_thousands_separator():
    stats = RunStats(started=0.0, finished=1.0, total=12345, ok=12345)
    assert "(12,345.0 URLs/s" in stats.summary_line()


def test_close_freezes_duration():
    stats = RunStats()
    stats.close()
    first = stats.finished
    assert first is not None
    stats.close()  # idempotent: does not move the end time
    assert stats.finished == first
    assert stats.duration == first - stats.started
