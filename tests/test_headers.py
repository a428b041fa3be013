"""pooledfetch.headers: every header block reads as http.client's own parser reads it."""

from __future__ import annotations

import http.client
import io
from email.errors import MissingHeaderBodySeparatorDefect

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from urllib3.exceptions import HeaderParsingError
from urllib3.util.response import assert_header_parsing

from pooledfetch.headers import FastHeadersResponse, MalformedHeader, parse_headers

NAME_CHARS = "".join(chr(code) for code in range(0o41, 0o177) if chr(code) != ":")

plain_field = st.builds(
    lambda name, value, space, ending: f"{name}:{space}{value}{ending}",
    st.text(NAME_CHARS, min_size=1, max_size=12) | st.sampled_from(["Content-Length", "Content-Type", "ETag"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"), max_size=20),
    st.sampled_from(["", " ", "  ", "\t", " \t"]),
    st.sampled_from(["\r\n", "\n"]),
)
# Lines the email package treats otherwise: continuations, no colon, an mbox From line, an empty
# name, a name with a space, a bare CR inside, an empty line before the end.
odd_line = st.sampled_from(
    [" continued\r\n", "\tcontinued\r\n", "no colon here\r\n", "From someone\r\n", ":empty name\r\n",
     "Bad Name: x\r\n", "X-Cr: a\rb\r\n", "X-Lf-Only: a\n", "\r\n", "Content-Type: multipart/mixed; boundary=b\r\n"]
)  # fmt: skip
terminator = st.sampled_from(["\r\n", "\n", ""])


def both(block: bytes) -> tuple[http.client.HTTPMessage, http.client.HTTPMessage]:
    return parse_headers(io.BytesIO(block)), http.client.parse_headers(io.BytesIO(block))


def urllib3_verdict(message: http.client.HTTPMessage) -> str:
    """What urllib3 makes of the parse: nothing, or the warning it logs for a bad header block."""
    try:
        assert_header_parsing(message)
    except HeaderParsingError as exc:
        return f"warns: {exc}"
    return "ok"


@settings(max_examples=400)
@given(st.lists(plain_field | odd_line, max_size=8), terminator)
@example(["Content-Type: text/plain\r\n", "Content-Length: 3\r\n"], "\r\n")
@example(["Set-Cookie: a=1\r\n", "Set-Cookie: b=2\r\n"], "\r\n")
@example(["X-Folded: one\r\n", " two\r\n"], "\r\n")
@example(["X-Latin: caf\xe9\r\n"], "\r\n")
def test_a_header_block_reads_as_http_client_reads_it(lines: list[str], end: str) -> None:
    """...but for a line that is no field, after which http.client loses the rest (below)."""
    block = ("".join(lines) + end).encode("iso-8859-1")
    stdlib = http.client.parse_headers(io.BytesIO(block))
    if any(isinstance(defect, MissingHeaderBodySeparatorDefect) for defect in stdlib.defects):
        with pytest.raises(MalformedHeader):
            parse_headers(io.BytesIO(block))
        return
    ours = parse_headers(io.BytesIO(block))
    assert type(ours) is type(stdlib)
    assert ours.items() == stdlib.items()
    assert urllib3_verdict(ours) == urllib3_verdict(stdlib)


@pytest.mark.parametrize("line", ["no colon here", "Bad Name: x", "HTTP/1.1 200 OK"])
def test_a_line_that_is_no_field_is_malformed_not_the_start_of_a_body(line: str) -> None:
    """http.client takes it for the body's first line and drops the fields after it: with the
    Content-Length gone, the response was read until the server closed or the read timed out."""
    block = f"Content-Type: text/plain\r\n{line}\r\nContent-Length: 5\r\n\r\n".encode()
    assert "Content-Length" not in http.client.parse_headers(io.BytesIO(block))
    with pytest.raises(MalformedHeader, match="malformed header line"):
        parse_headers(io.BytesIO(block))


def test_plain_blocks_skip_the_email_package() -> None:
    ours, stdlib = both(b"Content-Length: 3\r\nX-Empty:\r\n\r\n")
    assert ours.items() == stdlib.items() == [("Content-Length", "3"), ("X-Empty", "")]
    assert ours.get_payload() is None  # never given to the FeedParser, which sets the payload ("")
    assert stdlib.get_payload() == ""


def test_the_stdlib_limits_still_apply() -> None:
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        parse_headers(io.BytesIO(b"X: y\r\n" * 101 + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"y" * 70_000 + b"\r\n\r\n"))


class _Socket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


@pytest.mark.parametrize(
    ("wire", "length", "chunked", "will_close"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5, False, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None, True, False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", 0, False, True),
        (b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nbody", None, False, True),
    ],
)
def test_the_response_frames_its_body_as_http_client_does(
    wire: bytes, length: int | None, chunked: bool, will_close: bool
) -> None:
    ours = FastHeadersResponse(_Socket(wire), method="GET")  # type: ignore[arg-type]
    stdlib = http.client.HTTPResponse(_Socket(wire), method="GET")  # type: ignore[arg-type]
    ours.begin()
    stdlib.begin()
    for response in (ours, stdlib):
        assert (response.length, response.chunked, response.will_close) == (length, chunked, will_close)
    assert (ours.status, ours.reason, ours.version) == (stdlib.status, stdlib.reason, stdlib.version)
    assert ours.msg.items() == stdlib.msg.items()
    assert ours.msg.get_payload() is None  # read by the short path, not the email package
