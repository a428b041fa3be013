"""`--resume FILE.jsonl`: carry on from a previous run's JSONL export.

Rows that finished (a response or a real error) are kept and their URLs skipped; rows the
run never finished (`cancelled`, `interrupted`), a line cut short by a kill, and repeats are
dropped by rewriting the file, so after the resumed run it holds exactly one row per URL.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator

from pooledfetch.errors import InputError
from pooledfetch.results import CANCELLED, INTERRUPTED, WORKER_LOST
from pooledfetch.sources import Target
from pooledfetch.text import mask_credentials

UNFINISHED = (CANCELLED, INTERRUPTED, WORKER_LOST)
# Indexes an array grows by at once past twice its length: a row list with small gaps stays in it.
_DENSE_SLACK = 1 << 20


class ResumeState:
    """Which indexes already have a finished row, and for which URL: 4 bytes per index, in an
    array as long as the rows are dense; an index far past them (a file not written by one run
    of the same input) goes to a dict, so memory follows the rows, not the largest index."""

    def __init__(self) -> None:
        self._fingerprints = array("I")
        self._far: dict[int, int] = {}
        self.finished = 0

    def record(self, index: int, url: str) -> bool:
        """Remember a finished row; False when the index already had one."""
        if index < 0:
            return False  # no line has it: not a row of this input
        dense = index < 2 * len(self._fingerprints) + _DENSE_SLACK
        if dense and index >= len(self._fingerprints):
            missing = index + 1 - len(self._fingerprints)
            self._fingerprints.frombytes(bytes(self._fingerprints.itemsize * missing))
        if self._fingerprint_at(index):
            return False
        if dense:
            self._fingerprints[index] = _fingerprint(url)
        else:
            self._far[index] = _fingerprint(url)
        self.finished += 1
        return True

    def is_finished(self, index: int, url: str) -> bool:
        return self._fingerprint_at(index) == _fingerprint(url)

    def _fingerprint_at(self, index: int) -> int:
        # The array may have grown past an index kept in the dict before.
        if index < len(self._fingerprints) and self._fingerprints[index]:
            return self._fingerprints[index]
        return self._far.get(index, 0)

    def pending(self, targets: Iterable[Target], skipped: Callable[[Target], None] | None = None) -> Iterator[Target]:
        """The targets that still need a row, matched by index and by URL; `skipped` hears of the others."""
        for target in targets:
            if not self.is_finished(target.index, target.raw):
                yield target
            elif skipped is not None:
                skipped(target)


def url_key(url: str) -> str:
    """The form in which a URL of this run and a URL of a previous run's row are compared.

    Rows show URLs masked or not (--show-credentials): compare the masked form either way.
    """
    return mask_credentials(url)


def _fingerprint(url: str) -> int:
    # 0 marks "no row for this index", so fingerprints live in 1..2**32-1.
    return zlib.crc32(url_key(url).encode("utf-8", "surrogatepass")) % 0xFFFFFFFF + 1


def load(path: str) -> ResumeState:
    """Read a previous JSONL export (none yet is fine), rewriting it if it holds unfinished rows."""
    state = ResumeState()
    if not os.path.exists(path):
        return state
    try:
        clean = True
        last = b"\n"
        for line, row in _rows(path):
            last = line
            # Every finished row is recorded, also those after the first one to be dropped.
            recorded = row is not None and state.record(*row)
            clean = clean and recorded
        if not clean or not last.endswith(b"\n"):
            _rewrite(path)
    except OSError as exc:
        raise InputError(f"cannot resume from {path!r}: {exc.strerror or exc}") from exc
    return state


def _rows(path: str) -> Iterator[tuple[bytes, tuple[int, str] | None]]:
    """Each line with (index, url) when it is a finished row, None when it is to be dropped."""
    with open(path, "rb") as stream:
        for line in stream:
            try:
                row = json.loads(line)
            except ValueError:
                yield line, None  # cut short by a kill, or not ours
                continue
            finished = (
                isinstance(row, dict)
                and isinstance(row.get("index"), int)
                and isinstance(row.get("url"), str)
                and row.get("error") not in UNFINISHED
            )
            yield line, (row["index"], row["url"]) if finished else None


def _rewrite(path: str) -> None:
    kept_indexes = ResumeState()
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".resume") as kept:
        try:
            for line, row in _rows(path):
                if row is not None and kept_indexes.record(*row):
                    kept.write(line if line.endswith(b"\n") else line + b"\n")
            kept.flush()
            os.fsync(kept.fileno())
        except BaseException:
            os.unlink(kept.name)
            raise
    os.replace(kept.name, path)
