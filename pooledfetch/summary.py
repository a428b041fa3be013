"""The end-of-run summary for a terminal: totals, latency, statuses, top hosts and the connection-pool
report; and the same figures as plain data for --summary-json.

The one-line `RunStats.summary_line()` stays the summary for pipes and logs.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from pooledfetch.config import FetchConfig
from pooledfetch.errors import ExportError
from pooledfetch.pools import PoolAccounting
from pooledfetch.stats import PERCENTILES, LatencyHistogram, RunStats, human_bytes
from pooledfetch.text import printable

if TYPE_CHECKING:
    from pooledfetch.baseline import Changes

TOP_HOSTS = 10
# By status class; errors without a status are red too. Shared with the live view.
STATUS_STYLES = {2: "green", 3: "cyan", 4: "yellow", 5: "red"}
CHANGE_STYLES = {"new": "cyan", "fixed": "green", "broken": "red", "status_changed": "yellow", "slower": "yellow"}


def summary_data(
    stats: RunStats, accounting: PoolAccounting, config: FetchConfig, changes: Changes | None = None
) -> dict[str, Any]:
    """`stats.to_dict()` plus the connection-pool report (its per-host figures are in `top_hosts`),
    in cluster mode the figures of each Dask worker (`workers`), and with a baseline the changes since it."""
    workers = {"workers": worker_figures(accounting)} if accounting.by_worker else {}
    return {
        **stats.to_dict(),
        "pool": {
            "connections_opened": accounting.connections_opened,
            "requests_sent": accounting.requests_sent,
            "reuse_ratio": round(reuse_ratio(accounting), 4),
            "connections_discarded": accounting.connections_discarded,
            "advice": pool_advice(accounting, config),
        },
        "limits": {
            "rate": config.rate,
            "per_host_concurrency": config.per_host_concurrency,
            "per_host_rate": config.per_host_rate,
            "pause_hosts": config.pause_hosts,
            "waited_s": round(accounting.limit_wait_seconds, 3),
        },
        **workers,
        **(changes.to_dict() if changes is not None else {}),
    }


def worker_figures(accounting: PoolAccounting) -> dict[str, dict[str, Any]]:
    """Per Dask worker: URLs fetched, requests sent, connections opened and reused."""
    return {
        name: {
            "urls": figures.urls,
            "requests_sent": figures.requests_sent,
            "connections_opened": figures.connections_opened,
            "connections_reused": max(0, figures.requests_sent - figures.connections_opened),
            "connections_discarded": figures.connections_discarded,
            "limit_wait_s": round(figures.limit_wait_seconds, 3),
        }
        for name, figures in sorted(accounting.by_worker.items())
    }


def limits_in_force(config: FetchConfig) -> list[str]:
    """The politeness limits of the run, as the options that set them."""
    limits = []
    if config.rate is not None:
        limits.append(f"--rate {config.rate:g}/s")
    if config.per_host_concurrency is not None:
        limits.append(f"--per-host-concurrency {config.per_host_concurrency}")
    if config.per_host_rate is not None:
        limits.append(f"--per-host-rate {config.per_host_rate:g}/s")
    if config.pause_hosts:
        limits.append("--pause-hosts")
    return limits


def reuse_ratio(accounting: PoolAccounting) -> float:
    """The share of requests that went out on a connection opened for an earlier one."""
    if not accounting.requests_sent:
        return 0.0
    # A connection can open and then fail before its request is sent, so opened may exceed sent.
    return max(0.0, 1.0 - accounting.connections_opened / accounting.requests_sent)


def pool_advice(accounting: PoolAccounting, config: FetchConfig) -> str | None:
    """One line on how to stop discarding connections, or None when none was discarded."""
    if not accounting.connections_discarded:
        return None
    if config.pool_maxsize < config.workers:
        advice = f"raise --pool-maxsize to at least --workers ({config.workers})"
    else:
        advice = f"raise --pool-maxsize (now {config.pool_maxsize})"
    return advice if config.pool_block else f"{advice}, or use --pool-block"


def write_summary_json(path: str, data: dict[str, Any]) -> None:
    """Written whole or not at all: to a file beside `path`, then renamed over it, so a full disk
    never leaves half a summary where a previous run's whole one was. A path that is no regular
    file (/dev/stdout, a pipe) is written as it is: a rename would replace it."""
    text = json.dumps(data, indent=2) + "\n"
    in_place = os.path.exists(path) and not os.path.isfile(path)
    target = path if in_place else f"{path}.{os.getpid()}.part"
    try:
        with open(target, "w", encoding="utf-8") as stream:
            stream.write(text)
        if not in_place:
            os.replace(target, path)
    except OSError as exc:
        if not in_place:
            with contextlib.suppress(OSError):
                os.unlink(target)
        raise ExportError(f"cannot write the summary to {path!r}: {exc.strerror or exc}") from None


def print_summary(
    console: Console,
    stats: RunStats,
    accounting: PoolAccounting,
    config: FetchConfig,
    changes: Changes | None = None,
) -> None:
    console.print(render_summary(stats, accounting, config, changes))


def render_summary(
    stats: RunStats, accounting: PoolAccounting, config: FetchConfig, changes: Changes | None = None
) -> RenderableType:
    return Group(
        _section("Totals", _totals(stats)),
        _section("Latency (ms)", _latency(stats)),
        _section("Status codes", _statuses(stats)),
        _section(f"Top {TOP_HOSTS} hosts", _hosts(stats)),
        _section("Connection pool", _pool(stats, accounting, config)),
        *([_section("Limits", _limits(stats, accounting, config))] if limits_in_force(config) else []),
        *([_section("Dask workers", _workers(accounting))] if accounting.by_worker else []),
        *([_section("Changes since baseline", _changes(changes))] if changes is not None else []),
    )


def _workers(accounting: PoolAccounting) -> RenderableType:
    figures = worker_figures(accounting)
    rows = [(Text(printable(name)), worker) for name, worker in figures.items()]
    if len(figures) > 1:
        total = {name: sum(worker[name] for worker in figures.values()) for name in ("urls", "connections_reused")}
        total |= {"requests_sent": accounting.requests_sent, "connections_opened": accounting.connections_opened}
        rows.append((Text("total", style="bold"), total))
    columns = {
        "URLs": "urls",
        "requests": "requests_sent",
        "new conn": "connections_opened",
        "reused": "connections_reused",
    }
    return _NamedFigures(
        "worker",
        [name for name, _ in rows],
        {header: [Text(f"{figures_of[key]:,}") for _, figures_of in rows] for header, key in columns.items()},
    )


def _section(title: str, body: RenderableType) -> RenderableType:
    return Group(Text(title, style="bold"), Padding(body, (0, 0, 1, 2), expand=False))


def _pairs(rows: list[tuple[str, Text]]) -> Table:
    """Label and value, one pair a line."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    return table


