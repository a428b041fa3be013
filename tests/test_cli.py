"""The command line, through click's CliRunner and as a real installed command."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import wait_until
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pooledfetch import cli as cli_module
from pooledfetch.cli import cli
from pooledfetch.demo import DemoServer, sample_lines
from pooledfetch.errors import ExitCode
from pooledfetch.results import FIELDS


def run(*args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def url_file(tmp_path: Path, lines: list[str], name: str = "urls.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_file_input_prints_one_tab_separated_line_per_url(demo_server: DemoServer, tmp_path: Path) -> None:
    base = demo_server.base_url
    path = url_file(tmp_path, ["# a comment", f"{base}/get", "", f"{base}/status/404", f"{base}/bytes/10"])

    code, out, err = run(path)

    assert code == ExitCode.OK
    lines = sorted((line.split("\t") for line in out.splitlines()), key=lambda fields: fields[3])
    assert [(fields[0], fields[2], fields[3]) for fields in lines] == [
        ("200", "10", f"{base}/bytes/10"),
        ("200", lines[1][2], f"{base}/get"),
        ("404", "4", f"{base}/status/404"),
    ]
    assert all(fields[1].isdigit() for fields in lines)  # total ms
    assert "3 URLs: 2 ok, 1 HTTP errors, 0 failed" in err


def test_reads_stdin_when_no_file_is_given(demo_server: DemoServer) -> None:
    code, out, _ = run(input=f"{demo_server.base_url}/get\r\n{demo_server.base_url}/json\r\n")
    assert code == ExitCode.OK
    assert len(out.splitlines()) == 2


def test_dash_reads_stdin_after_files(demo_server: DemoServer, tmp_path: Path) -> None:
    path = url_file(tmp_path, [f"{demo_server.base_url}/get"])
    code, _, _ = run(path, "-", "-o", str(tmp_path / "out.jsonl"), input=f"{demo_server.base_url}/json\n")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert code == ExitCode.OK
    assert sorted((row["index"], row["url"].rsplit("/", 1)[1]) for row in rows) == [(0, "get"), (1, "json")]


def test_no_input_at_all_is_a_usage_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "_stdin_is_terminal", lambda: True)
    code, _, err = run()
    assert code == ExitCode.USAGE
    assert "no input" in err and "--demo" in err


def test_missing_input_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "nope.txt"))
    assert code == ExitCode.USAGE
    assert "does not exist" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-H", "no colon here"], "Name: value"),
        (["--max-bytes", "lots"], "not a size"),
        (["--retry-status", "5xx"], "status codes"),
        (["--base-url", "ftp://example.com/"], "--base-url"),
        (["-X", "GE T"], "not a valid HTTP method"),
        (["--pool-maxsize", "0"], "--pool-maxsize"),
        (["-o", "results.xlsx"], "export format"),
        (["-d", "@/no/such/file"], "cannot read body file"),
        (["--timeout", "inf"], "not a finite number"),  # every URL was an OverflowError
        (["--connect-timeout", "nan"], "not a finite number"),
        (["--pool-maxsize", "1000000"], "--pool-maxsize"),  # urllib3 filled its slots for minutes
        (["--processes", "99999999999"], "number of processes"),  # a LocalCluster to run out of memory
        (["--base-url", "http://[::1"], "--base-url"),  # unexpected ValueError
        (["-x", "http://127.0.0.1:99999"], "--proxy"),  # every URL blamed as invalid_url
        (["--resume", ""], "--resume needs a file name"),  # silently ignored
    ],
)
def test_bad_options_exit_2_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = url_file(tmp_path, ["http://127.0.0.1:9/"])
    code, out, err = run(path, *args)
    assert code == ExitCode.USAGE
    assert message in err
    assert "Traceback" not in err and out == ""


def test_exports_in_every_format_have_one_row_per_url_line(demo_server: DemoServer, tmp_path: Path) -> None:
    base = demo_server.base_url
    lines = [f"{base}/get", f"{base}/status/500", "ftp://example.com/x", "not a url", f"{base}/redirect/2"]
    path = url_file(tmp_path, lines)
    csv_path, json_path, jsonl_path = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "r.ndjson"

    code, _, _ = run(path, "-q", "--retries", "0", "-o", str(csv_path), "-o", str(json_path), "-o", str(jsonl_path))

    with open(csv_path, newline="", encoding="utf-8") as stream:
        csv_rows = list(csv.DictReader(stream))
    json_rows = json.loads(json_path.read_text())
    jsonl_rows = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert code == ExitCode.SOME_FAILED  # two invalid lines
    for rows in (csv_rows, json_rows, jsonl_rows):
        assert len(rows) == len(lines)
        assert list(rows[0]) == list(FIELDS)
        assert sorted(int(row["index"]) for row in rows) == list(range(len(lines)))
    by_index = {row["index"]: row for row in json_rows}
    assert by_index[0]["status"] == 200 and by_index[0]["ok"] is True
    assert by_index[1]["status"] == 500 and by_index[1]["ok"] is False and by_index[1]["error"] == ""
    assert by_index[2]["error"] == "invalid_url" and "ftp" in by_index[2]["error_detail"]
    assert by_index[3]["error"] == "invalid_url"
    assert by_index[4]["redirects"] == 2 and by_index[4]["final_url"] == f"{base}/get"


def test_format_option_overrides_the_extension(demo_server: DemoServer, tmp_path: Path) -> None:
    path = url_file(tmp_path, [f"{demo_server.base_url}/get"])
    out = tmp_path / "results.txt"
    code, _, _ = run(path, "-q", "--format", "json", "-o", str(out))
    assert code == ExitCode.OK
    assert json.loads(out.read_text())[0]["status"] == 200


def test_dash_output_is_jsonl_on_stdout_without_plain_lines(demo_server: DemoServer, tmp_path: Path) -> None:
    path = url_file(tmp_path, [f"{demo_server.base_url}/get", f"{demo_server.base_url}/json"])
    code, out, _ = run(path, "-o", "-")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == ExitCode.OK
    assert len(rows) == 2 and all(row["status"] == 200 for row in rows)


def test_quiet_prints_nothing(demo_server: DemoServer, tmp_path: Path) -> None:
    code, out, err = run(url_file(tmp_path, [f"{demo_server.base_url}/get"]), "-q")
    assert (code, out, err) == (ExitCode.OK, "", "")


def test_fail_on_http_error_turns_4xx_into_exit_1(demo_server: DemoServer, tmp_path: Path) -> None:
    path = url_file(tmp_path, [f"{demo_server.base_url}/status/404"])
    assert run(path, "-q")[0] == ExitCode.OK
    assert run(path, "-q", "--fail-on-http-error")[0] == ExitCode.SOME_FAILED


def test_a_failed_url_exits_1(tmp_path: Path, free_port: int) -> None:
    code, out, err = run(url_file(tmp_path, [f"http://127.0.0.1:{free_port}/"]), "--retries", "0")
    assert code == ExitCode.SOME_FAILED
    assert out.startswith("connect\t")
    assert "1 failed (connect 1)" in err


def test_unwritable_export_fails_before_fetching(demo_server: DemoServer, tmp_path: Path) -> None:
    path = url_file(tmp_path, [f"{demo_server.base_url}/get"])
    code, out, err = run(path, "-o", str(tmp_path / "missing" / "out.csv"))
    assert code == ExitCode.SOME_FAILED
    assert "cannot write export" in err and "Traceback" not in err
    assert demo_server.requests == 0 and out == ""


def test_method_headers_and_body_file_reach_the_server(httpserver: HTTPServer, tmp_path: Path) -> None:
    seen: list[Request] = []

    def record(request: Request) -> Response:
        seen.append(request)
        return Response("ok")

    httpserver.expect_request("/submit").respond_with_handler(record)
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    path = url_file(tmp_path, [httpserver.url_for("/submit")])

    code, _, _ = run(path, "-q", "-X", "PUT", "-d", f"@{body}", "-H", "X-Token: abc", "-H", "Accept:", "-A", "probe/1")

    assert code == ExitCode.OK
    (request,) = seen
    assert request.method == "PUT"
    assert request.get_data() == b'{"a": 1}'
    assert request.headers["X-Token"] == "abc"
    assert request.headers["User-Agent"] == "probe/1"
    assert "Accept" not in request.headers


def test_data_without_method_is_a_post(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/form", method="POST", data="a=1").respond_with_data("ok")
    code, _, _ = run(url_file(tmp_path, [httpserver.url_for("/form")]), "-q", "-d", "a=1")
    assert code == ExitCode.OK


def test_base_url_and_default_scheme(demo_server: DemoServer, tmp_path: Path) -> None:
    host = demo_server.base_url.removeprefix("http://")
    path = url_file(tmp_path, ["/get", "json", f"{host}/uuid"])
    code, out, _ = run(path, "--base-url", demo_server.base_url + "/", "--default-scheme", "http")
    assert code == ExitCode.OK
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == ["200", "200", "200"]


def test_dedupe_skips_exact_repeats(demo_server: DemoServer, tmp_path: Path) -> None:
    url = f"{demo_server.base_url}/get"
    code, out, _ = run(url_file(tmp_path, [url, url, f"{url}?x", url]), "--dedupe")
    assert code == ExitCode.OK
    assert len(out.splitlines()) == 2
    assert demo_server.requests == 2


def test_terminal_lines_escape_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_bytes(b"http://example.com/\x1b[31mred\n")
    code, out, _ = run(str(path))
    assert code == ExitCode.SOME_FAILED
    assert "\x1b" not in out
    assert "\\x1b[31mred" in out


def test_demo_fetches_the_sample_list() -> None:
    code, out, err = run("--demo", "--retries", "0")
    assert code == ExitCode.OK
    expected = [line for line in sample_lines() if line.strip() and not line.startswith("#")]
    assert len(out.splitlines()) == len(expected)
    assert "demo server at http://127.0.0.1:" in err


def test_sample_list_is_shipped_at_the_top_level_too() -> None:
    top_level = Path(__file__).resolve().parent.parent / "sample_urls.txt"
    assert top_level.read_text(encoding="utf-8").splitlines() == sample_lines()


@pytest.fixture
def installed_command() -> str:
    command = shutil.which("pooledfetch", path=os.path.dirname(sys.executable)) or shutil.which("pooledfetch")
    if command is None:
        pytest.fail("the pooledfetch console script is not installed: run pip install -e '.[test]'")
    return command


def test_installed_command_runs_the_demo(installed_command: str, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    completed = subprocess.run(
        [installed_command, "--demo", "--retries", "0", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == len(completed.stdout.splitlines()) > 20
    assert "URLs:" in completed.stderr


def test_python_dash_m_reports_the_version() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pooledfetch", "--version"], capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 0
    assert completed.stdout.strip().startswith("pooledfetch, version ")


def test_ctrl_c_keeps_exports_valid_and_every_line_gets_a_row(installed_command: str, tmp_path: Path) -> None:
    with DemoServer() as server:
        lines = [f"{server.base_url}/get"] * 2 + [f"{server.base_url}/delay/5"] * 4 + [f"{server.base_url}/get"] * 50
        path = url_file(tmp_path, lines)
        out = tmp_path / "partial.json"
        process = subprocess.Popen(
            [installed_command, path, "-w", "4", "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 20
        while server.requests < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED
    rows = json.loads(out.read_text())
    assert sorted(row["index"] for row in rows) == list(range(len(lines)))
    errors = {row["error"] for row in rows}
    assert {"cancelled", "interrupted"} <= errors
    assert "URLs:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["-o", "{dir}/rows.jsonl", "-o", "{dir}/rows.jsonl"], "name the same file"),
        (["-o", "{dir}/rows.jsonl", "--resume", "{dir}/./rows.jsonl"], "name the same file"),
        (["-o", "{dir}/rows.jsonl", "--summary-json", "{dir}/rows.jsonl"], "name the same file"),
        (["--format", "jsonl", "-o", "{input}"], "name the same file"),
        (["-o", "-", "-o", "-"], "-o - is given twice"),
        (["-o", "{dir}/rows.jsonl", "-o", "{dir}/rows.txt"], "cannot tell the export format"),
        (["-o", "{dir}/rows.jsonl", "--summary-json", "{dir}"], "name a file in an existing directory"),
    ],
)
def test_outputs_that_would_spoil_a_file_are_usage_errors_before_any_opens(
    demo_server: DemoServer, tmp_path: Path, outputs: list[str], message: str
) -> None:
    """`--resume X -o X` fetched every URL again into a file with repeated indexes and a broken
    line; `-o` naming the input emptied it before it was read; a bad second `-o` emptied the first."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"index": 0, "url": "kept"}\n')
    path = url_file(tmp_path, [f"{demo_server.base_url}/get"])
    served = demo_server.requests
    code, out, err = run(path, "-q", *(arg.format(dir=tmp_path, input=path) for arg in outputs))
    assert code == ExitCode.USAGE
    assert message in err
    assert out == ""
    assert rows.read_text() == '{"index": 0, "url": "kept"}\n'
    assert Path(path).read_text() == f"{demo_server.base_url}/get\n"
    assert demo_server.requests == served


