"""Hostile input files: every line that is not blank or a comment becomes exactly one row, in order of
the input (indexes 0..n-1), invalid ones as `invalid_url` with a reason; never a traceback.

The corpus is tests/data/bad_inputs.txt, whose exact bytes (BOM, CRLF, NUL, invalid UTF-8, a
100 KB line) are built from `CORPUS` below; `python tests/test_bad_input.py` rewrites it.
No line reaches the network: hosts are IP literals on loopback port 1 (refused at once) or
names under `.invalid` (failed by `fake_dns`, or by hostile.offline_env in a subprocess).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile import cli_command, offline_env
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledfetch import FetchConfig, Result, fetch_all
from pooledfetch import results as rc
from pooledfetch.results import FIELDS
from pooledfetch.sources import MAX_LINE_BYTES, iter_targets

DATA = Path(__file__).parent / "data"
CORPUS_FILE = DATA / "bad_inputs.txt"
BOM = b"\xef\xbb\xbf"
CONNECT = rc.CONNECT
INVALID = rc.INVALID_URL


@dataclass(frozen=True)
class Line:
    """One corpus line: its bytes, its line ending, and the row it must give (None: no row)."""

    raw: bytes
    error: str | None
    detail: str = ""  # a word the row's error_detail must contain
    url: str | None = None  # the row's `url` when it is not simply the stripped line
    ending: bytes = b"\n"


CORPUS: list[Line] = [
    Line(BOM + b"http://127.0.0.1:1/first-line-after-a-bom", CONNECT, url="http://127.0.0.1:1/first-line-after-a-bom"),
    Line(b"", None),
    Line(b"   \t  ", None),
    Line(b"\x0b\x0c ", None),
    Line(b"# a comment: http://127.0.0.1:1/not-a-row", None),
    Line(b"   # an indented comment", None),
    Line(b"http://127.0.0.1:1/crlf", CONNECT, ending=b"\r\n"),
    Line(b"", None, ending=b"\r\n"),
    Line(b"  http://127.0.0.1:1/padded \t", CONNECT, url="http://127.0.0.1:1/padded"),
    Line(b"http://127.0.0.1:1/nul\x00byte", INVALID, "control characters"),
    Line(b"\x00", INVALID, "control characters"),
    Line(b"http://127.0.0.1:1/esc\x1b[31mred", INVALID, "control characters"),
    Line("http://127.0.0.1:1/next-line\u0085".encode(), INVALID, "control characters"),
    Line(b"http://127.0.0.1:1/lone\rcarriage-return", INVALID, "control characters"),
    Line(b"http://127.0.0.1:1/\xff\xfe-caf\xe9", INVALID, "UTF-8", url="http://127.0.0.1:1/\\xff\\xfe-caf\\xe9"),
    Line(b"\xc3\x28", INVALID, "UTF-8", url="\\xc3("),
    Line(b"http://127.0.0.1:1/" + b"a" * 100_000, CONNECT),
    Line(b"http://127.0.0.1:1/duplicate", CONNECT),
    Line(b"http://127.0.0.1:1/duplicate", CONNECT),
    Line("http://bücher.invalid/".encode(), rc.DNS),
    Line("http://\u2603.invalid/".encode(), INVALID, "IDNA"),
    Line(b"http://" + b"a" * 64 + b".invalid/", INVALID, "too long"),
    Line(b"http://a..invalid/", INVALID, "label"),
    Line(b"http://exa mple.invalid/", INVALID, "host"),
    Line(b"http://[::1]:1/", CONNECT),
    Line(b"http://[::1/", INVALID, "IPv6"),
    Line(b"http://127.0.0.1:1/a%20b", CONNECT),
    Line(b"http://127.0.0.1:1/a b c", CONNECT),
    Line(b"http://127.0.0.1:1/?q=%zz#frag", CONNECT),
    Line(b"http://user:pass@127.0.0.1:1/creds", CONNECT, url="http://user:***@127.0.0.1:1/creds"),
    Line(b"http://127.0.0.1:99999/", INVALID, "ort"),
    Line(b"http://127.0.0.1:0/", INVALID, "port 0"),
    Line(b"http://127.0.0.1:-1/", INVALID, "ort"),
    Line(b"http://127.0.0.1:http/", INVALID, "ort"),
    Line(b"http://127.0.0.1:1:2/", INVALID, "ort"),
    Line(b"http://", INVALID, "no host"),
    Line(b"https://", INVALID, "no host"),
    Line(b"://x", INVALID, "scheme"),
    Line(b"ht!tp://x", INVALID, "scheme"),
    Line(b"http:/127.0.0.1:1/one-slash", INVALID, "//host"),
    Line(b"ftp://127.0.0.1/file", INVALID, "scheme 'ftp'"),
    Line(b"file:///etc/passwd", INVALID, "scheme 'file'"),
    Line(b"javascript:alert(1)", INVALID, "scheme 'javascript'"),
    Line(b"JavaScript:alert(document.cookie)", INVALID, "scheme 'javascript'"),
    Line(b"mailto:someone@example.invalid", INVALID, "scheme 'mailto'"),
    Line(b"data:text/plain,hello", INVALID, "scheme 'data'"),
    Line(b"relative/path", INVALID, "relative"),
    Line(b"/absolute/path", INVALID, "relative"),
    Line(b"=cmd|' /C calc'!A0", INVALID, "relative"),
    Line(b"127.0.0.1:1/no-scheme", CONNECT),
    Line(b"//127.0.0.1:1/scheme-relative", CONNECT),
    Line(b"HTTP://127.0.0.1:1/UPPER", CONNECT),
    Line(b"http://127.0.0.1:1/no-final-newline", CONNECT, ending=b""),
]
ROWS = [line for line in CORPUS if line.error is not None]


def corpus_bytes() -> bytes:
    return b"".join(line.raw + line.ending for line in CORPUS)


def expected_url(line: Line) -> str:
    return line.url if line.url is not None else line.raw.decode("utf-8").strip(" \t\r\n\x0b\x0c")


def check_rows(rows: list[dict[str, object]]) -> None:
    """The invariant: one row per URL line, indexes 0..n-1, each with the line's outcome."""
    assert sorted(int(row["index"]) for row in rows) == list(range(len(ROWS)))  # type: ignore[call-overload]
    by_index = {row["index"]: row for row in rows}
    for index, line in enumerate(ROWS):
        row = by_index[index]
        assert row["url"] == expected_url(line), index
        assert row["error"] == line.error, (index, row["url"], row["error_detail"])
        assert row["ok"] is False and row["status"] is None
        assert row["error_detail"], index
        if line.error == INVALID:
            assert line.detail in str(row["error_detail"]), (index, row["error_detail"])
            assert row["bytes"] == 0


