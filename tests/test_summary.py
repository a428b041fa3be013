"""summary: the end-of-run report on a terminal, its plain-data twin and the JSON file."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import helpers
import pytest
from rich.console import Console

from pooledfetch.config import FetchConfig
from pooledfetch.errors import ExportError
from pooledfetch.pools import PoolAccounting
from pooledfetch.results import Result
from pooledfetch.stats import HostStats, RunStats
from pooledfetch.summary import (
    pool_advice,
    print_summary,
    render_summary,
    reuse_ratio,
    summary_data,
    write_summary_json,
)

HOSTILE_HOST = "evil\x1b]0;x\x07[blink]x[/blink].test"


def make_result(index: int, host: str = "a.example", **changes: object) -> Result:
    values: dict[str, object] = {
        "index": index,
        "url": f"https://{host}/{index}",
        "final_url": f"https://{host}/{index}",
        "ttfb_ms": float(index + 1) / 2,
        "total_ms": float(index + 1),
        "bytes": 1000,
        "content_type": "text/plain",
        "conn_reused": index > 0,
        "connect_ms": 1.0,
        "pool_wait_ms": 2.0,
    }
    return helpers.make_result(**{**values, **changes})


def make_stats() -> RunStats:
    """100 URLs, 1..100 ms: 90 ok on three hosts (50/30/10), 5 x 404, 3 timeouts, 2 dns failures."""
    stats = RunStats()
    for index in range(100):
        host = "a.example" if index < 50 else "b.example" if index < 80 else "c.example"
        if index >= 95:
            error = "timeout" if index < 98 else "dns"
            result = make_result(index, "d.example", status=None, ok=False, error=error, bytes=0, conn_reused=None)
        elif index >= 90:
            result = make_result(index, "d.example", status=404, ok=False, retries=1)
        else:
            result = make_result(index, host)
        stats.write(result)
    stats.close()
    return stats


def make_accounting(opened: int = 4, sent: int = 95, discarded: int = 0) -> PoolAccounting:
    accounting = PoolAccounting()
    accounting.connections_opened = opened
    accounting.requests_sent = sent
    accounting.connections_discarded = discarded
    return accounting


def render(
    stats: RunStats,
    accounting: PoolAccounting,
    config: FetchConfig | None = None,
    width: int = 100,
    terminal: bool = True,
) -> tuple[str, str]:
    """(plain text, raw output) of the summary printed on a recording console."""
    console = Console(
        file=io.StringIO(),
        force_terminal=terminal,
        no_color=not terminal,
        width=width,
        record=True,
        color_system="truecolor" if terminal else None,
    )
    print_summary(console, stats, accounting, config or FetchConfig(workers=8))
    assert isinstance(console.file, io.StringIO)
    return console.export_text(), console.file.getvalue()


def squeezed(text: str) -> str:
    return " ".join(text.split())


def test_totals_and_errors_by_class() -> None:
    text = squeezed(render(make_stats(), make_accounting())[0])
    assert "URLs 100" in text
    assert "ok 90" in text
    assert "by status 2xx 90 · 4xx 5" in text
    assert "HTTP errors 5" in text
    assert "failed 5 (timeout 3 · dns 2)" in text
    assert "URLs/s" in text
    assert "received 95.0 KB" in text


def test_latency_percentiles_for_headers_and_total_time() -> None:
    stats = make_stats()
    text = render(stats, make_accounting())[0]
    total_row = next(line for line in text.splitlines() if "total time" in line).split()[2:]
    headers_row = next(line for line in text.splitlines() if "time to headers" in line).split()[3:]
    assert total_row == [f"{stats.total_time.percentile(p):,.0f}" for p in (50, 90, 95, 99)] + ["100"]
    assert total_row[0] in ("50", "51")  # about the middle of 1..100 ms, within the histogram's 1%
    assert headers_row[-1] == "50"
    assert "p50 p90 p95 p99 max" in squeezed(text)


def test_rows_never_timed_whole_stay_out_of_the_time_to_headers_too() -> None:
    """Interrupted rows were left out of the total time but not the time to headers: after a
    Ctrl-C the summary showed "time to headers p50 1.2" above "total time p50 0.6"."""
    stats = RunStats()
    stats.write(helpers.make_result(index=0, ttfb_ms=4.0, total_ms=5.0))
    for index in (1, 2):
        stats.write(helpers.make_result(index=index, ttfb_ms=1.0, total_ms=900.0, ok=False, error="interrupted"))
    assert (stats.ttfb.count, stats.total_time.count) == (1, 1)


@pytest.mark.parametrize("width", [30, 40])
def test_a_narrow_console_keeps_the_host_names_and_drops_figure_columns(width: int) -> None:
    """At 30 columns the figure columns, never cut, left the host column nothing: rows of bare
    numbers. The connection columns go first now."""
    text = render(make_stats(), make_accounting(), width=width)[0]
    hosts = text[text.index("Top 10 hosts") :].split("Connection pool")[0]
    assert all(name in hosts for name in ("a.example", "b.example", "c.example"))
    assert "requests" in hosts and "reused" not in hosts


def test_status_codes_and_top_hosts_in_order_with_error_rates() -> None:
    text = render(make_stats(), make_accounting())[0]
    assert "200 90 · 404 5" in squeezed(text)
    host_lines = [
        line.split() for line in text.splitlines() if line.strip().startswith(tuple("abcd")) and ".example" in line
    ]
    assert [line[0] for line in host_lines] == ["a.example", "b.example", "c.example", "d.example"]
    assert host_lines[0][1:] == ["50", "0.0%", "1", "49"]
    assert host_lines[3][1:3] == ["10", "100.0%"]


def test_pool_report_opened_sent_reuse_retries_and_pool_wait() -> None:
    text = squeezed(render(make_stats(), make_accounting(opened=4, sent=95))[0])
    assert "4 opened (TCP, and TLS for https) for 95 requests sent" in text
    assert "reuse 95.8% of requests" in text
    assert "discarded 0" in text
    assert "--pool-maxsize" not in text
    assert "retries 5" in text
    assert "pool wait 200 ms in total · p95 2.0 ms" in text


def test_discard_advice_only_when_connections_were_discarded() -> None:
    config = FetchConfig(workers=8, pool_maxsize=4, pool_block=False)
    text = squeezed(render(make_stats(), make_accounting(discarded=6), config)[0])
    assert "discarded 6 because a pool was full: raise --pool-maxsize to at least --workers (8)" in text
    assert "or use --pool-block" in text
    assert pool_advice(make_accounting(discarded=0), config) is None
    roomy = FetchConfig(workers=8, pool_maxsize=16, pool_block=False)
    assert pool_advice(make_accounting(discarded=1), roomy) == "raise --pool-maxsize (now 16), or use --pool-block"
    blocking = FetchConfig(workers=8, pool_maxsize=4, pool_block=True)
    assert pool_advice(make_accounting(discarded=1), blocking) == "raise --pool-maxsize to at least --workers (8)"


@pytest.mark.parametrize("width", [40, 80, 160])
def test_no_line_is_wider_than_the_console(width: int) -> None:
    stats = make_stats()
    stats.write(make_result(200, "a-very-long-host-name." * 6 + "example"))
    text, _ = render(stats, make_accounting(discarded=3), FetchConfig(workers=8, pool_maxsize=2), width=width)
    assert all(len(line) <= width for line in text.splitlines())
    # Figures are never cut short: the label and host columns give way instead.
    assert "…" not in "".join(line for line in text.splitlines() if "total time" in line)
    assert next(line for line in text.splitlines() if line.strip().startswith("total")).endswith(" 201")


def test_a_long_pool_wait_is_in_seconds() -> None:
    stats = RunStats()
    for index in range(3):
        stats.write(make_result(index, pool_wait_ms=750.0))
    assert "pool wait 2.25 s in total · p95 750 ms" in squeezed(render(stats, make_accounting())[0])


def test_an_empty_run_renders_dashes() -> None:
    text = squeezed(render(RunStats(), PoolAccounting())[0])
    assert "URLs 0" in text
    assert "total time - - - - -" in text
    assert "pool wait -" in text
    assert "reuse 0.0%" in text


def test_host_names_are_inert_text() -> None:
    stats = RunStats()
    # urlsplit rejects "[" in a host name; other parsers may not, so the summary must not trust one.
    stats.hosts[HOSTILE_HOST] = HostStats(requests=1)
    stats.write(make_result(1, error="\x1b[31m[blink]e", status=None, ok=False))
    text, raw = render(stats, make_accounting(), terminal=False, width=200)
    assert "\x1b" not in raw and "\x07" not in raw
    assert "[blink]x[/blink]" in text
    assert "\\x1b[31m[blink]e" in text
    _, raw = render(stats, make_accounting(), width=200)
    assert "\x1b]0;" not in raw and "\x07" not in raw


def test_render_summary_is_a_renderable() -> None:
    console = Console(file=io.StringIO(), width=80, record=True)
    console.print(render_summary(make_stats(), make_accounting(), FetchConfig()))
    assert "Connection pool" in console.export_text()


def test_summary_data_is_stats_plus_pool_and_limits_sections() -> None:
    stats = make_stats()
    config = FetchConfig(workers=8, pool_maxsize=4, pool_block=False)
    data = summary_data(stats, make_accounting(opened=4, sent=95, discarded=2), config)
    own_sections = ("pool", "limits")
    assert {key: value for key, value in data.items() if key not in own_sections} == json.loads(
        json.dumps(stats.to_dict())
    )
    assert data["limits"] == {
        "rate": None,
        "per_host_concurrency": None,
        "per_host_rate": None,
        "pause_hosts": False,
        "waited_s": 0.0,
    }
    assert data["pool"] == {
        "connections_opened": 4,
        "requests_sent": 95,
        "reuse_ratio": 0.9579,
        "connections_discarded": 2,
        "advice": "raise --pool-maxsize to at least --workers (8), or use --pool-block",
    }
    assert [host["host"] for host in data["top_hosts"]] == ["a.example", "b.example", "c.example", "d.example"]
    assert data["top_hosts"][0]["new_connections"] == 1
    assert summary_data(stats, make_accounting(), config)["pool"]["advice"] is None


def test_reuse_ratio_edges() -> None:
    assert reuse_ratio(make_accounting(opened=0, sent=0)) == 0.0
    assert reuse_ratio(make_accounting(opened=10, sent=10)) == 0.0
    assert reuse_ratio(make_accounting(opened=12, sent=10)) == 0.0  # opened, then failed before sending
    assert reuse_ratio(make_accounting(opened=1, sent=4)) == 0.75


def test_write_summary_json_round_trip(tmp_path: Path) -> None:
    data = summary_data(make_stats(), make_accounting(), FetchConfig())
    path = tmp_path / "summary.json"
    write_summary_json(str(path), data)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert path.read_text(encoding="utf-8").startswith('{\n  "urls": 100,')


def test_a_summary_json_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """A failed write (a full disk, a file size limit) left half a file where the previous run's
    whole one was: it is written beside it, then renamed over it."""
    path = tmp_path / "summary.json"
    path.write_text('{"previous": true}\n')
    (tmp_path / f"summary.json.{os.getpid()}.part").mkdir()  # where the new one would be written
    with pytest.raises(ExportError, match="cannot write the summary"):
        write_summary_json(str(path), {"urls": 1})
    assert path.read_text() == '{"previous": true}\n'
    (tmp_path / f"summary.json.{os.getpid()}.part").rmdir()
    write_summary_json(str(path), {"urls": 1})
    assert json.loads(path.read_text()) == {"urls": 1}
    assert [entry.name for entry in tmp_path.iterdir()] == ["summary.json"]


def test_write_summary_json_to_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "summary.json"
    with pytest.raises(ExportError) as raised:
        write_summary_json(str(path), {"urls": 0})
    message = str(raised.value)
    assert str(path) in message and "No such file or directory" in message
    assert "\n" not in message
