"""Re-runs: --baseline (the `change` of each row, the summary, --fail-on-change) and --if-changed
(conditional requests, 304s, --save-dir), against real loopback servers whose answers change."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import helpers
import pytest
from click.testing import CliRunner
from conftest import serving
from rich.console import Console

from pooledfetch.baseline import Baseline, ChangeRules, Changes, PreviousRow, classify_change, with_conditions
from pooledfetch.cli import cli
from pooledfetch.config import FetchConfig
from pooledfetch.engine import fetch_all
from pooledfetch.errors import ExitCode, InputError
from pooledfetch.pools import PoolAccounting
from pooledfetch.sources import Target
from pooledfetch.stats import RunStats
from pooledfetch.summary import render_summary


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"hello"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedServer(ThreadingHTTPServer):
    """Answers each path as `answers` says (changed between runs), and notes the headers of each request.

    A path whose answer has an ETag or a Last-Modified answers 304 to a request that matches it.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, Answer] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests_to(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for seen_path, headers in self.seen if seen_path == path]


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.server.lock:
            self.server.seen.append((self.path, headers))
        answer = self.server.answers.get(self.path, Answer(404, b"no such path"))
        time.sleep(answer.delay)
        etag, modified = answer.headers.get("ETag"), answer.headers.get("Last-Modified")
        not_modified = (etag is not None and headers.get("if-none-match") == etag) or (
            etag is None and modified is not None and headers.get("if-modified-since") == modified
        )
        self.send_response(304 if not_modified else answer.status)
        for name, value in answer.headers.items():
            # A 304 without validators, as some servers send it: the row keeps the previous ones.
            if not (not_modified and name == "Last-Modified"):
                self.send_header(name, value)
        body = b"" if not_modified else answer.body
        if not not_modified:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815 - the http.server naming

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    yield from serving(ScriptedServer())


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def url_file(tmp_path: Path, server: ScriptedServer, paths: list[str], name: str = "urls.txt") -> str:
    path = tmp_path / name
    path.write_text("".join(f"{server.base_url}{p}\n" for p in paths), encoding="utf-8")
    return str(path)


def rows_by_path(path: Path, server: ScriptedServer) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {str(row["url"]).removeprefix(server.base_url): row for row in rows}


