"""The command on a real pseudo-terminal: the live view runs, ends, and the summary follows."""

from __future__ import annotations

import json
import os
import subprocess
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


def test_jsonl_on_the_view_s_terminal_turns_the_view_off() -> None:
    """`-o -` on the terminal the live view draws on: its frames tore the rows (a row began after
    the spinner, stale frame lines sat among them, the view's last clear cut the last row)."""
    code, output = _run_on_pty([cli_command(), "--demo", "--retries", "0", "-o", "-"])
    assert code == 0, output
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert sorted(row["index"] for row in rows) == list(range(31))
    assert "31/31" not in output and "in flight" not in output


def test_an_empty_no_color_is_no_request_for_no_colour() -> None:
    """no-color.org: NO_COLOR counts when set and not empty, as rich reads it for the summary."""
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color", "NO_COLOR": ""}
    code, output = run_on_pty([cli_command(), "--demo", "--retries", "0", "--no-live"], env)
    assert code == 0
    assert b"\x1b[32m200\x1b[0m\t" in output


def test_a_character_stdout_cannot_encode_is_escaped_not_the_end_of_the_run(tmp_path: Path) -> None:
    """With stdout in ASCII (LANG=C), one URL with an é ended the run: 1 row of 3, exit 1."""
    with DemoServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text(
            f"{server.base_url}/get/café\n{server.base_url}/get?1\n{server.base_url}/get?2\n", encoding="utf-8"
        )
        env = {**os.environ, "PYTHONIOENCODING": "ascii"}
        done = subprocess.run(
            [cli_command(), str(urls), "-o", str(tmp_path / "rows.jsonl")], env=env, capture_output=True
        )
    assert done.returncode == 0, done.stderr
    assert b"caf\\xe9" in done.stdout and len(done.stdout.splitlines()) == 3
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 3


def test_stderr_s_reader_leaving_is_no_failure(tmp_path: Path) -> None:
    """`pooledfetch urls 2>&1 | head -1` exited 1: the summary's write met the closed pipe."""
    with DemoServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{server.base_url}/get?{i}\n" for i in range(200)), encoding="utf-8")
        process = subprocess.Popen([cli_command(), str(urls)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        process.stdout.readline()
        process.stdout.close()
        assert process.wait(30) == 0


def test_a_summary_json_that_cannot_be_written_leaves_the_summary_shown(tmp_path: Path) -> None:
    """The terminal summary was skipped for the error line."""
    with DemoServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{server.base_url}/get\n", encoding="utf-8")
        result = CliRunner().invoke(cli, [str(urls), "--summary-json", "/dev/full"])
    assert result.exit_code == 1
    summary, error = result.stderr.splitlines()
    assert summary.startswith("1 URLs: 1 ok, 0 HTTP errors, 0 failed")
    assert error == "pooledfetch: error: cannot write the summary to '/dev/full': No space left on device"
