"""Input lines → `Target`s, lazily: a 10-million-line file is never held in memory."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from pooledfetch.config import FETCHABLE_SCHEMES, FetchConfig
from pooledfetch.errors import InputError

STDIN = "-"
# A line longer than this is not a URL anyone meant; reading it whole could exhaust memory.
MAX_LINE_BYTES = 1024 * 1024

_SCHEME_SLASHES = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# "javascript:…", "mailto:…", "data:…"; "localhost:8080/x" is a host with a port, not a scheme.
_OPAQUE_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(?!\d)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UTF8_BOM = "\ufeff"
_BAD_HOST_CHAR = re.compile(r"[\s<>\"{}|\\^`!$&'()*+,;=]")


@dataclass(frozen=True, slots=True)
class Target:
    """One URL line: either a URL to fetch or the reason it cannot be fetched."""

    index: int
    raw: str
    url: str | None
    invalid_reason: str | None = None


def read_lines(paths: Sequence[str]) -> Iterator[bytes]:
    """Yield the raw lines of each file in turn (`-` is stdin), opening each only when reached."""
    for path in paths:
        if path == STDIN:
            yield from _bounded_lines(sys.stdin.buffer)
            continue
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed by the with below, opened lazily
        except OSError as exc:
            raise InputError(f"cannot read input file {path!r}: {exc.strerror}") from exc
        with stream:
            yield from _bounded_lines(stream)


def _bounded_lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    readline = getattr(stream, "readline")  # noqa: B009 - file objects and sys.stdin.buffer
    while True:
        line: bytes = readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            # Skip the rest of the overlong line; keep a prefix so the row says what it was.
            while (rest := readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            line = b"\0overlong\0" + line[:200]
        yield line


def iter_targets(lines: Iterable[str | bytes], config: FetchConfig) -> Iterator[Target]:
    """Number the URL lines (blank lines and `#` comments are skipped) and normalise each."""
    seen: set[bytes] = set()
    index = 0
    for line in lines:
        raw, decode_problem = _decode(line)
        if not raw or raw.startswith("#"):
            continue
        if config.dedupe:
            # A 16-byte digest per line instead of the line itself keeps memory flat-ish.
            digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in seen:
                index += 1
                continue
            seen.add(digest)
        if decode_problem:
            yield Target(index, raw, None, decode_problem)
        else:
            url, reason = normalize_url(raw, config.base_url, config.default_scheme)
            yield Target(index, raw, url, reason)
        index += 1


def _decode(line: str | bytes) -> tuple[str, str | None]:
    if isinstance(line, bytes):
        if line.startswith(b"\0overlong\0"):
            prefix = line[len(b"\0overlong\0") :].decode("utf-8", "backslashreplace")
            return prefix.strip() + "…", f"line longer than {MAX_LINE_BYTES} bytes"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return line.decode("utf-8", "backslashreplace").strip(), "line is not valid UTF-8"
    else:
        text = line
    return text.lstrip(_UTF8_BOM).strip(), None


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
            return None, f"unsupported scheme {match.group(1).lower()!r}: only http and https"
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
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return None, f"malformed URL: {exc}"
    return url, None


def _has_broken_scheme(text: str) -> bool:
    position = text.find("://")
    return position >= 0 and not re.search(r"[/?#]", text[:position])


def _starts_with_host(text: str) -> bool:
    first = re.split(r"[/?#]", text, maxsplit=1)[0]
    if first.startswith("["):
        return True
    host, _, port = first.rpartition(":") if ":" in first else (first, "", "")
    if port and not port.isdigit():
        return False
    return "." in host or host.lower() == "localhost"
