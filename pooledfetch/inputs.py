"""URLs from a column of a CSV or TSV file or a field of JSON Lines, with each row carried along.

Every reader yields the `Target` the plain-line reader does, with the row's values in
`input_row`, so the exports can hand the user's spreadsheet back with result columns added.
Rows are read one at a time: a 10-million-row file is never held in memory.

- The format is `--input-format`, else the named files' extension (.csv, .tsv, .jsonl, .ndjson;
  anything else is a plain list). stdin takes the format of the files named with it, or is a
  plain list. All the inputs of one run share one format.
- CSV/TSV: the first row is the header, and every input must have the same header. JSONL: the
  first non-blank line must be an object; its keys name the columns, for every later object and
  file (a key it lacks is left out, a key missing from a later object is null).
- The URL column: `--column NAME` (exact, then in any case) or a 1-based number (CSV/TSV), else
  the column named `url` in any case. A header without it is an InputError (exit 2).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import BinaryIO, TextIO

from pooledfetch.config import FetchConfig
from pooledfetch.errors import InputError
from pooledfetch.results import FIELDS
from pooledfetch.sources import (
    STDIN,
    LineCounter,
    Target,
    count_lines,
    decode_line,
    iter_targets,
    normalize_url,
    read_lines,
    repeated,
    strip_line,
    utf16,
)
from pooledfetch.text import mask_credentials

LINES = "lines"
TABLE_FORMATS = ("csv", "tsv", "jsonl")
FORMATS = (*TABLE_FORMATS, LINES)
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_DIALECTS = {"csv": csv.excel, "tsv": csv.excel_tab}
# Input columns clashing with a result field (or with each other) get this prefix in exports.
CLASH_PREFIX = "input_"
# Bytes that were not UTF-8, kept by the surrogateescape decoding of CSV/TSV.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LISTED_COLUMNS = 20


@dataclass(frozen=True, slots=True)
class _BadRow:
    """A row that cannot be read as the format says; it still becomes one (invalid) result."""

    raw: str
    reason: str


_Row = list[str] | dict[str, object] | _BadRow


def guess_format(paths: Sequence[str], explicit: str | None) -> str:
    """The input format: the explicit one, else the one the named files' extensions agree on."""
    if explicit:
        return explicit
    kinds = {_EXTENSIONS.get(os.path.splitext(path)[1].lower(), LINES) for path in paths if path != STDIN}
    if len(kinds) > 1:
        raise InputError(
            f"the inputs mix formats ({', '.join(sorted(kinds))}): give inputs of one kind, or --input-format"
        )
    return kinds.pop() if kinds else LINES


