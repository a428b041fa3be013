"""Input lines → `Target`s, lazily: a 10-million-line file is never held in memory."""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from pooledfetch.config import FETCHABLE_SCHEMES, FetchConfig
from pooledfetch.errors import InputError
from pooledfetch.records import pickled_as_tuple

STDIN = "-"
# A line longer than this is not a URL anyone meant; reading it whole could exhaust memory.
MAX_LINE_BYTES = 1024 * 1024

_SCHEME_SLASHES = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# "javascript:…", "mailto:…", "data:…"; "localhost:8080/x" is a host with a port, not a scheme.
_OPAQUE_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(?!\d)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UTF8_BOM = "\ufeff"
_UTF8_BOM_BYTES = _UTF8_BOM.encode("utf-8")
_OVERLONG_PREFIX = 200
_BAD_HOST_CHAR = re.compile(r"[\s<>\"{}|\\^`!$&'()*+,;=]")


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class Target:
    """One URL line: either a URL to fetch or the reason it cannot be fetched.

    `conditions` are conditional-request headers for the first hop (--if-changed), e.g.
    `(("If-None-Match", '"v1"'),)`: plain pairs, so a Target stays a picklable record.
    `input_row` holds the cells of a CSV/TSV row or the values of a JSONL object, in the
    input's column order (see pooledfetch.inputs), to come back with the result; empty for
    plain lists. Plain values only, so a Target pickles to a worker process.
    """

    index: int
    raw: str
    url: str | None
    invalid_reason: str | None = None
    conditions: tuple[tuple[str, str], ...] = ()
    input_row: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """A line past MAX_LINE_BYTES, kept only as a prefix: it still becomes one (invalid) row."""

    prefix: bytes


def read_lines(paths: Sequence[str]) -> Iterator[bytes | OverlongLine]:
    """Yield the raw lines of each file in turn (`-` is stdin), opening each only when reached;
    as UTF-8 bytes where a file is UTF-16 (see utf16)."""
    for path in paths:
        if path == STDIN:
            with _utf8(sys.stdin.buffer) as lines:
                yield from _bounded_lines(lines)
            continue
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed by the with below, opened lazily
        except OSError as exc:
            raise InputError(f"cannot read input file {path!r}: {exc.strerror}") from exc
        with stream, _utf8(stream) as lines:
            yield from _bounded_lines(lines)


def utf16(stream: BinaryIO) -> bool:
    """True when `stream` starts with a UTF-16 byte order mark, as Windows PowerShell's `>` and
    Notepad's "Unicode" write a text file (read as UTF-8, every line is NUL bytes apart)."""
    peek = getattr(stream, "peek", None)
    return peek is not None and peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@contextmanager
def _utf8(stream: BinaryIO) -> Iterator[BinaryIO | _Utf8Lines]:
    """`stream`, or its lines as UTF-8 bytes when it is UTF-16."""
    if not utf16(stream):
        yield stream
        return
    text = io.TextIOWrapper(stream, encoding="utf-16", errors="surrogateescape", newline="")
    try:
        yield _Utf8Lines(text)
    finally:
        text.detach()  # the stream is its opener's to close