def test_a_config_file_that_is_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    """It was a 33-line traceback ending in UnicodeDecodeError."""
    config = tmp_path / "bad.toml"
    config.write_bytes(b"\xff\xfeworkers = 4\n")
    code, out, err = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "--config", str(config))
    assert code == ExitCode.USAGE
    assert "is not valid TOML (UTF-8)" in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max-time = 1970-01-01", "'max-time' must be a number, text or true/false, not a date or time"),
        ("workers = 12:00:00", "not a date or time"),
        ("header = [1979-05-27]", "not a date or time"),
        ("workers = 3.9", "'workers' must be a whole number"),
        ("workers = true", "'workers' must be a whole number"),
        ('read-timeout = "2"', "'read-timeout' must be a number"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_a_usage_error(tmp_path: Path, line: str, message: str) -> None:
    """A date was a traceback (float() of it raised a TypeError click does not catch); `workers
    = 3.9` ran with 3 workers and `workers = true` with 1, click's int() taking what it was given."""
    config = tmp_path / "pooledfetch.toml"
    config.write_text(line + "\n", encoding="utf-8")
    code, out, err = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "--config", str(config))
    assert code == ExitCode.USAGE
    assert message in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("place", ["config file", "environment"])
def test_timeout_typed_beats_a_read_timeout_from_further_away(
    httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str
) -> None:
    """`--timeout 3` lost to `read-timeout = 0.5` in the config file (or POOLEDFETCH_READ_TIMEOUT)."""
    httpserver.expect_request("/slow").respond_with_handler(lambda request: time.sleep(1.0) or Response("ok"))
    args = [url_file(tmp_path, [httpserver.url_for("/slow")]), "--timeout", "3", "--retries", "0"]
    if place == "config file":
        config = tmp_path / "pooledfetch.toml"
        config.write_text("read-timeout = 0.5\n", encoding="utf-8")
        args += ["--config", str(config)]
    else:
        monkeypatch.setenv("POOLEDFETCH_READ_TIMEOUT", "0.5")
    code, out, err = run(*args)
    assert (code, out.split("\t")[0]) == (ExitCode.OK, "200"), err
    # From one place, the specific option wins.
    code, out, _ = run(*args, "--read-timeout", "0.5")
    assert (code, out.split("\t")[0]) == (ExitCode.SOME_FAILED, "timeout")
    # The server answers the abandoned request later: not into the next test's log.
    wait_until(lambda: len(httpserver.log) == 2, 5.0, "the slow answer")