class Input:
    """The run's inputs: the columns they bring, their targets, and a counter for a progress total.

    Opening a table reads its header (and every named file's) at once, so a missing column is
    reported before anything is fetched.
    """

    def __init__(self, paths: Sequence[str], fmt: str | None = None, column: str | None = None) -> None:
        self.paths = tuple(paths)
        self.format = guess_format(self.paths, fmt)
        self.header: tuple[str, ...] = ()
        self._url_column = 0
        self._column = column
        if self.format == LINES:
            if column is not None:
                raise InputError("--column needs a CSV, TSV or JSONL input (a plain list has one URL per line)")
            return
        if self.format not in TABLE_FORMATS:
            raise InputError(f"unknown input format {self.format!r}: use one of {', '.join(FORMATS)}")
        if not self.paths:
            raise InputError(f"--input-format {self.format} needs an input file, or '-' for stdin")
        self._rows: Iterator[_Row] = self._csv_rows() if self.format != "jsonl" else self._jsonl_rows()
        first = next(self._rows, None)
        if first is not None:
            self._rows = chain((first,), self._rows)
        if self.format != "jsonl":
            for path in self.paths[1:]:
                if path != STDIN:  # stdin's header is checked when it is reached
                    with _text(path) as stream:
                        self._check_header(_csv_header(_csv_records(stream, self.format), path), path)

    @property
    def streams(self) -> bool:
        """True when an input can keep its reader waiting for the next line: stdin or a path that
        is not a regular file (a pipe, a FIFO, a terminal)."""
        return any(_streams(path) for path in self.paths)

    @property
    def interactive(self) -> bool:
        """True when stdin is an input and a terminal: its lines come as someone types them."""
        return STDIN in self.paths and sys.stdin is not None and sys.stdin.isatty()

    @property
    def names(self) -> tuple[str, ...]:
        """The input's column names as the exports write them (none for a plain list)."""
        return export_names(self.header)

    def targets(self, config: FetchConfig) -> Iterator[Target]:
        if self.format == LINES:
            return iter_targets(read_lines(self.paths), config)
        return self._targets(config)

    def counter(self) -> LineCounter:
        """A background count of the URL lines or data rows, for the progress total."""
        if self.format == LINES:
            return LineCounter(self.paths)
        if self.format == "jsonl":
            return LineCounter(self.paths, partial(count_lines, comments=False))
        return LineCounter(self.paths, partial(_count_csv_rows, self.format))

    def _targets(self, config: FetchConfig) -> Iterator[Target]:
        width = len(self.header)
        column = self._url_column
        seen: set[bytes] = set()
        index = 0
        for row in self._rows:
            if isinstance(row, _BadRow):
                blank = ("",) * width if self.format != "jsonl" else (None,) * width
                yield Target(index, row.raw, None, row.reason, input_row=blank)
                index += 1
                continue
            values: tuple[object, ...]
            if isinstance(row, dict):
                values = tuple(row.get(name) for name in self.header)
            else:
                values = tuple(row[:width]) if len(row) >= width else (*row, *("",) * (width - len(row)))
            cell = values[column]
            raw = strip_line(cell) if isinstance(cell, str) else ("" if cell is None else json.dumps(cell))
            if config.dedupe and raw and repeated(raw, seen):
                index += 1
                continue
            url, reason = self._url(cell, raw, config)
            if isinstance(cell, str) and not config.show_credentials and (masked := mask_credentials(cell)) != cell:
                # The URL column goes out with the row's other columns: as masked as its `url`.
                values = (*values[:column], masked, *values[column + 1 :])
            yield Target(index, raw, url, reason, input_row=values)
            index += 1

    def _url(self, cell: object, raw: str, config: FetchConfig) -> tuple[str | None, str | None]:
        name = self.header[self._url_column]
        if cell is not None and not isinstance(cell, str):
            return None, f"the {name!r} field is not a string"
        if not raw:
            return None, f"no URL in column {name!r}"
        if _UNDECODABLE.search(raw):
            return None, "URL is not valid UTF-8"
        return normalize_url(raw, config.base_url, config.default_scheme)

    def _csv_rows(self) -> Iterator[_Row]:
        for path in self.paths:
            with _text(path) as stream:
                records = _csv_records(stream, self.format)
                header = _csv_header(records, path)
                if not self.header:
                    self._set_header(header, path)
                else:
                    self._check_header(header, path)
                yield from records

    def _jsonl_rows(self) -> Iterator[_Row]:
        for line in read_lines(self.paths):
            text, problem = decode_line(line)
            if not text:
                continue
            row: _Row
            if problem:
                row = _BadRow(text, problem)
            else:
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    row = _BadRow(text, f"line is not JSON: {exc}")
                else:
                    row = value if isinstance(value, dict) else _BadRow(text, "line is not a JSON object")
            if not self.header:
                if not isinstance(row, dict):
                    source = _source(self.paths[0])
                    raise InputError(f"the first line of {source} is not a JSON object: its keys name the columns")
                self._set_header(tuple(row), self.paths[0])
            yield row

    def _set_header(self, header: tuple[str, ...], path: str) -> None:
        self._url_column = _url_column(header, self._column, self.format, path)
        self.header = header

    def _check_header(self, header: tuple[str, ...], path: str) -> None:
        if header != self.header:
            raise InputError(
                f"{_source(path)} has other columns than {_source(self.paths[0])}: every input must have the same "
                f"header ({_listing(header)})"
            )