def test_the_corpus_file_holds_exactly_the_bytes_of_the_table() -> None:
    """Editors like to 'fix' BOMs, CRLF and invalid UTF-8: the file must keep every one of them."""
    data = CORPUS_FILE.read_bytes()
    assert data == corpus_bytes(), "run `python tests/test_bad_input.py` to rewrite tests/data/bad_inputs.txt"
    assert data.startswith(BOM) and b"\r\n" in data and b"\x00" in data and b"\xff" in data
    assert max(len(line) for line in data.split(b"\n")) > 100_000
    assert not data.endswith(b"\n")


def test_fetch_all_gives_one_row_per_url_line(fake_dns: list[str]) -> None:
    config = FetchConfig(connect_timeout=0.5, read_timeout=0.5, retries=0)
    start = time.monotonic()
    with CORPUS_FILE.open("rb") as stream:
        results: list[Result] = list(fetch_all(stream, config))
    assert time.monotonic() - start < 10.0
    check_rows([{name: getattr(result, name) for name in FIELDS} for result in results])
    # Names that are not valid hostnames never reach the resolver; the IDN one does, encoded.
    assert "xn--bcher-kva.invalid" in fake_dns
    assert not [name for name in fake_dns if not name.endswith(".invalid") and name not in ("127.0.0.1", "::1")]


