"""Re-runs: a previous run's JSONL export as a baseline to diff against (`--baseline`) and as the
source of validators for conditional requests (`--if-changed`).

The export is indexed by URL in a temporary sqlite3 database on disk, streamed a batch at a
time, so a baseline of millions of rows keeps memory flat. URLs are compared in the form rows
show them (credentials masked), as `--resume` compares them; the last row for a URL wins;
rows the previous run never finished (`cancelled`, `interrupted`) are left out, as `--resume`
leaves them out. A line that is not a result row (cut short by a kill, say) is skipped and
counted; a file whose first row is not a result row is not a baseline at all (exit 2).

A `Baseline` is safe to share between threads (one lock around its one connection), but it is
meant for the consuming thread: `with_conditions` reads it as targets are submitted and
`Changes.track` as results are consumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pooledfetch.errors import InputError
from pooledfetch.results import CANCELLED, INTERRUPTED, Result
from pooledfetch.resume import url_key
from pooledfetch.sink import Closing
from pooledfetch.sources import Target
from pooledfetch.stats import human_bytes

NEW = "new"
FIXED = "fixed"
BROKEN = "broken"
STATUS_CHANGED = "status_changed"
SLOWER = "slower"
SAME = "same"
# In the order they are tried: a row gets the first that applies.
CHANGE_KINDS = (NEW, FIXED, BROKEN, STATUS_CHANGED, SLOWER, SAME)

DEFAULT_SLOWER_RATIO = 2.0
DEFAULT_SLOWER_MS = 250.0
MISSING_LISTED = 10
BROKEN_LISTED = 5
NOT_MODIFIED = 304

_UNFINISHED = (CANCELLED, INTERRUPTED)
_BATCH = 5000
# A validator with a line break or NUL would be refused by http.client (or worse, split a header).
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x1f\x7f]")
_COLUMNS = "status, error, final_url, total_ms, bytes, etag, last_modified, saved_path"


@dataclass(frozen=True, slots=True)
class PreviousRow:
    """What the baseline row for a URL says, as far as comparing and re-fetching needs."""

    status: int | None
    error: str
    final_url: str
    total_ms: float
    bytes: int
    etag: str
    last_modified: str
    saved_path: str

    @property
    def failed(self) -> bool:
        """An error, or an HTTP error status: the failing side of ok/failing."""
        return bool(self.error) or self.status is None or self.status >= 400

    @property
    def outcome(self) -> str:
        """The status, or the error class when there was none: what a summary shows."""
        return self.error or str(self.status)

    def conditions(self) -> tuple[tuple[str, str], ...]:
        """The conditional-request headers its validators allow (none for a value unsafe to send).

        Only a 2xx is worth keeping: a 304 to the validators of a 404 would hide that it still fails.
        """
        if self.error or self.status is None or not 200 <= self.status < 300:
            return ()
        pairs = (("If-None-Match", self.etag), ("If-Modified-Since", self.last_modified))
        return tuple((name, value) for name, value in pairs if value and not _BAD_HEADER_VALUE.search(value))


class Baseline(Closing):
    """A previous JSONL export, indexed by URL in a temporary sqlite3 database (removed on close)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows = 0  # result rows read (repeats of a URL included)
        self.skipped = 0  # lines that were not result rows
        self._lock = threading.Lock()
        self._directory = ""
        try:
            self._directory = tempfile.mkdtemp(prefix="pooledfetch-baseline-")
            # check_same_thread=False: the lock serialises use, whichever thread pulls the targets.
            self._db = sqlite3.connect(os.path.join(self._directory, "baseline.sqlite3"), check_same_thread=False)
            # A throwaway index: no journal, no fsync; a small page cache keeps RSS flat.
            self._db.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -8192;"
                "PRAGMA locking_mode = EXCLUSIVE;"
                "CREATE TABLE rows (url TEXT PRIMARY KEY, status INTEGER, error TEXT, final_url TEXT,"
                " total_ms REAL, bytes INTEGER, etag TEXT, last_modified TEXT, saved_path TEXT,"
                " seen INTEGER NOT NULL DEFAULT 0)"
            )
            self._index()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise InputError(f"cannot index baseline {path!r} in {tempfile.gettempdir()!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _index(self) -> None:
        try:
            stream = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise InputError(f"cannot read baseline {self.path!r}: {exc.strerror or exc}") from exc
        batch: list[tuple[Any, ...]] = []
        first = True
        insert = f"INSERT OR REPLACE INTO rows (url, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        try:
            with stream, self._db:
                for number, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    row = _parse(line)
                    if row is None:
                        if first:
                            raise InputError(
                                f"baseline {self.path!r} is not a JSON Lines export of pooledfetch"
                                f" (line {number} is not a result row; export one with -o FILE.jsonl)"
                            )
                        self.skipped += 1
                        continue
                    first = False
                    self.rows += 1
                    values, finished = row
                    if finished:  # a row the previous run never finished is left out
                        batch.append(values)
                    if len(batch) >= _BATCH:
                        self._db.executemany(insert, batch)
                        batch.clear()
                self._db.executemany(insert, batch)
        except OSError as exc:
            raise InputError(f"cannot read baseline {self.path!r}: {exc.strerror or exc}") from exc

    def get(self, url: str) -> PreviousRow | None:
        """The baseline row for a URL (raw or masked), or None when it has none."""
        with self._lock:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM rows WHERE url = ?", (url_key(url),)).fetchone()
        return None if found is None else PreviousRow(*found)

    def mark_seen(self, url: str) -> None:
        """Note that this run has the URL, so it is not reported missing."""
        with self._lock:
            self._db.execute("UPDATE rows SET seen = 1 WHERE url = ? AND seen = 0", (url_key(url),))

    def missing(self, limit: int = MISSING_LISTED) -> tuple[int, list[str]]:
        """How many baseline URLs this run has not seen, and the first `limit` of them."""
        with self._lock:
            count = self._db.execute("SELECT count(*) FROM rows WHERE seen = 0").fetchone()[0]
            first = self._db.execute("SELECT url FROM rows WHERE seen = 0 ORDER BY rowid LIMIT ?", (limit,))
            return int(count), [url for (url,) in first]

    def close(self) -> None:
        """Drop the index; safe to call more than once."""
        with self._lock:
            db: sqlite3.Connection | None = getattr(self, "_db", None)  # None when connecting failed
            if db is not None:
                db.close()  # a no-op the second time
            if self._directory:
                shutil.rmtree(self._directory, ignore_errors=True)


def _parse(line: bytes) -> tuple[tuple[Any, ...], bool] | None:
    """(the values to index, whether the row finished), or None for a line that is no result row."""
    try:
        row = _decode(line.decode("utf-8"))
    except ValueError:
        return None
    if type(row) is not dict or type(url := row.get("url")) is not str:
        return None
    # Exact types: a bool is no status, a list no text. Rows older than 1.3 have no etag and
    # last_modified: no validators, so no conditional request.
    fields: list[Any] = [row.get(name) for name in _FIELDS]
    status, error, final_url, total_ms, size, etag, modified, saved = fields
    values = (
        url_key(url),
        status if type(status) is int else None,
        error if type(error) is str else "",
        final_url if type(final_url) is str and final_url else url,
        float(total_ms) if type(total_ms) in _NUMBERS else 0.0,
        int(size) if type(size) in _NUMBERS else 0,
        etag if type(etag) is str else "",
        modified if type(modified) is str else "",
        saved if type(saved) is str else "",
    )
    return values, error not in _UNFINISHED


_decode = json.JSONDecoder().decode
_FIELDS = ("status", "error", "final_url", "total_ms", "bytes", "etag", "last_modified", "saved_path")
_NUMBERS = (int, float)


def with_conditions(targets: Iterable[Target], validators: Baseline, *, need_saved_file: bool) -> Iterator[Target]:
    """Each target, carrying `If-None-Match` / `If-Modified-Since` when the previous run has validators.

    With `need_saved_file` (--save-dir), only a URL whose previous body is still on disk is asked
    conditionally: a 304 would leave nothing to keep otherwise, so the body is fetched again.
    """
    for target in targets:
        if target.url is not None and (previous := validators.get(target.raw)) is not None:
            conditions = previous.conditions()
            if conditions and (not need_saved_file or _is_file(previous.saved_path)):
                target = replace(target, conditions=conditions)
        yield target


def _is_file(path: str) -> bool:
    return bool(path) and os.path.isfile(path)


@dataclass(frozen=True, slots=True)
class ChangeRules:
    """When a URL counts as `slower`: more than `slower_ratio` times and `slower_ms` ms slower."""

    slower_ratio: float = DEFAULT_SLOWER_RATIO
    slower_ms: float = DEFAULT_SLOWER_MS


def classify_change(previous: PreviousRow | None, result: Result, rules: ChangeRules) -> str:
    """The one change kind of `result` against its baseline row: the first of CHANGE_KINDS that applies."""
    if previous is None:
        return NEW
    failed = not result.ok
    if previous.failed and not failed:
        return FIXED
    if failed and not previous.failed:
        return BROKEN
    # A row without a final URL (an invalid line) is stored under its URL: compared so too.
    if result.status != previous.status or url_key(result.final_url or result.url) != url_key(previous.final_url):
        return STATUS_CHANGED
    slower_by = result.total_ms - previous.total_ms
    if result.total_ms > previous.total_ms * rules.slower_ratio and slower_by > rules.slower_ms:
        return SLOWER
    return SAME


class Changes:
    """Gives each result its `change` against a baseline, and keeps the counts for the summary.

    Used on the consuming thread (it wraps the result stream, before the sinks). With
    `validators` (--if-changed), a 304 answering a conditional request is `same`, keeps the
    previous run's validators when it sends none, and, with `keep_saved` (--save-dir), records
    the previous run's saved file.
    """

    def __init__(
        self,
        baseline: Baseline,
        rules: ChangeRules | None = None,
        *,
        validators: Baseline | None = None,
        keep_saved: bool = False,
    ) -> None:
        self.baseline = baseline
        self.rules = rules or ChangeRules()
        self.validators = validators
        self.keep_saved = keep_saved
        self.counts: Counter[str] = Counter()
        self.broken: list[tuple[str, str, str]] = []  # the first few: (url, old outcome, new outcome)
        self.not_modified = 0
        self.bytes_saved = 0
        self._missing: tuple[int, list[str]] | None = None

    def track(self, results: Iterable[Result]) -> Iterator[Result]:
        """The results, each with its `change`."""
        for result in results:
            yield self.annotate(result)

    def annotate(self, result: Result) -> Result:
        self.baseline.mark_seen(result.url)
        if result.error in _UNFINISHED:
            return result  # never fetched, or cut short: nothing to compare
        previous = self.baseline.get(result.url)
        if self.validators is not None and result.status == NOT_MODIFIED and not result.error:
            validated = previous if self.validators is self.baseline else self.validators.get(result.url)
            if validated is not None and validated.conditions():
                result = self._not_modified(result, validated)
                self.counts[SAME] += 1
                return replace(result, change=SAME)
        change = classify_change(previous, result, self.rules)
        self.counts[change] += 1
        if change == BROKEN and previous is not None and len(self.broken) < BROKEN_LISTED:
            self.broken.append((result.url, previous.outcome, result.error or str(result.status)))
        return replace(result, change=change)

    def _not_modified(self, result: Result, previous: PreviousRow) -> Result:
        self.not_modified += 1
        self.bytes_saved += previous.bytes
        # The next run stays conditional: a 304 without validators keeps the previous ones.
        return replace(
            result,
            etag=result.etag or previous.etag,
            last_modified=result.last_modified or previous.last_modified,
            saved_path=previous.saved_path if self.keep_saved and _is_file(previous.saved_path) else "",
        )

    def has_any(self, kinds: Iterable[str]) -> bool:
        return any(self.counts[kind] for kind in kinds)

    def missing(self) -> tuple[int, list[str]]:
        """Baseline URLs this run did not have: the count and the first few (asked once, at the end)."""
        if self._missing is None:
            self._missing = self.baseline.missing()
        return self._missing

    def to_dict(self) -> dict[str, Any]:
        """The `--summary-json` entries."""
        count, first = self.missing()
        return {
            "changes": {kind: self.counts[kind] for kind in CHANGE_KINDS},
            "missing": {"count": count, "urls": first},
            "not_modified": self.not_modified,
            "bytes_saved": self.bytes_saved,
            "baseline": {
                "path": self.baseline.path,
                "rows": self.baseline.rows,
                "skipped_lines": self.baseline.skipped,
            },
        }

    def summary_line(self) -> str:
        """A short clause for the plain one-line summary."""
        counts = ", ".join(f"{self.counts[kind]} {kind}" for kind in CHANGE_KINDS if self.counts[kind])
        text = f"changes: {counts or 'none'}; {self.missing()[0]} missing"
        if self.not_modified:
            text += f"; {self.not_modified} not modified ({human_bytes(self.bytes_saved)} saved)"
        return text