def _totals(stats: RunStats) -> Table:
    return _pairs(
        [
            ("URLs", Text(f"{stats.total:,}")),
            ("ok", Text(f"{stats.ok:,}", style="green" if stats.ok else "")),
            ("by status", _status_classes(stats)),
            ("HTTP errors", Text(f"{stats.http_errors:,}", style="yellow" if stats.http_errors else "")),
            ("failed", _failed(stats)),
            ("duration", Text(f"{stats.duration:,.2f} s")),
            ("rate", Text(f"{stats.rate:,.1f} URLs/s")),
            ("received", Text(human_bytes(stats.bytes_received))),
        ]
    )


def _failed(stats: RunStats) -> Text:
    text = Text(f"{stats.failed:,}", style="red" if stats.failed else "")
    if stats.errors:
        text.append("  (")
        text.append_text(_joined([(printable(name), count, "") for name, count in stats.errors.most_common()]))
        text.append(")")
    return text


def _joined(items: list[tuple[str, int, str]]) -> Text:
    """`name count · name count`, each name in its style; a dash when there is none."""
    if not items:
        return Text("-", style="dim")
    text = Text()
    for position, (name, count, style) in enumerate(items):
        if position:
            text.append(" · ", style="dim")
        text.append(name, style=style)
        text.append(f" {count:,}")
    return text


def _latency(stats: RunStats) -> Table:
    table = _figures_table()
    table.add_column("")
    for header in [*(f"p{p}" for p in PERCENTILES), "max"]:
        table.add_column(header, justify="right", no_wrap=True)
    for label, histogram in (("time to headers", stats.ttfb), ("total time", stats.total_time)):
        table.add_row(label, *_latency_cells(histogram))
    return table


def _figures_table() -> Table:
    """A table whose first column is the one that gives way on a narrow console.

    rich narrows wrappable columns first; the figures are no_wrap, so they are never cut.
    """
    return Table(box=None, padding=(0, 1), pad_edge=False, collapse_padding=True, header_style="dim")


def _latency_cells(histogram: LatencyHistogram) -> list[str]:
    if not histogram.count:
        return ["-"] * (len(PERCENTILES) + 1)
    return [_ms(histogram.percentile(p)) for p in PERCENTILES] + [_ms(histogram.max)]


def _status_classes(stats: RunStats) -> Text:
    return _joined([(name, count, _class_style(name)) for name, count in stats.status_classes().items()])