def write_rows(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


# --- two runs against a server whose answers change ------------------------------------------------


def test_second_run_classifies_every_change_and_fails_only_when_asked(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {
        "/down": Answer(200),
        "/up": Answer(500),
        "/moved": Answer(200),
        "/slow": Answer(200, delay=0.01),
        "/same": Answer(200),
        "/gone": Answer(200),
    }
    first = url_file(tmp_path, server, ["/down", "/up", "/moved", "/slow", "/same", "/gone"], "first.txt")
    previous = tmp_path / "previous.jsonl"
    assert run(first, "-q", "-o", str(previous))[0] == ExitCode.OK

    server.answers.update(
        {
            "/down": Answer(500),
            "/up": Answer(200),
            "/moved": Answer(301, headers={"Location": "/elsewhere"}),
            "/elsewhere": Answer(200),
            "/slow": Answer(200, delay=0.6),
            "/new": Answer(200),
        }
    )
    second = url_file(tmp_path, server, ["/down", "/up", "/moved", "/slow", "/same", "/new"], "second.txt")
    now, summary = tmp_path / "now.jsonl", tmp_path / "summary.json"

    code, _, err = run(second, "--baseline", str(previous), "-o", str(now), "--summary-json", str(summary))

    assert code == ExitCode.OK  # a 500 is not a failure without --fail-on-http-error, as before
    changes = {path: row["change"] for path, row in rows_by_path(now, server).items()}
    assert changes == {
        "/down": "broken",
        "/up": "fixed",
        "/moved": "status_changed",
        "/slow": "slower",
        "/same": "same",
        "/new": "new",
    }
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["changes"] == {
        "new": 1,
        "fixed": 1,
        "broken": 1,
        "status_changed": 1,
        "slower": 1,
        "same": 1,
    }
    assert data["missing"] == {"count": 1, "urls": [f"{server.base_url}/gone"]}
    assert data["not_modified"] == 0 and data["bytes_saved"] == 0
    assert "changes: 1 new, 1 fixed, 1 broken, 1 status_changed, 1 slower, 1 same; 1 missing" in err

    # The same run with --fail-on-change: a broken URL fails it; kinds nobody has do not.
    assert run(second, "-q", "--baseline", str(previous), "--fail-on-change", "broken")[0] == ExitCode.SOME_FAILED
    assert run(second, "-q", "--baseline", str(previous), "--fail-on-change", "missing_kind,new")[0] == ExitCode.USAGE
    server.answers["/down"] = Answer(200)
    server.answers["/slow"] = Answer(200)
    fine = run(second, "-q", "--baseline", str(previous), "--fail-on-change", "broken,slower")
    assert fine[0] == ExitCode.OK


def test_fail_on_change_needs_known_kinds_and_a_baseline(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/a": Answer(200)}
    urls = url_file(tmp_path, server, ["/a"])
    code, _, err = run(urls, "--fail-on-change", "broken")
    assert code == ExitCode.USAGE
    assert "--fail-on-change needs --baseline or --if-changed" in err
    previous = write_rows(tmp_path / "previous.jsonl", [helpers.BASE_ROW])
    code, _, err = run(urls, "--baseline", previous, "--fail-on-change", "broken,worse")
    assert code == ExitCode.USAGE
    assert "the change kinds are new, fixed, broken" in err
    assert server.requests_to("/a") == []  # refused before anything was fetched


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read baseline"),
        ('[\n{"url": "x"}\n]\n', "is not a JSON Lines export of pooledfetch (line 1"),
        ("index,url,status\n0,http://a/,200\n", "is not a JSON Lines export of pooledfetch (line 1"),
    ],
)
def test_a_baseline_that_is_no_jsonl_export_is_one_clear_line(
    server: ScriptedServer, tmp_path: Path, content: str | None, message: str
) -> None:
    server.answers = {"/a": Answer(200)}
    previous = tmp_path / "previous.jsonl"
    if content is not None:
        previous.write_text(content, encoding="utf-8")
    for option in ("--baseline", "--if-changed"):
        code, out, err = run(url_file(tmp_path, server, ["/a"]), option, str(previous))
        assert code == ExitCode.USAGE
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert out == ""
    assert server.requests_to("/a") == []


def test_lines_that_are_no_result_rows_are_skipped_and_counted(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/a": Answer(200), "/b": Answer(200)}
    previous = tmp_path / "previous.jsonl"
    row = {**helpers.BASE_ROW, "url": f"{server.base_url}/a", "final_url": f"{server.base_url}/a"}
    previous.write_text(json.dumps(row) + "\nnot json\n[1, 2]\n" + '{"url": "cut short', encoding="utf-8")
    summary = tmp_path / "summary.json"

    code, _, _ = run(
        url_file(tmp_path, server, ["/a", "/b"]), "-q", "--baseline", str(previous), "--summary-json", str(summary)
    )

    assert code == ExitCode.OK
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["baseline"]["skipped_lines"] == 3
    assert data["changes"]["new"] == 1 and data["changes"]["same"] == 1


# --- conditional re-fetch -------------------------------------------------------------------------


def test_if_changed_sends_validators_gets_304s_and_keeps_the_saved_bodies(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.answers = {
        "/etag": Answer(200, b"etag body " * 100, headers={"ETag": '"v1"'}),
        "/dated": Answer(200, b"dated body", headers={"Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT"}),
        "/plain": Answer(200, b"plain body"),
        "/hop": Answer(302, headers={"Location": "/target"}),
        "/target": Answer(200, b"target body", headers={"ETag": '"t1"'}),
    }
    urls = url_file(tmp_path, server, ["/etag", "/dated", "/plain", "/hop"])
    saved = tmp_path / "saved"
    previous = tmp_path / "previous.jsonl"
    assert run(urls, "-q", "--save-dir", str(saved), "-o", str(previous))[0] == ExitCode.OK
    before = rows_by_path(previous, server)
    assert before["/hop"]["etag"] == '"t1"'  # the final response's validator
    server.seen.clear()
    now, summary = tmp_path / "now.jsonl", tmp_path / "summary.json"

    code, _, _ = run(
        urls,
        "-q",
        "--if-changed",
        str(previous),
        "--save-dir",
        str(saved),
        "-o",
        str(now),
        "--summary-json",
        str(summary),
    )

    assert code == ExitCode.OK
    assert server.requests_to("/etag")[0]["if-none-match"] == '"v1"'
    assert server.requests_to("/dated")[0]["if-modified-since"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert "if-none-match" not in server.requests_to("/plain")[0]
    # A redirecting URL: the validators go with the first hop only.
    hop, after_hop = server.requests_to("/hop")[0], server.requests_to("/target")[0]
    assert hop["if-none-match"] == '"t1"' and "if-none-match" not in after_hop
    rows = rows_by_path(now, server)
    for path in ("/etag", "/dated"):
        row = rows[path]
        assert (row["status"], row["ok"], row["bytes"], row["change"]) == (304, True, 0, "same")
        assert row["saved_path"] == before[path]["saved_path"]
    assert rows["/etag"]["etag"] == '"v1"'
    # The server sent no Last-Modified with its 304: the previous one is kept for the next run.
    assert rows["/dated"]["last_modified"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert (rows["/plain"]["status"], rows["/plain"]["change"]) == (200, "same")
    assert (rows["/hop"]["status"], rows["/hop"]["bytes"]) == (200, len(b"target body"))
    for path, answer in (("/etag", "etag"), ("/dated", "dated"), ("/plain", "plain"), ("/hop", "target")):
        assert Path(str(rows[path]["saved_path"])).read_bytes() == server.answers[f"/{answer}"].body
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["not_modified"] == 2
    assert data["bytes_saved"] == before["/etag"]["bytes"] + before["/dated"]["bytes"] == 1010
    assert data["changes"]["same"] == 4 and data["missing"]["count"] == 0


def test_a_body_no_longer_on_disk_is_fetched_again_unconditionally(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/etag": Answer(200, b"the body", headers={"ETag": '"v1"'})}
    urls = url_file(tmp_path, server, ["/etag"])
    saved, previous, now = tmp_path / "saved", tmp_path / "previous.jsonl", tmp_path / "now.jsonl"
    assert run(urls, "-q", "--save-dir", str(saved), "-o", str(previous))[0] == ExitCode.OK
    os.unlink(rows_by_path(previous, server)["/etag"]["saved_path"])  # type: ignore[arg-type]

    assert run(urls, "-q", "--if-changed", str(previous), "--save-dir", str(saved), "-o", str(now))[0] == 0

    assert "if-none-match" not in server.requests_to("/etag")[1]
    row = rows_by_path(now, server)["/etag"]
    assert row["status"] == 200 and Path(str(row["saved_path"])).read_bytes() == b"the body"


def test_baseline_if_changed_and_resume_on_the_same_file(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {
        "/a": Answer(200, headers={"ETag": '"a"'}),
        "/b": Answer(200),
        "/c": Answer(200, headers={"ETag": '"c"'}),
    }
    state = tmp_path / "state.jsonl"
    assert run(url_file(tmp_path, server, ["/a", "/b"], "first.txt"), "-q", "-o", str(state))[0] == ExitCode.OK
    summary = tmp_path / "summary.json"
    file = str(state)

    code, _, _ = run(
        url_file(tmp_path, server, ["/a", "/b", "/c"]),
        *("-q", "--baseline", file, "--if-changed", file, "--resume", file, "--summary-json", str(summary)),
    )

    assert code == ExitCode.OK
    assert len(server.requests_to("/a")) == 1  # resumed: only /c was left to fetch
    rows = rows_by_path(state, server)
    assert sorted(rows) == ["/a", "/b", "/c"]
    assert rows["/c"]["change"] == "new" and rows["/a"]["change"] == ""
    data = json.loads(summary.read_text(encoding="utf-8"))
    # The URLs --resume skipped are in this run, not missing from it; the appended row is no baseline row.
    assert data["missing"] == {"count": 0, "urls": []}
    assert data["changes"]["new"] == 1 and data["baseline"]["rows"] == 2


# --- the pieces, as the library uses them -----------------------------------------------------------


def test_change_kinds_in_their_order() -> None:
    rules = ChangeRules()
    previous = _previous(status=200, total_ms=100.0)
    failing = _previous(status=None, error="dns", total_ms=100.0)
    assert classify_change(None, helpers.make_result(), rules) == "new"
    assert classify_change(failing, helpers.make_result(status=301), rules) == "fixed"
    assert classify_change(_previous(status=404), helpers.make_result(status=200), rules) == "fixed"
    assert classify_change(_previous(status=200), helpers.make_result(status=302), rules) == "status_changed"
    assert classify_change(previous, helpers.make_result(status=503, ok=False), rules) == "broken"
    assert (
        classify_change(previous, helpers.make_result(status=200, error="body_too_large", ok=False), rules) == "broken"
    )
    assert classify_change(previous, helpers.make_result(status=204), rules) == "status_changed"
    assert classify_change(_previous(status=404), helpers.make_result(status=410, ok=False), rules) == "status_changed"
    moved = helpers.make_result(final_url="https://example.com/elsewhere")
    assert classify_change(previous, moved, rules) == "status_changed"
    # Slower needs both: more than twice the time, and more than 250 ms more.
    assert classify_change(previous, helpers.make_result(total_ms=351.0), rules) == "slower"
    assert classify_change(previous, helpers.make_result(total_ms=349.0), rules) == "same"
    assert classify_change(_previous(total_ms=1000.0), helpers.make_result(total_ms=1900.0), rules) == "same"
    assert classify_change(previous, helpers.make_result(total_ms=351.0), ChangeRules(4.0, 250.0)) == "same"
    assert classify_change(failing, helpers.make_result(status=None, error="timeout", ok=False), rules) == "same"


def test_an_invalid_line_against_its_own_row_is_the_same(tmp_path: Path) -> None:
    """Its row has no final URL and the baseline stores it under its URL: `status_changed`."""
    lines = tmp_path / "urls.txt"
    lines.write_text("not a url\nftp://x/\n", encoding="utf-8")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert CliRunner().invoke(cli, [str(lines), "-q", "-o", str(first)]).exit_code == ExitCode.SOME_FAILED
    CliRunner().invoke(cli, [str(lines), "-q", "-o", str(second), "--baseline", str(first)])
    rows = [json.loads(line) for line in second.read_text(encoding="utf-8").splitlines()]
    assert [(row["error"], row["change"]) for row in rows] == [("invalid_url", "same")] * 2


def _previous(status: int | None = 200, error: str = "", total_ms: float = 10.0) -> PreviousRow:
    return PreviousRow(status, error, "https://example.com/", total_ms, 512, "", "", "")


def test_baseline_index_last_row_wins_old_exports_and_masked_urls(tmp_path: Path) -> None:
    old_export = dict(helpers.BASE_ROW)  # no etag/last_modified: an export older than 1.3
    rows = [
        {**old_export, "url": "https://user:***@example.com/a", "status": 500},
        {**old_export, "url": "https://user:***@example.com/a", "status": 404},
        {**old_export, "url": "https://example.com/b", "etag": 'W/"b"', "last_modified": "yesterday"},
        {**old_export, "url": "https://example.com/b", "status": None, "error": "cancelled"},
        {**old_export, "url": "https://example.com/c", "etag": '"bad\r\nX-Injected: 1"'},
        {**old_export, "url": "https://example.com/d", "etag": '"d"', "status": 404, "ok": False},
    ]
    with Baseline(write_rows(tmp_path / "previous.jsonl", rows)) as baseline:
        # This run's URL carries the secret; the row shows it masked: the same URL.
        found = baseline.get("https://user:secret@example.com/a")
        assert found is not None and found.status == 404 and found.etag == "" and found.conditions() == ()
        b = baseline.get("https://example.com/b")
        assert b is not None and b.status == 200  # the cancelled row was never a result
        targets = [
            Target(0, "https://example.com/b", "https://example.com/b"),
            Target(1, "https://example.com/c", "https://example.com/c"),
            Target(2, "https://example.com/d", "https://example.com/d"),  # a 404's validators: not worth keeping
            Target(3, "https://example.com/e", "https://example.com/e"),  # no row
            Target(4, "https://example.com/b", None, "invalid"),
        ]
        conditions = [t.conditions for t in with_conditions(targets, baseline, need_saved_file=False)]
        assert conditions == [(("If-None-Match", 'W/"b"'), ("If-Modified-Since", "yesterday")), (), (), (), ()]
        assert baseline.rows == 6 and baseline.skipped == 0
        baseline.mark_seen("https://example.com/b")
        assert baseline.missing() == (
            3,
            ["https://user:***@example.com/a", "https://example.com/c", "https://example.com/d"],
        )
    assert not os.path.exists(baseline._directory)  # the index is gone with the baseline


def test_library_use_and_the_summary_section(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/a": Answer(500), "/b": Answer(200)}
    urls = [f"{server.base_url}/a", f"{server.base_url}/b"]
    previous = write_rows(
        tmp_path / "previous.jsonl",
        [{**helpers.BASE_ROW, "url": url, "final_url": url, "status": 200} for url in [*urls, "https://gone/\x1b"]],
    )
    with Baseline(previous) as baseline:
        changes = Changes(baseline)
        stats = RunStats()
        for result in changes.track(fetch_all(urls, FetchConfig(workers=2))):
            stats.write(result)
        assert changes.counts["broken"] == 1 and changes.broken == [(urls[0], "200", "500")]
        console = Console(file=io.StringIO(), width=100, record=True)
        console.print(render_summary(stats, PoolAccounting(), FetchConfig(), changes))
        text = console.export_text()
    assert "Changes since baseline" in text
    assert "200 → 500" in text and urls[0] in text
    assert "https://gone/\\x1b" in text and "\x1b" not in text
    assert "missing" in text and "not modified" not in text


def test_a_missing_baseline_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read baseline"):
        Baseline(str(tmp_path / "nope.jsonl"))


def test_a_baseline_may_be_the_export_it_rolls_into(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/a": Answer(200)}
    urls = url_file(tmp_path, server, ["/a"])
    last = tmp_path / "last.jsonl"
    assert run(urls, "-q", "-o", str(last))[0] == ExitCode.OK
    server.answers["/a"] = Answer(503)

    assert run(urls, "-q", "--baseline", str(last), "-o", str(last))[0] == ExitCode.OK

    assert rows_by_path(last, server)["/a"]["change"] == "broken"  # read whole before -o truncated it


def test_rows_the_run_never_finished_get_no_change_but_are_not_missing(tmp_path: Path) -> None:
    previous = write_rows(tmp_path / "previous.jsonl", [helpers.BASE_ROW])
    with Baseline(previous) as baseline:
        changes = Changes(baseline)
        cancelled = helpers.make_result(status=None, ok=False, error="cancelled", total_ms=0.0)
        assert changes.annotate(cancelled).change == ""
        assert sum(changes.counts.values()) == 0 and changes.missing() == (0, [])


def test_only_reads_are_made_conditional(server: ScriptedServer, tmp_path: Path) -> None:
    server.answers = {"/etag": Answer(200, headers={"ETag": '"v1"'})}
    urls = url_file(tmp_path, server, ["/etag"])
    previous = tmp_path / "previous.jsonl"
    assert run(urls, "-q", "-o", str(previous))[0] == ExitCode.OK

    assert run(urls, "-q", "-X", "POST", "--if-changed", str(previous))[0] == ExitCode.OK

    assert "if-none-match" not in server.requests_to("/etag")[1]


def test_no_room_to_index_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = write_rows(tmp_path / "previous.jsonl", [helpers.BASE_ROW])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "no-such-directory"))
    with pytest.raises(InputError, match="cannot index baseline"):
        Baseline(previous)
