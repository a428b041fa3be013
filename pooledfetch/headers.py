"""Response headers read without the email package when every line is a plain field.

http.client hands each response's header block to the email package's FeedParser, which builds
a Message one line at a time through several layers of Python. On one host with 50 threads that
parser was the largest single cost of a request: a run of 10,000 URLs took 3.95 s with it and
3.54 s without it (user CPU 3.0 s against 2.6 s).

A block whose every line is `name:value` (a name of the characters the email package accepts
in one, no CR or LF but the line's own ending, no continuation line) becomes here the same
HTTPMessage, holding the same (name, value) pairs the email package would give it. Any other
block goes to the email package exactly as http.client would send it, defects and all, but one:
a line that is no field (`no colon here`, `Bad Name: x`). The email package takes it for the
start of a body and drops the fields after it, Content-Length among them, so the response
was read to a timeout; it is a MalformedHeader instead, as curl's "Header without colon". The
stdlib's own line length and header count limits apply either way (`_read_headers`).
"""

from __future__ import annotations

import email.errors
import email.parser
import http.client
import re
import types
from typing import IO, Any

# The email package's header line test (email.feedparser.headerRE) takes a name of these
# characters (printable ASCII but the colon); here one is required, and a whole field.
_PLAIN_BLOCK = re.compile(rb"(?:[\041-\071\073-\176]+:[^\r\n]*\r?\n)*(?:\r?\n)?")


def parse_headers(fp: IO[bytes], _class: type[http.client.HTTPMessage] = http.client.HTTPMessage) -> Any:
    """http.client.parse_headers, with plain blocks read without the email package."""
    lines: list[bytes] = http.client._read_headers(fp)  # type: ignore[attr-defined]
    block = b"".join(lines)
    if _PLAIN_BLOCK.fullmatch(block) is None:
        parsed = email.parser.Parser(_class=_class).parsestr(block.decode("iso-8859-1"))
        if any(isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect) for defect in parsed.defects):
            first = str(parsed.get_payload()).splitlines()[0]
            raise MalformedHeader(f"malformed header line {first[:_QUOTED_LINE]!r}")
        return parsed
    message = _class()
    for line in lines:
        name, colon, value = line.decode("iso-8859-1").partition(":")
        if colon:
            # As the email package's compat32 policy stores a field (header_source_parse).
            message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    return message


class MalformedHeader(http.client.HTTPException):
    """A header line that is not a field: the fields after it, and so the body's framing, are lost."""


# How much of a malformed header line its error quotes.
_QUOTED_LINE = 60


def _reading_headers_with(begin: types.FunctionType) -> types.FunctionType:
    """http.client.HTTPResponse.begin itself, its global `parse_headers` being the one above:
    the stdlib's code for the status line, 1xx responses and body framing stays the stdlib's."""
    scope = {**vars(http.client), "parse_headers": parse_headers}
    return types.FunctionType(begin.__code__, scope, begin.__name__, begin.__defaults__, begin.__closure__)


class FastHeadersResponse(http.client.HTTPResponse):
    """The response class of pooledfetch's connections (pooledfetch.pools)."""

    begin = _reading_headers_with(http.client.HTTPResponse.begin)  # type: ignore[arg-type]

    def _read_status(self) -> tuple[str, int, str]:
        """The next status line past any informational response but 100 and 101: http.client
        skips only a 100 Continue (in `begin`), and took a 103 Early Hints for the response."""
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not _SKIPPED_INFORMATIONAL <= status < 200:
                return version, status, reason
            # Its fields (link hints, progress) are not the final response's.
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]


# 100 Continue is skipped by `begin`; 101 Switching Protocols ends the HTTP exchange.
_SKIPPED_INFORMATIONAL = 102