def _statuses(stats: RunStats) -> Text:
    statuses = sorted(stats.statuses.items())
    return _joined([(str(status), count, STATUS_STYLES.get(status // 100, "")) for status, count in statuses])


def _hosts(stats: RunStats) -> RenderableType:
    top = stats.top_hosts(TOP_HOSTS)
    if not top:
        return Text("-", style="dim")
    return _NamedFigures(
        "host",
        [Text(printable(name)) for name, _ in top],
        {
            "requests": [Text(f"{host.requests:,}") for _, host in top],
            "errors": [Text(f"{host.error_rate:.1%}", style="red" if host.failures else "") for _, host in top],
            "new conn": [Text(f"{host.new_connections:,}") for _, host in top],
            "reused": [Text(f"{host.reused_connections:,}") for _, host in top],
        },
    )


# Cells a name keeps on a narrow console before the figure columns on its right give way.
_NAME_ROOM = 16


class _NamedFigures:
    """Rows of a name (a host, a worker) and its figures, laid out at draw time. A Table narrows
    only its name column (the figures are never cut), and at 30 columns left no host name at
    all: here the figure columns go from the right, connections first, until the names have room."""

    def __init__(self, label: str, names: list[Text], figures: dict[str, list[Text]]) -> None:
        self._label = label
        self._names = names
        self._figures = figures

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = {
            header: max([len(header), *(cell.cell_len for cell in cells)]) + 1
            for header, cells in self._figures.items()
        }
        shown = list(self._figures)
        while len(shown) > 1 and options.max_width - sum(widths[header] for header in shown) < _NAME_ROOM:
            shown.pop()
        table = _figures_table()
        table.add_column(self._label, overflow="ellipsis")
        for header in shown:
            table.add_column(header, justify="right", no_wrap=True)
        for row, name in enumerate(self._names):
            table.add_row(name, *(self._figures[header][row] for header in shown))
        yield table


def _pool(stats: RunStats, accounting: PoolAccounting, config: FetchConfig) -> Table:
    opened, sent = accounting.connections_opened, accounting.requests_sent
    rows = [
        ("connections", Text(f"{opened:,} opened (TCP, and TLS for https) for {sent:,} requests sent")),
        ("reuse", Text(f"{reuse_ratio(accounting):.1%} of requests went out on an already open connection")),
        ("discarded", _discarded(accounting, config)),
        ("retries", Text(f"{stats.retries:,}", style="yellow" if stats.retries else "")),
        ("pool wait", _pool_wait(stats.pool_wait)),
    ]
    return _pairs(rows)


def _limits(stats: RunStats, accounting: PoolAccounting, config: FetchConfig) -> Table:
    waited = accounting.limit_wait_seconds
    per_url = f" ({waited * 1000.0 / stats.total:,.1f} ms per URL)" if stats.total else ""
    return _pairs(
        [
            ("in force", Text(" · ".join(limits_in_force(config)))),
            ("waited", Text(f"{waited:,.2f} s in total across workers{per_url}")),
        ]
    )


def _changes(changes: Changes) -> Table:
    from pooledfetch.baseline import CHANGE_KINDS

    count, first = changes.missing()
    missing = Text(f"{count:,}", style="yellow" if count else "")
    for url in first:
        missing.append(f"\n{printable(url)}", style="dim")
    if count > len(first):
        missing.append("\n…", style="dim")
    baseline = changes.baseline
    read = Text(f"{printable(baseline.path)}: {baseline.rows:,} rows")
    if baseline.skipped:
        read.append(f", {baseline.skipped:,} lines skipped (not result rows)", style="yellow")
    rows = [
        ("baseline", read),
        ("changes", _joined([(kind, changes.counts[kind], CHANGE_STYLES.get(kind, "")) for kind in CHANGE_KINDS])),
        ("missing", missing),
    ]
    if changes.broken:
        broken = Text()
        for position, (url, old, new) in enumerate(changes.broken):
            broken.append("\n" if position else "")
            broken.append(f"{printable(old)} → {printable(new)}", style="red")
            broken.append(f"  {printable(url)}")
        rows.append(("broken", broken))
    if changes.validators is not None:
        rows.append(
            (
                "not modified",
                Text(f"{changes.not_modified:,} fetches saved · {human_bytes(changes.bytes_saved)} not transferred"),
            )
        )
    return _pairs(rows)


def _discarded(accounting: PoolAccounting, config: FetchConfig) -> Text:
    advice = pool_advice(accounting, config)
    if advice is None:
        return Text("0")
    return Text.assemble(
        (f"{accounting.connections_discarded:,} because a pool was full", "yellow"), ": ", (advice, "bold")
    )


def _pool_wait(histogram: LatencyHistogram) -> Text:
    if not histogram.count:
        return Text("-", style="dim")
    total = f"{histogram.total / 1000.0:,.2f} s" if histogram.total >= 1000 else f"{_ms(histogram.total)} ms"
    return Text(f"{total} in total · p95 {_ms(histogram.percentile(95))} ms")


def _class_style(status_class: str) -> str:
    """The style of "4xx" is the style of 404."""
    return STATUS_STYLES.get(int(status_class.removesuffix("xx")), "")


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