def test_dedupe_skips_the_repeat_and_does_not_reuse_its_index(fake_dns: list[str]) -> None:
    config = FetchConfig(connect_timeout=0.5, retries=0, dedupe=True)
    with CORPUS_FILE.open("rb") as stream:
        indexes = sorted(result.index for result in fetch_all(stream, config))
    repeat = next(i for i, line in enumerate(ROWS) if line.raw == b"http://127.0.0.1:1/duplicate") + 1
    assert indexes == [i for i in range(len(ROWS)) if i != repeat]


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_cli_gives_one_row_per_url_line(tmp_path: Path, via: str) -> None:
    out = tmp_path / "out.jsonl"
    args = [cli_command(), "--connect-timeout", "0.5", "--retries", "0", "-o", str(out), "-o", str(tmp_path / "o.csv")]
    with CORPUS_FILE.open("rb") as stdin:
        done = subprocess.run(
            [*args, str(CORPUS_FILE) if via == "file" else "-"],
            stdin=stdin if via == "stdin" else subprocess.DEVNULL,
            env=offline_env(tmp_path),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert b"Traceback" not in done.stderr + done.stdout
    assert f"{len(ROWS)} URLs: 0 ok, 0 HTTP errors, {len(ROWS)} failed".encode() in done.stderr
    check_rows([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])
    # One plain line per row on stdout, whatever the row holds (NUL, ESC and CR are escaped).
    assert len(done.stdout.decode("utf-8").splitlines()) == len(ROWS)
    with (tmp_path / "o.csv").open(encoding="utf-8", newline="") as stream:
        table = list(csv.reader(stream))
    assert table[0] == list(FIELDS) and len(table) == len(ROWS) + 1


def test_cli_an_overlong_line_is_one_invalid_row(tmp_path: Path) -> None:
    """A line past MAX_LINE_BYTES is not held in memory: it becomes one row, and the next line is read."""
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"http://127.0.0.1:1/" + b"a" * (2 * MAX_LINE_BYTES) + b"\nhttp://127.0.0.1:1/after\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [cli_command(), str(urls), "--connect-timeout", "0.5", "--retries", "0", "-q", "-o", str(out)],
        env=offline_env(tmp_path),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
    rows = sorted((json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()), key=lambda r: r["index"])
    assert [row["index"] for row in rows] == [0, 1]
    assert (rows[0]["error"], rows[1]["error"]) == (INVALID, CONNECT)
    assert "longer than" in rows[0]["error_detail"]
    assert len(rows[0]["url"]) < 1000
    assert rows[1]["url"] == "http://127.0.0.1:1/after"


# Arbitrary lines, no network: sources alone decide what is a row and what is skipped.
_line = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"  ", b"#c", b"\xef\xbb\xbf", b"http://", b"ftp://x", b"\x00", b"\xff", b"a.b/c"]),
    st.text(max_size=30).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_line, max_size=30))
def test_every_line_that_is_not_blank_or_a_comment_is_one_target(lines: list[bytes]) -> None:
    stream = [line.replace(b"\n", b" ") + b"\n" for line in lines]
    targets = list(iter_targets(stream, FetchConfig()))
    wanted = 0
    for line in stream:
        text = line.removeprefix(BOM).decode("utf-8", "backslashreplace").strip(" \t\r\n\x0b\x0c")
        wanted += bool(text) and not text.startswith("#")
    assert [target.index for target in targets] == list(range(wanted))
    for target in targets:
        assert (target.url is None) != (target.invalid_reason is None)
        if target.url is not None:
            assert target.url.lower().startswith(("http://", "https://"))


if __name__ == "__main__":
    CORPUS_FILE.parent.mkdir(exist_ok=True)
    CORPUS_FILE.write_bytes(corpus_bytes())
    print(f"wrote {CORPUS_FILE} ({len(CORPUS)} lines, {len(ROWS)} rows)", file=sys.stderr)
