"""The command on a real pseudo-terminal: the live view runs, ends, and the summary follows."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner
from helpers import run_on_pty
from hostile import cli_command

from pooledfetch.cli import cli
from pooledfetch.demo import DemoServer


def _run_on_pty(args: list[str]) -> tuple[int, str]:
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    code, output = run_on_pty(args, env)
    return code, output.decode("utf-8", "replace")


def test_live_view_on_a_terminal_ends_with_the_summary() -> None:
    code, output = _run_on_pty([cli_command(), "--demo", "--retries", "0"])
    assert code == 0, output
    assert "Traceback" not in output
    # The progress line of the live view, then the summary sections.
    assert "31/31" in output
    for section in ("Totals", "Latency (ms)", "Status codes", "Top 10 hosts", "Connection pool"):
        assert section in output
    # On the same terminal the table replaces the plain lines.
    assert "200\t" not in output


def test_no_live_keeps_the_plain_lines_and_the_summary() -> None:
    code, output = _run_on_pty([cli_command(), "--demo", "--retries", "0", "--no-live"])
    assert code == 0, output
    assert "31/31" not in output
    assert "/status/418" in output and "Connection pool" in output


def test_summary_json_is_written_even_when_quiet(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    with DemoServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{server.base_url}/get?{i}\n" for i in range(30)) + f"{server.base_url}/status/404\n")
        result = CliRunner().invoke(cli, [str(urls), "-q", "-w", "3", "--summary-json", str(summary)])
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    data = json.loads(summary.read_text())
    assert data["urls"] == 31 and data["ok"] == 30 and data["http_errors"] == 1
    assert data["statuses"] == {"200": 30, "404": 1}
    assert data["pool"]["connections_opened"] <= 3
    assert data["pool"]["requests_sent"] == 31
    assert data["pool"]["connections_discarded"] == 0
    assert set(data["latency_ms"]["total"]) == {"p50", "p90", "p95", "p99", "max"}


def test_an_undersized_pool_is_reported_with_advice(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    with DemoServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{server.base_url}/delay/0.05?{i}\n" for i in range(64)))
        args = [str(urls), "-q", "--pool-maxsize", "2", "-w", "8", "--no-pool-block", "--summary-json", str(summary)]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    pool = json.loads(summary.read_text())["pool"]
    assert pool["connections_discarded"] > 0
    assert "--pool-maxsize" in pool["advice"]