class _Utf8Lines:
    """The lines of a text stream read back as UTF-8 bytes (`readline` alone, as read here)."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._text = text

    def readline(self, limit: int = -1) -> bytes:
        return self._text.readline(limit).encode("utf-8", "surrogateescape")


def _bounded_lines(stream: BinaryIO | _Utf8Lines) -> Iterator[bytes | OverlongLine]:
    readline = stream.readline
    while True:
        # One byte past the limit tells a line of exactly MAX_LINE_BYTES from a longer one.
        line: bytes = readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield OverlongLine(line[:_OVERLONG_PREFIX])
        else:
            yield line


def iter_targets(lines: Iterable[str | bytes | OverlongLine], config: FetchConfig) -> Iterator[Target]:
    """Number the URL lines (blank lines and `#` comments are skipped) and normalise each."""
    seen: set[bytes] = set()
    index = 0
    for line in lines:
        raw, decode_problem = decode_line(line)
        if not raw or raw.startswith("#"):
            continue
        if config.dedupe and repeated(raw, seen):
            index += 1
            continue
        if decode_problem:
            yield Target(index, raw, None, decode_problem)
        else:
            url, reason = normalize_url(raw, config.base_url, config.default_scheme)
            yield Target(index, raw, url, reason)
        index += 1


def repeated(raw: str, seen: set[bytes]) -> bool:
    """True when `raw` is in `seen` (for --dedupe); otherwise it is added."""
    # A 16-byte digest per line instead of the line itself keeps memory flat-ish.
    digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    if digest in seen:
        return True
    seen.add(digest)
    return False


def decode_line(line: str | bytes | OverlongLine) -> tuple[str, str | None]:
    if isinstance(line, OverlongLine):
        prefix = line.prefix.decode("utf-8", "backslashreplace")
        return strip_line(prefix) + "…", f"line longer than {MAX_LINE_BYTES} bytes"
    if isinstance(line, bytes):
        line = line.removeprefix(_UTF8_BOM_BYTES)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return strip_line(line.decode("utf-8", "backslashreplace")), "line is not valid UTF-8"
    elif isinstance(line, str):
        text = line.removeprefix(_UTF8_BOM)
    else:
        # From the library API (fetch_all([url, None])): still the item's own row.
        return repr(line), f"not a URL: {type(line).__name__}"
    return strip_line(text), None


def strip_line(text: str) -> str:
    # ASCII whitespace only: str.strip() would also eat \x1c-\x1f and \x85, silently changing a URL.
    return text.strip(" \t\r\n\x0b\x0c")


def normalize_url(text: str, base_url: str | None, default_scheme: str) -> tuple[str | None, str | None]:
    """Return (absolute http(s) URL, None) or (None, why it cannot be fetched)."""
    if _CONTROL.search(text):
        return None, "contains control characters"
    if match := _SCHEME_SLASHES.match(text):
        url = text
        scheme = match.group(1).lower()
    elif _has_broken_scheme(text):
        return None, "malformed URL: invalid scheme before '://'"
    elif text.startswith("//"):
        scheme = urlsplit(base_url).scheme if base_url else default_scheme
        url = f"{scheme}:{text}"
    elif text.startswith("/") or not _starts_with_host(text):
        if (match := _OPAQUE_SCHEME.match(text)) and not text.startswith("/"):
            scheme = match.group(1).lower()
            if scheme in FETCHABLE_SCHEMES:
                return None, f"malformed URL: '{scheme}:' must be followed by '//host'"
            return None, f"unsupported scheme {scheme!r}: only http and https"
        if base_url is None:
            return None, "relative URL: give --base-url to resolve it"
        url = urljoin(base_url, text)
        scheme = urlsplit(url).scheme
    else:
        url = f"{default_scheme}://{text}"
        scheme = default_scheme
    if scheme.lower() not in FETCHABLE_SCHEMES:
        return None, f"unsupported scheme {scheme.lower()!r}: only http and https"
    try:
        parts = urlsplit(url)
        if not parts.hostname:
            return None, "no host in URL"
        if _BAD_HOST_CHAR.search(parts.hostname):
            return None, f"invalid character in host {parts.hostname!r}"
        if parts.port == 0:  # a bad port raises ValueError here
            return None, "malformed URL: port 0 is not a port to connect to"
    except ValueError as exc:
        return None, f"malformed URL: {exc}"
    return url, None


def _has_broken_scheme(text: str) -> bool:
    position = text.find("://")
    return position >= 0 and not re.search(r"[/?#]", text[:position])


def _starts_with_host(text: str) -> bool:
    first = re.split(r"[/?#]", text, maxsplit=1)[0]
    if first in (".", ".."):
        return False
    if first.startswith("["):
        return True
    host, _, port = first.rpartition(":") if ":" in first else (first, "", "")
    if port and not port.isdigit():
        return False
    return "." in host or host.lower() == "localhost"


class LineCounter:
    """Counts the URL lines of input files in a background pass, for a progress total.

    `count` counts one opened file (the URL lines of a plain list by default; pooledfetch.inputs
    passes a row counter for CSV, TSV and JSONL). stdin cannot be read twice, so an input list
    with `-` has no total.
    """

    def __init__(self, paths: Sequence[str], count: Callable[[BinaryIO], int] | None = None) -> None:
        self._total: int | None = None
        if STDIN not in paths:
            threading.Thread(
                target=self._count, args=(paths, count or count_lines), name="pooledfetch-count", daemon=True
            ).start()

    @property
    def total(self) -> int | None:
        """The count once the pass is done, None until then (or for stdin)."""
        return self._total

    def _count(self, paths: Sequence[str], count: Callable[[BinaryIO], int]) -> None:
        total = 0
        try:
            for path in paths:
                with open(path, "rb") as stream:
                    total += count(stream)
        except (OSError, ValueError):
            return  # the real read reports it
        self._total = total


def count_lines(stream: BinaryIO, comments: bool = True) -> int:
    """The URL lines of a plain list: not blank and (with `comments`) not a `#` comment."""
    count = 0
    with _utf8(stream) as lines:
        for line in _bounded_lines(lines):
            if isinstance(line, OverlongLine):
                count += 1
                continue
            stripped = line.removeprefix(_UTF8_BOM_BYTES).strip(b" \t\r\n\x0b\x0c")
            count += bool(stripped) and not (comments and stripped.startswith(b"#"))
    return count
