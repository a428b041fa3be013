"""Property-based invariants: one target (and one exported row) per URL line, complete indexes."""

from __future__ import annotations

import csv
import io
import json
import sys
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pooledfetch import sources
from pooledfetch.config import FetchConfig
from pooledfetch.export import FORMATS, open_exporter
from pooledfetch.results import FIELDS, INVALID_URL, Result
from pooledfetch.sources import Target, iter_targets, normalize_url, read_lines

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is a bug, never a flake
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

hosts = st.sampled_from(["example.com", "localhost", "127.0.0.1", "[::1]", "bücher.example", "a-b.example.org"])
paths = st.text(alphabet="abcxyz0123456789-_./?=&%", max_size=20).map(lambda p: "/" + p)
valid_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
    st.sampled_from(["http://", "https://", "HTTP://", "", "//"]),
    hosts,
    st.sampled_from(["", ":80", ":8080", ":65535"]),
    paths,
)
invalid_lines = st.sampled_from(
    [
        "ftp://example.com/",
        "javascript:alert(1)",
        "mailto:a@b.example",
        "http://",
        "://x",
        "ht!tp://x",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://exa\x00mple.com/",
        "relative/path",
        "/absolute/path",
    ]
)
blank_lines = st.text(alphabet=" \t\r\x0b\x0c", max_size=5)
comments = st.builds(lambda lead, body: lead + "#" + body, st.sampled_from(["", " ", "\t"]), st.text(max_size=20))
random_text = st.text(max_size=30)

text_lines = st.one_of(valid_urls, invalid_lines, blank_lines, comments, random_text).map(
    lambda line: line.replace("\n", " ")  # a line never holds its own terminator
)
byte_lines = st.one_of(
    text_lines.map(lambda line: line.encode("utf-8", "surrogatepass")),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
)


def counts_as_url_line(line: bytes) -> bool:
    """The spec, independently: not blank (after a BOM and whitespace) and not a # comment."""
    text = line.decode("utf-8", "backslashreplace")
    text = text.removeprefix("\ufeff").strip()
    return bool(text) and not text.startswith("#")


def check_targets(result: list[Target], expected: int) -> None:
    assert len(result) == expected
    assert [t.index for t in result] == list(range(expected))
    for target in result:
        assert (target.url is None) != (target.invalid_reason is None), target
        if target.url is not None:
            assert target.url.lower().startswith(("http://", "https://")), target


def as_result(target: Target) -> Result:
    """A row the way the engine would make it: errors for invalid lines, a plausible answer otherwise."""
    fetched = target.url is not None
    return Result(
        index=target.index,
        url=target.raw,
        final_url=target.url or "",
        method="GET",
        status=200 if fetched else None,
        reason="OK" if fetched else "",
        ok=fetched,
        error="" if fetched else INVALID_URL,
        error_detail=target.invalid_reason or "",
        ttfb_ms=1.25 if fetched else None,
        total_ms=2.5,
        bytes=10,
        content_type="text/plain",
        redirects=0,
        retries=0,
        started_at="2024-01-01T00:00:00.000+00:00",
    )


def parse(path, fmt: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            header, *rows = list(csv.reader(handle))
            assert tuple(header) == FIELDS
            return [dict(zip(header, row, strict=True)) for row in rows]
        if fmt == "json":
            return json.load(handle)
        return [json.loads(line) for line in handle.read().split("\n") if line]


@SETTINGS
@given(lines=st.lists(text_lines, max_size=30), base_url=st.sampled_from([None, "http://base.example/api/"]))
def test_text_lines_give_one_target_per_url_line(lines, base_url):
    config = FetchConfig(base_url=base_url)
    result = list(iter_targets([line + "\n" for line in lines], config))
    check_targets(result, sum(counts_as_url_line(line.encode("utf-8", "surrogatepass")) for line in lines))


@SETTINGS
@given(
    files=st.lists(st.lists(byte_lines, max_size=15), min_size=1, max_size=4),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_files_give_one_target_per_url_line(tmp_path_factory, files, crlf, bom):
    directory = tmp_path_factory.mktemp("inputs")
    ending = b"\r\n" if crlf else b"\n"
    paths = []
    for number, lines in enumerate(files):
        path = directory / f"{number}.txt"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"".join(line + ending for line in lines))
        paths.append(str(path))
    expected = 0
    for lines in files:
        for position, line in enumerate(lines):
            expected += counts_as_url_line((b"\xef\xbb\xbf" if bom and position == 0 else b"") + line)
    check_targets(list(iter_targets(read_lines(paths), FetchConfig())), expected)


@SETTINGS
@given(lines=st.lists(byte_lines, max_size=20), limit=st.integers(min_value=8, max_value=40))
def test_overlong_lines_still_give_one_target_each(monkeypatch, lines, limit):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", limit)
    long_line = b"example.com/" + b"x" * (2 * limit)
    data = b"".join(line + b"\n" for line in [*lines, long_line, *lines])
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))
    result = list(iter_targets(read_lines(["-"]), FetchConfig()))
    # A line cut at the limit is judged by the prefix kept: an overlong comment is still a comment.
    expected = sum(
        counts_as_url_line(line[:limit] + b"x") if len(line) >= limit else counts_as_url_line(line)
        for line in [*lines, long_line, *lines]
    )
    check_targets(result, expected)
    assert any(t.invalid_reason and "longer than" in t.invalid_reason for t in result)


@SETTINGS
@given(text=st.text(max_size=60), base_url=st.sampled_from([None, "https://base.example/a/b"]))
def test_normalize_url_never_raises_and_returns_exactly_one(text, base_url):
    url, reason = normalize_url(text, base_url, "https")
    assert (url is None) != (reason is None)
    if url is not None:
        assert url.lower().startswith(("http://", "https://"))


@SETTINGS
@pytest.mark.parametrize("fmt", FORMATS)
@given(lines=st.lists(byte_lines, max_size=25))
def test_exported_rows_match_targets(tmp_path_factory, fmt, lines):
    targets = list(iter_targets(lines, FetchConfig()))
    path = tmp_path_factory.mktemp("export") / f"out.{fmt}"
    with open_exporter(str(path), fmt) as exporter:
        for target in targets:
            exporter.write(as_result(target))
    rows = parse(path, fmt)
    assert len(rows) == len(targets)
    assert [int(row["index"]) for row in rows] == [t.index for t in targets]
    if fmt != "csv":  # CSV guards formula-looking cells; JSON keeps exact values
        assert [row["url"] for row in rows] == [t.raw for t in targets]
