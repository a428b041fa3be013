"""URLs from CSV, TSV and JSONL inputs with their columns carried into every export, and --keep-order.

Real runs against the demo server on loopback, through the CLI (CliRunner) and the library API.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import make_result
from hostile import cli_command, offline_env
from hypothesis import given
from hypothesis import strategies as st
from test_cli import run
from test_properties import SETTINGS

from pooledfetch import results as rc
from pooledfetch.config import FetchConfig
from pooledfetch.demo import DemoServer
from pooledfetch.engine import fetch_all
from pooledfetch.errors import ExitCode, InputError
from pooledfetch.inputs import Input
from pooledfetch.results import FIELDS
from pooledfetch.sources import Target

BOM = "\ufeff"


def spreadsheet(base: str) -> tuple[list[str], list[list[str]]]:
    """A header and rows a spreadsheet would export: quoted commas, an embedded line break, a
    formula, an empty URL cell, and a `status` column clashing with a result field."""
    header = ["Company", "URL", "status", "Notes"]
    rows = [
        ["Slow, Inc.", f"{base}/delay/0.4", "active", "first"],
        ["Acme, Ltd.", f"{base}/status/404", "lapsed", "two\r\nlines"],
        ["Nobody", "", "active", "=SUM(A1:A2)"],
        ["Bytes", f"{base}/bytes/7", "", ""],
        ["Relative", "/no/base", "x", "-1"],
    ]
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    with path.open("w", encoding="utf-8", newline="") as stream:
        stream.write(BOM)
        csv.writer(stream, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])
    return str(path)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_csv_columns_come_back_in_every_export_in_input_order(demo_server: DemoServer, tmp_path: Path) -> None:
    header, rows = spreadsheet(demo_server.base_url)
    source = write_csv(tmp_path / "companies.csv", header, rows)
    out = {fmt: tmp_path / f"out.{fmt}" for fmt in ("csv", "json", "jsonl")}

    code, _, _ = run(source, "--keep-order", "-w", "4", "-q", *(f"-o{path}" for path in out.values()))

    assert code == ExitCode.SOME_FAILED  # the empty and the relative URL
    names = ["Company", "URL", "input_status", "Notes"]
    with out["csv"].open(encoding="utf-8", newline="") as stream:
        table = list(csv.reader(stream))
    assert table[0] == [*names, *FIELDS]
    assert len(table) == len(rows) + 1
    for position, (row, expected) in enumerate(zip(table[1:], rows, strict=True)):
        guarded = [("'" + cell if cell.startswith(("=", "-")) else cell) for cell in expected]
        assert row[: len(names)] == guarded  # the formula guard applies to input cells too
        assert row[len(names) + FIELDS.index("index")] == str(position)  # input order, data rows only
    for fmt in ("json", "jsonl"):
        exported = json.loads(out[fmt].read_text()) if fmt == "json" else read_jsonl(out[fmt])
        assert [list(item)[: len(names) + 1] for item in exported] == [[*names, "index"]] * len(rows)
        assert [[item[name] for name in names] for item in exported] == rows
        assert [item["index"] for item in exported] == list(range(len(rows)))
    by_company = {item["Company"]: item for item in read_jsonl(out["jsonl"])}
    assert by_company["Slow, Inc."]["status"] == 200
    assert by_company["Acme, Ltd."]["status"] == 404
    assert by_company["Nobody"]["error"] == rc.INVALID_URL
    assert by_company["Relative"]["error"] == rc.INVALID_URL
    assert by_company["Bytes"]["bytes"] == 7


def test_tsv_by_column_number_and_short_rows(demo_server: DemoServer, tmp_path: Path) -> None:
    base = demo_server.base_url
    source = tmp_path / "pages.tsv"
    source.write_text(f"id\tpage\tnote\n1\t{base}/get\ta, b\n2\t{base}/status/500\n", encoding="utf-8")

    code, _, _ = run(str(source), "--column", "2", "-q", "-o", str(tmp_path / "out.jsonl"))

    rows = sorted(read_jsonl(tmp_path / "out.jsonl"), key=lambda row: row["index"])
    assert code == ExitCode.OK
    assert [(row["id"], row["page"], row["note"], row["status"]) for row in rows] == [
        ("1", f"{base}/get", "a, b", 200),
        ("2", f"{base}/status/500", "", 500),  # a missing trailing cell is empty
    ]


def test_jsonl_by_field_keeps_json_values(demo_server: DemoServer, tmp_path: Path) -> None:
    base = demo_server.base_url
    source = tmp_path / "items.jsonl"
    lines = [
        {"link": f"{base}/get", "rank": 1, "tags": ["a", "b"], "meta": {"x": None}},
        "not json",
        [1, 2],
        {"link": 42, "rank": 2},
        {"rank": 3, "other": "dropped"},
        {"link": f"{base}/status/204", "rank": 4.5, "tags": [], "meta": {}},
    ]
    source.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")

    code, _, _ = run(
        str(source), "--column", "link", "-q", "-o", str(tmp_path / "o.jsonl"), "-o", str(tmp_path / "o.csv")
    )

    assert code == ExitCode.SOME_FAILED
    rows = sorted(read_jsonl(tmp_path / "o.jsonl"), key=lambda row: row["index"])
    assert [row["index"] for row in rows] == list(range(6))  # the blank line is no row
    assert [list(row)[:4] for row in rows] == [["link", "rank", "tags", "meta"]] * 6
    assert rows[0]["tags"] == ["a", "b"] and rows[0]["meta"] == {"x": None} and rows[0]["status"] == 200
    assert [rows[i]["error_detail"] for i in (1, 2)] == ["line is not JSON: Expecting value: line 1 column 1 (char 0)",
                                                          "line is not a JSON object"]  # fmt: skip
    assert rows[3]["link"] == 42 and rows[3]["error_detail"] == "the 'link' field is not a string"
    assert rows[4]["rank"] == 3 and rows[4]["error"] == rc.INVALID_URL and "other" not in rows[4]
    assert rows[5]["rank"] == 4.5 and rows[5]["status"] == 204
    with (tmp_path / "o.csv").open(encoding="utf-8", newline="") as stream:
        table = {row["rank"]: row for row in csv.DictReader(stream)}
    assert table["1"]["tags"] == '["a", "b"]' and table["1"]["meta"] == '{"x": null}'  # JSON text in a cell
    assert table["4.5"]["tags"] == "[]"


def test_missing_column_is_a_usage_error_before_anything_is_fetched(demo_server: DemoServer, tmp_path: Path) -> None:
    header, rows = spreadsheet(demo_server.base_url)
    table = write_csv(tmp_path / "t.csv", ["Company", "Website", "status", "Notes"], rows)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"href": f"{demo_server.base_url}/get", "n": 1}) + "\n")
    export = tmp_path / "out.csv"

    for args, columns in [
        ((table,), "'Company', 'Website', 'status', 'Notes'"),  # no `url` column
        ((table, "--column", "site"), "'Company', 'Website', 'status', 'Notes'"),
        ((table, "--column", "9"), "'Company', 'Website', 'status', 'Notes'"),
        ((str(jsonl), "--column", "link"), "'href', 'n'"),
        ((str(jsonl),), "'href', 'n'"),
    ]:
        code, _, err = run(*args, "-o", str(export))
        assert code == ExitCode.USAGE, args
        assert f"its columns are: {columns}" in err and "Traceback" not in err
    assert demo_server.requests == 0
    assert not export.exists()


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"a.txt": "http://127.0.0.1/\n"}, ("--column", "url"), "--column needs a CSV, TSV or JSONL input"),
        ({"a.csv": "url\nx\n", "b.txt": "x\n"}, (), "the inputs mix formats (csv, lines)"),
        ({"a.csv": "url\nx\n", "b.csv": "url,name\nx,y\n"}, (), "'b.csv' has other columns than 'a.csv'"),
        ({"a.csv": ""}, (), "'a.csv' has no header row"),
        # It said "has no header row": the csv module's field size limit is what stops it.
        ({"a.csv": "url" + "x" * 200_000 + "\nhttp://a.test/\n"}, (), "header row that cannot be read: malformed"),
        ({"a.jsonl": "[1]\n"}, (), "the first line of 'a.jsonl' is not a JSON object"),
        ({"a.txt": "x\n"}, ("--reorder-window", "5"), "--reorder-window needs --keep-order"),
    ],
)
def test_bad_table_inputs_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).write_text(text, encoding="utf-8")
    code, _, err = run(*files, *args)
    assert code == ExitCode.USAGE
    assert message in err


def test_stdin_with_other_columns_keeps_the_rows_of_the_urls_already_fetched(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    """stdin's header is read only when the run reaches it: the file's URLs were fetched, and their
    rows were lost to the error (an empty export, no summary)."""
    base = demo_server.base_url
    first = tmp_path / "a.csv"
    first.write_text(f"name,url\nA,{base}/get\nB,{base}/bytes/3\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, _, err = run(str(first), "-", "-q", "-o", str(out), input=b"q\n1\n")
    assert code == ExitCode.USAGE
    assert "stdin has other columns than" in err and "Traceback" not in err
    assert sorted(row["index"] for row in read_jsonl(out)) == [0, 1]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
@pytest.mark.parametrize("name", ["urls.txt", "urls.csv"])
def test_utf16_inputs_are_read_as_text(demo_server: DemoServer, tmp_path: Path, encoding: str, name: str) -> None:
    """A file with a UTF-16 byte order mark (Windows PowerShell's `>`) gave N+1 invalid_url rows
    for N lines ("contains control characters")."""
    base = demo_server.base_url
    lines = (
        ["url", f"{base}/get", f"{base}/bytes/3"]
        if name.endswith(".csv")
        else [f"{base}/get", "# c", f"{base}/bytes/3"]
    )
    path = tmp_path / name
    text = "\r\n".join(lines)
    # "utf-16" writes the byte order mark itself (little-endian here); big-endian is given one.
    path.write_bytes(text.encode("utf-16") if encoding == "utf-16" else ("\ufeff" + text).encode(encoding))
    out = tmp_path / "out.jsonl"
    code, _, err = run(str(path), "-q", "-o", str(out))
    assert code == ExitCode.OK, err
    assert sorted((row["index"], row["status"], row["bytes"]) for row in read_jsonl(out))[1] == (1, 200, 3)
    assert len(read_jsonl(out)) == 2


def test_column_names_clashing_with_result_fields_get_a_prefix(tmp_path: Path) -> None:
    source = tmp_path / "t.csv"
    source.write_text("url,status,input_status,,error\n", encoding="utf-8")
    assert Input([str(source)]).names == ("input_url", "input_status", "input_input_status", "column_4", "input_error")


def test_stdin_with_input_format_and_several_files_share_one_header(demo_server: DemoServer, tmp_path: Path) -> None:
    base = demo_server.base_url
    first = tmp_path / "a.csv"
    first.write_text(f"name,url\nA,{base}/get\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    code, _, _ = run(str(first), "-", "-q", "-o", str(out), input=f"name,url\r\nB,{base}/bytes/3\r\n".encode())
    assert code == ExitCode.OK
    rows = sorted(read_jsonl(out), key=lambda row: row["index"])
    assert [(row["index"], row["name"], row["bytes"]) for row in rows] == [(0, "A", rows[0]["bytes"]), (1, "B", 3)]

    code, _, _ = run("--input-format", "csv", "-q", "-o", str(out), input=f"{BOM}name,url\nC,{base}/get\n".encode())
    assert code == ExitCode.OK
    assert [(row["name"], row["status"]) for row in read_jsonl(out)] == [("C", 200)]


def test_resume_skips_the_finished_rows_of_a_csv_input(demo_server: DemoServer, tmp_path: Path) -> None:
    header, rows = spreadsheet(demo_server.base_url)
    source = write_csv(tmp_path / "t.csv", header, rows)
    state = tmp_path / "state.jsonl"
    run(source, "-q", "--resume", str(state))
    fetched = demo_server.requests

    run(source, "-q", "--resume", str(state))

    assert demo_server.requests == fetched  # nothing fetched twice
    kept = read_jsonl(state)
    assert sorted(row["index"] for row in kept) == list(range(len(rows)))
    assert all(list(row)[:4] == ["Company", "URL", "input_status", "Notes"] for row in kept)


@pytest.mark.parametrize("shown", [False, True])
def test_the_url_column_of_a_table_is_masked_like_the_url(demo_server: DemoServer, tmp_path: Path, shown: bool) -> None:
    """`url` was masked while the input's own URL column carried the password into every export."""
    line = demo_server.base_url.replace("http://", "http://alice:s3cret@") + "/get"
    source = tmp_path / "t.csv"
    source.write_text(f"url,note\n{line},x\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    code, _, _ = run(str(source), "-q", "-o", str(out), *(["--show-credentials"] if shown else []))
    assert code == ExitCode.OK
    assert ("s3cret" in out.read_text(encoding="utf-8")) is shown


def test_progress_total_counts_data_rows_not_lines(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text('url,note\r\nhttp://a.test/,"x\r\ny\r\nz"\r\n\r\nhttp://b.test/,\r\n', encoding="utf-8")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"url": "http://a.test/"}\n# not a comment here: a row\n\n{"url": "x"}\n', encoding="utf-8")
    for path, rows in ((table, 2), (jsonl, 3)):
        source = Input([str(path)])
        assert sum(1 for _ in source.targets(FetchConfig())) == rows
        counter = source.counter()
        deadline = time.monotonic() + 10
        while counter.total is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter.total == rows


def test_input_rows_survive_pickling() -> None:
    # A cluster sends Targets to worker processes and gets Results back.
    target = Target(3, "http://a.test/", "http://a.test/", None, (("If-None-Match", '"v1"'),), ("x", 1, None, ["y"]))
    result = make_result(input_row=target.input_row, worker="tcp://127.0.0.1:1", etag='"v2"', conn_reused=True)
    assert pickle.loads(pickle.dumps(target)) == target
    assert pickle.loads(pickle.dumps(result)) == result


def test_dedupe_on_a_table_skips_repeated_urls(tmp_path: Path) -> None:
    source = tmp_path / "t.csv"
    source.write_text("url,n\nhttp://a.test/,1\nhttp://a.test/,2\nhttp://b.test/,3\n", encoding="utf-8")
    targets = list(Input([str(source)]).targets(FetchConfig(dedupe=True)))
    assert [(target.index, target.input_row) for target in targets] == [
        (0, ("http://a.test/", "1")),
        (2, ("http://b.test/", "3")),
    ]


def with_invalid_lines(base: str, count: int) -> list[str]:
    """A slow first URL, then `count` fast ones with an invalid line every fifth."""
    return [f"{base}/delay/1"] + [f"{base}/get" if i % 5 else "not a url" for i in range(1, count + 1)]


def test_keep_order_holds_at_most_the_window(demo_server: DemoServer) -> None:
    window = 4
    lines = with_invalid_lines(demo_server.base_url, 30)
    results = fetch_all(lines, FetchConfig(workers=8, keep_order=True, reorder_window=window))

    first = next(results)
    # Nothing was taken past the window while the slow first URL was out: the server saw the
    # slow one and the valid ones among the next window - 1, so fewer results were ever held.
    valid_in_window = sum(1 for line in lines[:window] if line != "not a url")
    assert (first.index, first.status) == (0, 200)
    assert demo_server.requests == valid_in_window
    rest = list(results)
    assert [result.index for result in rest] == list(range(1, len(lines)))
    assert [result.error for result in rest] == ["" if line != "not a url" else rc.INVALID_URL for line in lines[1:]]


def test_keep_order_when_cancelled_gives_every_row_in_order(demo_server: DemoServer) -> None:
    lines = with_invalid_lines(demo_server.base_url, 40)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()

    results = list(fetch_all(lines, FetchConfig(workers=2, keep_order=True, reorder_window=6), cancel=cancel))

    assert [result.index for result in results] == list(range(len(lines)))
    assert results[0].status == 200  # finished within the grace period
    assert results[-1].error == rc.CANCELLED
    assert demo_server.requests < len(lines) // 2


def test_keep_order_with_a_per_host_limit_sends_and_writes_in_input_order(demo_server: DemoServer) -> None:
    lines = with_invalid_lines(demo_server.base_url, 12)
    config = FetchConfig(workers=4, keep_order=True, reorder_window=3, per_host_concurrency=2)
    assert [result.index for result in fetch_all(lines, config)] == list(range(len(lines)))


def test_keep_order_ctrl_c_writes_every_row_in_input_order(demo_server: DemoServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(with_invalid_lines(demo_server.base_url, 200)) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    process = subprocess.Popen(
        [cli_command(), str(urls), "--keep-order", "-w", "4", "-q", "-o", str(out)],
        env=offline_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while demo_server.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)

    assert process.wait(30) == ExitCode.INTERRUPTED
    with out.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["index"] for row in rows] == [str(index) for index in range(201)]
    assert rows[0]["status"] == "200" and rows[-1]["error"] == rc.CANCELLED


def test_input_error_for_an_unreadable_table(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input file"):
        Input([str(tmp_path / "missing.csv")])


cells = st.text(max_size=12)


@SETTINGS
@given(rows=st.lists(st.tuples(cells, cells, cells), max_size=12), bom=st.booleans(), crlf=st.booleans())
def test_every_csv_row_is_one_target_with_its_cells_unchanged(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, str]], bom: bool, crlf: bool
) -> None:
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        stream.write(BOM if bom else "")
        csv.writer(stream, lineterminator="\r\n" if crlf else "\n").writerows([("url", "a", "b"), *rows])

    targets = list(Input([str(path)]).targets(FetchConfig()))

    assert [target.index for target in targets] == list(range(len(rows)))
    assert [target.input_row for target in targets] == rows
    assert all((target.url is None) != (target.invalid_reason is None) for target in targets)


def test_only_inputs_that_can_keep_the_reader_waiting_are_read_ahead(tmp_path: Path) -> None:
    """A FIFO (like stdin from a pipe) is read on a thread of its own; a regular file is not."""
    listed = tmp_path / "urls.txt"
    listed.write_text("http://127.0.0.1/\n", encoding="utf-8")
    fifo = tmp_path / "urls.fifo"
    os.mkfifo(fifo)
    assert not Input([str(listed)]).streams
    assert Input([str(listed), str(fifo)]).streams
    assert not Input([str(tmp_path / "missing.txt")]).streams  # reported when reached