def export_names(header: Sequence[str]) -> tuple[str, ...]:
    """The input's column names, unique and apart from the result fields (`status` → `input_status`)."""
    taken = set(FIELDS)
    names = []
    for position, name in enumerate(header, 1):
        name = name or f"column_{position}"
        while name in taken:
            name = CLASH_PREFIX + name
        taken.add(name)
        names.append(name)
    return tuple(names)


def _url_column(header: tuple[str, ...], column: str | None, fmt: str, path: str) -> int:
    source = _source(path)
    if column is None:
        for position, name in enumerate(header):
            if name.strip().lower() == "url":
                return position
        raise InputError(f"{source} has no column named 'url': choose one with --column ({_listing(header)})")
    if column in header:
        return header.index(column)
    for position, name in enumerate(header):
        if name.strip().casefold() == column.strip().casefold():
            return position
    if fmt != "jsonl" and column.isascii() and column.isdigit():
        if 1 <= int(column) <= len(header):
            return int(column) - 1
        raise InputError(f"--column {column}: {source} has {len(header)} columns ({_listing(header)})")
    raise InputError(f"--column {column!r}: {source} has no such column ({_listing(header)})")


def _listing(header: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in header[:_LISTED_COLUMNS])
    more = f", … {len(header) - _LISTED_COLUMNS} more" if len(header) > _LISTED_COLUMNS else ""
    return f"its columns are: {shown}{more}" if header else "it has no columns"


def _streams(path: str) -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode if path == STDIN else os.stat(path).st_mode
    except (AttributeError, OSError, ValueError):
        # A missing file is reported when it is reached; a stdin with no file behind it streams.
        return path == STDIN
    return not stat.S_ISREG(mode)


def _source(path: str) -> str:
    return "stdin" if path == STDIN else repr(path)


@contextmanager
def _text(path: str) -> Iterator[TextIO]:
    """A CSV/TSV input as text: a BOM dropped, line ends left to the csv module, bad bytes kept."""
    if path == STDIN:
        binary: BinaryIO = sys.stdin.buffer
    else:
        try:
            binary = open(path, "rb")  # noqa: SIM115 - closed with the wrapper below
        except OSError as exc:
            raise InputError(f"cannot read input file {path!r}: {exc.strerror}") from exc
    stream = io.TextIOWrapper(binary, encoding=_encoding(binary), errors="surrogateescape", newline="")
    try:
        yield stream
    finally:
        if path == STDIN:
            stream.detach()  # closing the wrapper would close stdin itself
        else:
            stream.close()


def _csv_records(stream: TextIO, fmt: str) -> Iterator[list[str] | _BadRow]:
    """The rows of a CSV/TSV stream; blank lines are skipped, as csv.DictReader does."""
    reader = csv.reader(stream, _DIALECTS[fmt])
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _BadRow("", f"malformed {fmt.upper()} row: {exc}")
            continue
        if row:
            yield row


def _csv_header(records: Iterator[list[str] | _BadRow], path: str) -> tuple[str, ...]:
    header = next(records, None)
    if isinstance(header, _BadRow):
        raise InputError(f"{_source(path)} has a header row that cannot be read: {header.reason}")
    if header is None:
        raise InputError(f"{_source(path)} has no header row: a CSV or TSV input starts with its column names")
    return tuple(header)


def _encoding(binary: BinaryIO) -> str:
    # UTF-8, its BOM dropped; or UTF-16, as Windows PowerShell writes a file.
    return "utf-16" if utf16(binary) else "utf-8-sig"


def _count_csv_rows(fmt: str, binary: BinaryIO) -> int:
    stream = io.TextIOWrapper(binary, encoding=_encoding(binary), errors="surrogateescape", newline="")
    try:
        return max(sum(1 for _ in _csv_records(stream, fmt)) - 1, 0)
    finally:
        stream.detach()  # the caller closes the file