def test_an_empty_method_is_a_usage_error_not_a_get(tmp_path: Path) -> None:
    code, out, err = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "-X", "")
    assert code == ExitCode.USAGE
    assert "is not a valid HTTP method" in err and out == ""


@pytest.mark.parametrize("proxy", ["http://127.0.0.1:99999", "socks5://user:secret@127.0.0.1:1", "ftp://proxy"])
def test_a_bad_proxy_in_the_environment_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    """Every URL was an `invalid_url` row ("Failed to parse: ..."), which --resume then counted done."""
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("http_proxy", proxy)
    export = tmp_path / "rows.jsonl"
    code, out, err = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "-o", str(export))
    assert code == ExitCode.USAGE
    assert "the http_proxy environment variable" in err and "--no-env-proxy" in err
    assert "secret" not in err
    assert out == "" and not export.exists()
    code, _, _ = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "--no-env-proxy", "--retries", "0")
    assert code == ExitCode.SOME_FAILED  # fetched (and refused), not stopped


@pytest.mark.parametrize("processes", [[], ["--processes", "1"]])
@pytest.mark.parametrize(
    "content", [b'machine h login\n garbage "unterminated\n', b"machine h login n\xfcser password p\n"]
)
def test_a_netrc_that_cannot_be_used_stops_the_run_before_anything_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[str], content: bytes
) -> None:
    """With --processes the file was read only in the workers: every row `other`, the export
    written, exit 1. A netrc that is not UTF-8 was "unexpected UnicodeDecodeError"."""
    (tmp_path / "netrc").write_bytes(content)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    export = tmp_path / "rows.jsonl"
    code, out, err = run(url_file(tmp_path, ["http://127.0.0.1:9/"]), "--netrc", "-o", str(export), *processes)
    assert code == ExitCode.USAGE
    assert "cannot use --netrc file" in err and "unexpected" not in err
    assert out == "" and not export.exists()


def test_jsonl_on_stdout_to_a_reader_that_leaves_keeps_the_other_exports(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    """`-o - | head -1` ended the run with "cannot write export '-': Broken pipe" (exit 1), the CSV
    export a row in and no summary; the plain lines, piped the same way, went on."""
    from hostile import cli_command, offline_env

    urls = url_file(tmp_path, [f"{demo_server.base_url}/get?i={i}" for i in range(300)])
    out, summary = tmp_path / "out.csv", tmp_path / "summary.json"
    args = [cli_command(), urls, "-q", "-o", "-", "-o", str(out), "--summary-json", str(summary)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=offline_env(tmp_path)) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # as `head -1` does
        assert process.wait(30) == ExitCode.OK
        assert process.stderr.read() == b""
    assert len(out.read_text(encoding="utf-8").splitlines()) == 301
    assert json.loads(summary.read_text(encoding="utf-8"))["urls"] == 300
