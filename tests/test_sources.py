"""sources: reading URL lines lazily and normalising them into `Target`s."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import pytest

from pooledfetch import sources
from pooledfetch.config import FetchConfig
from pooledfetch.errors import InputError
from pooledfetch.sources import STDIN, Target, iter_targets, normalize_url, read_lines


def targets(lines, **config):
    return list(iter_targets(lines, FetchConfig(**config)))


def fake_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))


# --- read_lines ---------------------------------------------------------------------------------


def test_read_lines_concatenates_files_in_order(tmp_path):
    first = tmp_path / "a.txt"
    second = tmp_path / "b.txt"
    first.write_bytes(b"one\ntwo\n")
    second.write_bytes(b"three\nfour")  # no trailing newline on the last line
    assert list(read_lines([str(first), str(second)])) == [b"one\n", b"two\n", b"three\n", b"four"]


def test_read_lines_reads_stdin_buffer_between_files(tmp_path, monkeypatch):
    fake_stdin(monkeypatch, b"from-stdin\r\nsecond\n")
    path = tmp_path / "a.txt"
    path.write_bytes(b"file-line\n")
    assert list(read_lines([str(path), STDIN])) == [b"file-line\n", b"from-stdin\r\n", b"second\n"]


def test_read_lines_returns_bytes_untouched(tmp_path):
    path = tmp_path / "a.txt"
    raw = b"\xef\xbb\xbfexample.com\r\n\xff\xfe\n"
    path.write_bytes(raw)
    assert b"".join(read_lines([str(path)])) == raw


def test_read_lines_is_lazy_missing_file_fails_only_when_reached(tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(b"one\ntwo\n")
    missing = tmp_path / "missing.txt"
    lines = read_lines([str(first), str(missing)])  # creating the generator opens nothing
    assert next(lines) == b"one\n"
    assert next(lines) == b"two\n"
    with pytest.raises(InputError) as info:
        next(lines)
    assert "missing.txt" in str(info.value)
    assert "cannot read input file" in str(info.value)


def test_read_lines_opens_second_file_only_when_reached(tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(b"one\n")
    second = tmp_path / "b.txt"  # does not exist yet when reading starts
    lines = read_lines([str(first), str(second)])
    assert next(lines) == b"one\n"
    second.write_bytes(b"two\n")
    assert list(lines) == [b"two\n"]


def test_read_lines_missing_first_file_raises_input_error_with_usage_exit(tmp_path):
    with pytest.raises(InputError) as info:
        list(read_lines([str(tmp_path / "nope.txt")]))
    assert info.value.exit_code == 2
    assert "nope.txt" in str(info.value)


def test_read_lines_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        list(read_lines([str(tmp_path)]))


def test_overlong_line_becomes_one_invalid_target_and_next_line_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 64)
    path = tmp_path / "urls.txt"
    path.write_bytes(b"example.com/a\n" + b"x" * 1000 + b"\nexample.com/b\n")
    result = targets(read_lines([str(path)]))
    assert [t.index for t in result] == [0, 1, 2]
    assert result[0].url == "https://example.com/a"
    overlong = result[1]
    assert overlong.url is None
    assert overlong.invalid_reason == "line longer than 64 bytes"
    assert overlong.raw.startswith("x" * 10)
    assert len(overlong.raw) < 100  # only a prefix is kept, not the whole line
    assert result[2].url == "https://example.com/b"


def test_overlong_last_line_without_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 32)
    path = tmp_path / "urls.txt"
    path.write_bytes(b"example.com\n" + b"y" * 500)
    result = targets(read_lines([str(path)]))
    assert len(result) == 2
    assert result[1].url is None
    assert "longer than 32 bytes" in result[1].invalid_reason


def test_overlong_line_from_stdin(monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 32)
    fake_stdin(monkeypatch, b"z" * 200 + b"\nexample.com\n")
    result = targets(read_lines([STDIN]))
    assert [(t.index, t.url is None) for t in result] == [(0, True), (1, False)]
    assert result[1].url == "https://example.com"


@pytest.mark.parametrize("tail", [b"", b"\n"], ids=["at-eof", "with-newline"])
def test_line_of_exactly_max_line_bytes_is_not_overlong(tmp_path, monkeypatch, tail):
    # BUG: _bounded_lines reads readline(MAX_LINE_BYTES) and treats a full-length read without
    # "\n" as overlong, so a line of exactly MAX_LINE_BYTES bytes is rejected as "longer than".
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 16)
    line = b"example.com/abcd"
    assert len(line) == 16
    path = tmp_path / "urls.txt"
    path.write_bytes(line + tail)
    result = targets(read_lines([str(path)]))
    assert result == [Target(0, "example.com/abcd", "https://example.com/abcd", None)]


# --- iter_targets -------------------------------------------------------------------------------


def test_blank_lines_and_comments_are_skipped_and_not_numbered():
    lines = [
        b"\n",
        b"   \t \n",
        b"# a comment\n",
        b"   # indented comment\n",
        b"example.com/1\n",
        b"\r\n",
        b"#example.com/not-a-url\n",
        b"example.com/2\n",
    ]
    result = targets(lines)
    assert [(t.index, t.url) for t in result] == [(0, "https://example.com/1"), (1, "https://example.com/2")]


def test_crlf_lines_are_accepted():
    result = targets([b"http://example.com/a\r\n", b"example.com/b\r\n"])
    assert [t.url for t in result] == ["http://example.com/a", "https://example.com/b"]
    assert [t.raw for t in result] == ["http://example.com/a", "example.com/b"]


def test_utf8_bom_is_stripped():
    result = targets([b"\xef\xbb\xbfhttp://example.com/\n", b"\xef\xbb\xbf# bom comment\n"])
    assert result == [Target(0, "http://example.com/", "http://example.com/", None)]


def test_str_lines_are_accepted_too():
    result = targets(["\ufeffexample.com\n", "  \n", "localhost:8080/x"])
    assert [t.url for t in result] == ["https://example.com", "https://localhost:8080/x"]


def test_invalid_utf8_line_is_an_invalid_target_not_an_exception():
    result = targets([b"example.com\n", b"http://example.com/\xff\xfe\n", b"example.org\n"])
    assert [t.index for t in result] == [0, 1, 2]
    bad = result[1]
    assert bad.url is None
    assert bad.invalid_reason == "line is not valid UTF-8"
    assert bad.raw == "http://example.com/\\xff\\xfe"  # shown escaped, still identifiable
    assert result[2].url == "https://example.org"


@pytest.mark.parametrize(
    "line",
    [b"http://exa\x00mple.com/", b"http://example.com/\x1b[31m", b"http://example.com/a\tb", b"example.com/\x7f"],
)
def test_control_characters_make_a_line_invalid(line):
    (target,) = targets([line])
    assert target.url is None
    assert target.invalid_reason == "contains control characters"


def test_trailing_control_character_is_not_silently_dropped():
    # BUG: _decode uses str.strip(), which treats \x1c-\x1f (and \x85) as whitespace, so the
    # control character vanishes and the line is fetched as if it were not there.
    (target,) = targets([b"http://example.com/\x1f\n"])
    assert target.url is None
    assert target.invalid_reason == "contains control characters"


def test_line_with_only_a_control_character_still_gets_a_row():
    # BUG (same cause): a line holding only "\x1f" is skipped as if blank, so it gets no row.
    result = targets([b"\x1f\n", b"example.com\n"])
    assert len(result) == 2
    assert result[0].invalid_reason == "contains control characters"


def test_indexes_are_zero_based_and_continue_across_files(tmp_path, monkeypatch):
    first = tmp_path / "a.txt"
    second = tmp_path / "b.txt"
    first.write_bytes(b"# header\nexample.com/a\n\nexample.com/b\n")
    second.write_bytes(b"\n# more\nexample.com/c\nnot a url\n")
    fake_stdin(monkeypatch, b"example.com/d\n")
    result = targets(read_lines([str(first), str(second), STDIN]))
    assert [t.index for t in result] == [0, 1, 2, 3, 4]
    assert [t.raw for t in result] == ["example.com/a", "example.com/b", "example.com/c", "not a url", "example.com/d"]
    assert result[3].url is None and result[3].invalid_reason


def test_iter_targets_is_lazy():
    def lines():
        yield b"example.com/1\n"
        raise AssertionError("read past what was asked for")

    stream = iter_targets(lines(), FetchConfig())
    assert next(stream).url == "https://example.com/1"


def test_without_dedupe_repeats_are_kept():
    result = targets([b"example.com\n", b"example.com\n"])
    assert [t.index for t in result] == [0, 1]


def test_dedupe_skips_exact_repeats_and_kept_lines_keep_their_position():
    lines = [b"a.example\n", b"b.example\n", b"a.example\n", b"c.example\n", b"b.example\r\n", b"d.example\n"]
    result = targets(lines, dedupe=True)
    assert [(t.index, t.raw) for t in result] == [
        (0, "a.example"),
        (1, "b.example"),
        (3, "c.example"),
        (5, "d.example"),
    ]


def test_dedupe_is_exact_not_normalised():
    # Different text for the same URL is not an exact repeat.
    result = targets([b"example.com\n", b"https://example.com\n", b"EXAMPLE.com\n"], dedupe=True)
    assert [t.index for t in result] == [0, 1, 2]


def test_dedupe_also_applies_to_invalid_lines():
    result = targets([b"ftp://x\n", b"ftp://x\n", b"\xff\n", b"\xff\n"], dedupe=True)
    assert [t.index for t in result] == [0, 2]
    assert all(t.url is None for t in result)


def test_targets_use_base_url_and_default_scheme_from_config():
    result = targets([b"/get\n", b"example.com/x\n"], base_url="http://127.0.0.1:8000/api/", default_scheme="http")
    assert [t.url for t in result] == ["http://127.0.0.1:8000/get", "http://example.com/x"]


# --- normalize_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://example.com/a?b=1#c", "http://example.com/a?b=1#c"),
        ("https://example.com", "https://example.com"),
        ("HTTPS://Example.COM/Path", "HTTPS://Example.COM/Path"),
        ("example.com/a", "https://example.com/a"),
        ("example.com", "https://example.com"),
        ("example.com:8443/x", "https://example.com:8443/x"),
        ("localhost:8080", "https://localhost:8080"),
        ("localhost/path", "https://localhost/path"),
        ("127.0.0.1:5000/health", "https://127.0.0.1:5000/health"),
        ("[::1]:8080/x", "https://[::1]:8080/x"),
        ("http://[::1]/", "http://[::1]/"),
        ("http://[2001:db8::1]:8080/p", "http://[2001:db8::1]:8080/p"),
        ("bücher.example/x", "https://bücher.example/x"),
        ("http://xn--bcher-kva.example/", "http://xn--bcher-kva.example/"),
        ("//cdn.example.com/x", "https://cdn.example.com/x"),
        ("example.com/?next=http://other.example/", "https://example.com/?next=http://other.example/"),
    ],
)
def test_normalize_url_accepts(text, expected):
    assert normalize_url(text, None, "https") == (expected, None)


def test_scheme_less_host_uses_default_scheme():
    assert normalize_url("example.com/a", None, "http") == ("http://example.com/a", None)
    assert normalize_url("localhost:8080", None, "http") == ("http://localhost:8080", None)


def test_protocol_relative_follows_base_url_scheme_then_default_scheme():
    assert normalize_url("//cdn.example.com/x", "http://base.example/", "https") == ("http://cdn.example.com/x", None)
    assert normalize_url("//cdn.example.com/x", None, "http") == ("http://cdn.example.com/x", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/get", "http://base.example/get"),
        ("get", "http://base.example/api/get"),
        ("?q=1", "http://base.example/api/?q=1"),
        ("http://absolute.example/x", "http://absolute.example/x"),
    ],
)
def test_relative_urls_resolve_against_base_url(text, expected):
    assert normalize_url(text, "http://base.example/api/", "https") == (expected, None)


@pytest.mark.parametrize(
    ("text", "expected"), [("./x", "http://base.example/api/x"), ("../up", "http://base.example/up")]
)
def test_dot_relative_paths_resolve_against_base_url(text, expected):
    # BUG: _starts_with_host sees a "." in "." / ".." and makes "https://../up", host "..".
    assert normalize_url(text, "http://base.example/api/", "https") == (expected, None)


@pytest.mark.parametrize("text", ["../up", ".."])
def test_dot_relative_paths_are_never_a_host(text):
    # BUG (same cause): without --base-url these come back as valid URLs with host "." or "..".
    url, reason = normalize_url(text, None, "https")
    assert url is None
    assert "relative URL" in reason


@pytest.mark.parametrize("text", ["/get", "get", "path/to/thing"])
def test_relative_url_without_base_url_is_invalid_and_says_how_to_fix(text):
    url, reason = normalize_url(text, None, "https")
    assert url is None
    assert "relative URL" in reason
    assert "--base-url" in reason


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("ftp://example.com/file", "ftp"),
        ("file:///etc/passwd", "file"),
        ("javascript:alert(1)", "javascript"),
        ("mailto:someone@example.com", "mailto"),
        ("data:text/plain,hi", "data"),
        ("ws://example.com/socket", "ws"),
        ("FTP://example.com/", "ftp"),
    ],
)
def test_unsupported_schemes_are_invalid_and_reason_mentions_scheme(text, scheme):
    for base in (None, "http://base.example/"):
        url, reason = normalize_url(text, base, "https")
        assert url is None
        assert "scheme" in reason
        assert repr(scheme) in reason


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http://", "no host"),
        ("https:///path", "no host"),
        ("http://:80/", "no host"),
        ("//", "no host"),
        ("://x", "malformed"),
        ("ht!tp://x", "malformed"),
        ("http://example.com:99999/", "Port out of range"),
        ("example.com:70000", "Port out of range"),
        ("http://example.com:-1/", "malformed"),
        ("http://exa mple.com/", "invalid character in host"),
        ("exa mple.com/x", "invalid character in host"),
        ("http://exa<mple.com/", "invalid character in host"),
        ("http://[::1/", "malformed"),
        ("http://exa\x00mple.com", "control characters"),
    ],
)
def test_malformed_urls_are_invalid_with_a_reason(text, fragment):
    url, reason = normalize_url(text, None, "https")
    assert url is None
    assert fragment in reason


def test_port_zero_is_rejected():
    # BUG: urlsplit accepts port 0, so "http://example.com:0/" is treated as fetchable.
    url, reason = normalize_url("http://example.com:0/", None, "https")
    assert url is None
    assert "port" in reason.lower()


@pytest.mark.parametrize("text", ["https:example.com", "http:/example.com"])
def test_missing_slashes_after_http_scheme_reason_is_not_self_contradictory(text):
    # BUG: the opaque-scheme branch reports "unsupported scheme 'https': only http and https".
    url, reason = normalize_url(text, None, "https")
    assert url is None
    assert "unsupported scheme" not in reason


def test_bom_before_a_comment_that_is_not_valid_utf8_is_still_a_comment():
    # BUG: _decode strips the BOM only on the valid-UTF-8 path; a file starting with a BOM whose
    # first line is a comment with a stray non-UTF-8 byte yields a row instead of being skipped.
    # (Found by hypothesis in tests/test_properties.py with files=[[b"#\x80"]], bom=True.)
    result = targets([b"\xef\xbb\xbf# caf\xe9 list\n", b"example.com\n"])
    assert [t.raw for t in result] == ["example.com"]
    assert result[0].index == 0
