"""CSV / JSON / JSONL exporters: streaming, rows flushed within FLUSH_SECONDS, valid files however the run ends."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

from pooledfetch.errors import ExportError
from pooledfetch.results import FIELDS, Result
from pooledfetch.sink import FlushPace, Sink
from pooledfetch.text import printable

FORMATS = ("csv", "json", "jsonl")
STDOUT = "-"
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# OWASP's advice against CSV injection: a cell a spreadsheet would read as a formula gets a ' prefix.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def format_for(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if path == STDOUT:
        return "jsonl"
    extension = os.path.splitext(path)[1].lower()
    if extension not in _EXTENSIONS:
        raise ExportError(
            f"cannot tell the export format of {path!r}: use a .csv, .json, .jsonl or .ndjson name, or --format"
        )
    return _EXTENSIONS[extension]


def open_exporter(path: str, fmt: str, append: bool = False, input_names: Sequence[str] = ()) -> Sink:
    """Open the export now, so an unwritable path is reported before any URL is fetched.

    `append` (JSONL only, for --resume) adds rows to an existing file instead of replacing it.
    `input_names` name the values of each result's `input_row`, exported in front of the
    result fields (pooledfetch.inputs makes them unique and apart from the field names).
    """
    if path == STDOUT:
        stream: IO[str] = sys.stdout
        owned = False
    else:
        try:
            mode = "a" if append and fmt == "jsonl" else "w"
            stream = open(path, mode, encoding="utf-8", newline="", errors="backslashreplace")  # noqa: SIM115
        except OSError as exc:
            raise ExportError(f"cannot write export {path!r}: {exc.strerror}") from exc
        owned = True
    exporter = {"csv": CsvExporter, "json": JsonExporter, "jsonl": JsonlExporter}[fmt]
    return exporter(stream, path, owned, tuple(input_names))


def row_dict(result: Result, input_names: tuple[str, ...] = ()) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value and costs 3x as much per row.
    row = {name: getattr(result, name) for name in FIELDS}
    if input_names:
        return dict(zip(input_names, input_values(result, len(input_names)), strict=True)) | row
    return row


def input_values(result: Result, width: int) -> tuple[object, ...]:
    """The result's input row, exactly `width` values long (None fills a short one)."""
    values = result.input_row
    return values if len(values) == width else (*values, *(None,) * width)[:width]


class _FileExporter(Sink):
    keeps_rows = True

    def __init__(self, stream: IO[str], path: str, owned: bool, input_names: tuple[str, ...] = ()) -> None:
        self._stream = stream
        self._path = path
        self._owned = owned
        self._input_names = input_names
        self._closed = False
        # Set once a write has failed, or stdout's reader has gone: nothing more is written.
        self._stopped = False
        self._pace = FlushPace()
        # A terminal interprets what a server sent (colours, links, a cursor moved): JSON escapes
        # it anyway, and CSV cells on a terminal are shown escaped as the plain lines are.
        self._escape = printable if not owned and stream.isatty() else None
        try:
            self._guarded(self.begin)
        except ExportError:
            self.close()
            raise

    def begin(self) -> None:
        """Write whatever precedes the first row."""

    def end(self) -> None:
        """Write whatever follows the last row."""

    def write_row(self, result: Result) -> None:
        raise NotImplementedError

    def write(self, result: Result) -> None:
        if not self._stopped:
            self._guarded(lambda: self.write_row(result), flush=self._pace.due())

    def flush(self) -> None:
        if not self._closed and not self._stopped:
            self._guarded(None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._stopped:
                self._guarded(self.end)
        finally:
            if self._owned:
                try:
                    self._stream.close()
                except OSError:
                    pass  # the failing write above already raised the error worth reporting

    def _guarded(self, action: Callable[[], None] | None, flush: bool = True) -> None:
        try:
            if action is not None:
                action()
            if flush:
                self._stream.flush()
        except OSError as exc:
            self._stopped = True
            if isinstance(exc, BrokenPipeError) and not self._owned:
                # `pooledfetch urls -o - | head`: stdout's reader is gone; stop writing to it and
                # keep the run's other exports, as the plain lines do.
                return
            # Raised once: the run decides whether to go on with its other outputs.
            raise ExportError(f"cannot write export {self._path!r}: {exc.strerror or exc}") from exc


class JsonlExporter(_FileExporter):
    def write_row(self, result: Result) -> None:
        self._stream.write(json.dumps(row_dict(result, self._input_names)) + "\n")


class JsonExporter(_FileExporter):
    """A JSON array streamed a row at a time; `close` writes the closing bracket."""

    _first = True

    def begin(self) -> None:
        self._stream.write("[")

    def write_row(self, result: Result) -> None:
        separator = "\n" if self._first else ",\n"
        self._stream.write(separator + json.dumps(row_dict(result, self._input_names)))
        # Only once the row is written: a row lost to an interrupt must not leave "[,".
        self._first = False

    def end(self) -> None:
        self._stream.write("\n]\n")


class CsvExporter(_FileExporter):
    def begin(self) -> None:
        self._writer = csv.writer(self._stream)
        # Column names come from the input's own header line: as untrusted as any cell.
        self._write_cells([*map(csv_cell, self._input_names), *FIELDS])

    def write_row(self, result: Result) -> None:
        cells = [csv_cell(getattr(result, name)) for name in FIELDS]
        if self._input_names:
            cells[:0] = [_input_cell(value) for value in input_values(result, len(self._input_names))]
        self._write_cells(cells)

    def _write_cells(self, cells: list[str]) -> None:
        self._writer.writerow(cells if self._escape is None else map(self._escape, cells))


def _input_cell(value: object) -> str:
    # A JSONL input's array or object goes in a cell as its JSON text.
    return csv_cell(json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value)


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return str(value)
