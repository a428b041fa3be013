"""Fault tests against tests/hostile.py: every misbehaving server yields exactly one row, with the
right error class, within its time bound, without a traceback and without memory growing."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import pytest
from hostile import HostileServer, cli_command, full_backlog, offline_env, run_measuring_peak_rss

from pooledfetch import FetchConfig, Result, fetch_all
from pooledfetch import results as rc
from pooledfetch.engine import BODY_CHUNK

# Small timeouts, no retries and no backoff unless a test is about them.
FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "retries": 0, "backoff_factor": 0.0}

StartServer = Callable[..., HostileServer]


def fast(**overrides: object) -> FetchConfig:
    return FetchConfig(**{**FAST, **overrides})


def fetch(urls: Iterable[str], config: FetchConfig) -> list[Result]:
    return sorted(fetch_all(urls, config), key=lambda r: r.index)


def timed_fetch_one(url: str, config: FetchConfig) -> tuple[Result, float]:
    """The single row for `url` and the seconds it took."""
    start = time.monotonic()
    rows = fetch([url], config)
    elapsed = time.monotonic() - start
    assert len(rows) == 1, rows
    assert rows[0].index == 0
    return rows[0], elapsed


@pytest.fixture
def server(hostile_server: StartServer) -> HostileServer:
    """A routing hostile server (see hostile.ROUTES)."""
    return hostile_server()


# --- time ------------------------------------------------------------------------------------------------------


def test_headers_that_never_come_are_a_timeout(server: HostileServer) -> None:
    result, elapsed = timed_fetch_one(server.url("silent"), fast(read_timeout=0.5))
    assert (result.status, result.error, result.ok) == (None, rc.TIMEOUT, False)
    assert elapsed < 2.0


def test_max_time_beats_a_body_that_drips_forever(server: HostileServer) -> None:
    """read_timeout 5 s never fires on a byte every 0.2 s; the 1 s per-URL deadline does."""
    result, elapsed = timed_fetch_one(server.url("drip?every=0.2"), fast(read_timeout=5.0, max_time=1.0))
    assert (result.status, result.error, result.ok) == (200, rc.TIMEOUT, False)
    assert "--max-time" in result.error_detail
    assert 0.9 < elapsed < 3.0
    assert 0 < result.bytes < 20


def test_max_time_beats_headers_that_drip_forever(server: HostileServer) -> None:
    """A status line, then a header line growing by a byte every 0.2 s: --max-time covers the head too.

    The server gives up after 4 s; a client honouring its 1 s deadline is long gone by then.
    """
    result, elapsed = timed_fetch_one(server.url("drip-headers?every=0.2&for=4"), fast(read_timeout=5.0, max_time=1.0))
    assert elapsed < 3.0, f"--max-time 1 s, but the row took {elapsed:.1f} s"
    assert (result.error, result.ok) == (rc.TIMEOUT, False)
    # The head never ended: the row said 200 OK, http.client taking the cut for its end (curl: 000).
    assert (result.status, result.reason) == (None, "")


# `Connection: close` (the default of every hostile route) and keep-alive (`keepalive=1`) differ in
# one way that matters here: http.client drops its connection's socket as soon as it knows the
# response will close it, so anything watching the connection no longer sees the body's socket.
CONNECTION_KINDS = pytest.mark.parametrize("connection", ["close", "keep-alive"])


def _connection_param(connection: str) -> str:
    return "&keepalive=1" if connection == "keep-alive" else ""


@CONNECTION_KINDS
def test_max_time_beats_a_redirect_whose_body_drips(server: HostileServer, connection: str) -> None:
    """The body of a redirect is drained (at most 64 KiB) before the next hop: not past --max-time.

    A byte every 0.2 s: 64 KiB of it would take 3.6 hours; the server gives up after 4 s.
    """
    url = server.url("redirect?to=/ok&drip=0.2&for=4" + _connection_param(connection))
    result, elapsed = timed_fetch_one(url, fast(read_timeout=5.0, max_time=1.0))
    assert elapsed < 3.0, f"--max-time 1 s, but the row took {elapsed:.1f} s"
    # Either the deadline ended it, or the drain gave up early and the next hop made it in time.
    outcome = (result.error, result.status, result.redirects)
    assert outcome in [(rc.TIMEOUT, 302, 0), (rc.TIMEOUT, 302, 1), ("", 200, 1)], outcome


def test_a_connect_timeout_is_a_timeout_with_a_readable_detail() -> None:
    """The detail is for people: no `(<AccountedConnection(...) at 0x7f...>, '...')` tuple repr."""
    with full_backlog() as port:
        result, elapsed = timed_fetch_one(f"http://127.0.0.1:{port}/", fast(connect_timeout=0.5))
    assert (result.status, result.error) == (None, rc.TIMEOUT)
    assert elapsed < 2.0
    assert "timed out" in result.error_detail
    assert "0x" not in result.error_detail and "Connection(" not in result.error_detail, result.error_detail


# --- broken framing and broken connections --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "status", "detail"),
    [
        ("short-body", 200, "IncompleteRead"),
        ("bad-chunked", 200, ""),
        ("reset", 200, "reset"),
        ("close", None, "without response"),
        ("garbage", None, "BadStatusLine"),
        ("no-colon", None, "malformed header line 'no colon here'"),
        ("many-headers?count=5000", None, "more than 100 headers"),
        ("huge-header?size=1048576", None, "LineTooLong"),
    ],
)
def test_broken_responses_are_protocol_errors(
    server: HostileServer, route: str, status: int | None, detail: str
) -> None:
    result, elapsed = timed_fetch_one(server.url(route), fast())
    assert (result.status, result.error, result.ok) == (status, rc.PROTOCOL, False)
    assert detail in result.error_detail
    assert elapsed < 2.0


def test_informational_responses_before_the_final_one_are_skipped(server: HostileServer) -> None:
    """http.client skips only a 100 Continue: a 103 Early Hints was taken for the response."""
    result, _ = timed_fetch_one(server.url("informational?codes=102,103"), fast())
    assert (result.status, result.error, result.bytes) == (200, "", 3)


def test_a_reset_mid_body_keeps_what_arrived(server: HostileServer) -> None:
    result, _ = timed_fetch_one(server.url("reset"), fast())
    assert result.error == rc.PROTOCOL
    assert result.bytes == 1000


# --- redirects --------------------------------------------------------------------------------------------------


def test_a_redirect_loop_stops_at_max_redirects(server: HostileServer) -> None:
    result, elapsed = timed_fetch_one(server.url("redirect-loop?x=1"), fast(max_redirects=3))
    assert (result.status, result.error, result.redirects) == (302, rc.TOO_MANY_REDIRECTS, 3)
    assert len(server.requests_to("redirect-loop")) == 4
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "FILE:///etc/passwd", "ftp://{ftp}/pub", "javascript:alert(1)", "JavaScript:alert(1)"],
)
def test_redirects_off_http_are_refused_never_followed(
    server: HostileServer, hostile_server: StartServer, location: str
) -> None:
    ftp = hostile_server()  # would notice a connection if the ftp:// redirect were followed
    location = location.format(ftp=f"127.0.0.1:{ftp.port}")
    result, _ = timed_fetch_one(server.url("redirect?to=" + quote(location, safe="")), fast())
    assert (result.status, result.error, result.redirects) == (302, rc.BAD_REDIRECT, 0)
    assert "scheme" in result.error_detail
    assert result.final_url == server.url("redirect?to=" + quote(location, safe=""))
    assert len(server.requests) == 1
    assert ftp.accepted == 0


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("to=", "an empty Location header"),
        ("to=%20", "an empty Location header"),
        ("to=/ok&also=/status", "2 different Location headers"),
    ],
)
def test_a_redirect_without_one_usable_location_is_refused(server: HostileServer, query: str, detail: str) -> None:
    """An empty Location led back to the same URL until --max-redirects; two were joined by a comma."""
    result, _ = timed_fetch_one(server.url(f"redirect?{query}"), fast())
    assert (result.status, result.error, result.redirects) == (302, rc.BAD_REDIRECT, 0)
    assert detail in result.error_detail
    assert len(server.requests) == 1


def test_a_location_that_is_not_utf8_is_followed_percent_encoded(server: HostileServer) -> None:
    result, _ = timed_fetch_one(server.url("redirect?to=/ok%3Fname%3D%FF%FE"), fast())
    assert (result.status, result.error, result.redirects) == (200, "", 1)
    assert result.final_url == server.url("ok?name=%FF%FE")


@pytest.mark.parametrize(("code", "method"), [(303, "GET"), (307, "POST")])
def test_the_row_gives_the_method_of_the_last_request_sent(server: HostileServer, code: int, method: str) -> None:
    result, _ = timed_fetch_one(server.url(f"redirect?to=/ok&code={code}"), fast(method="POST", data=b"a=1"))
    assert (result.status, result.redirects, result.method) == (200, 1, method)
    assert server.requests_to("ok")[0].method == method


# --- bodies too large --------------------------------------------------------------------------------------------


def test_a_five_gigabyte_body_stops_at_max_bytes(server: HostileServer) -> None:
    result, elapsed = timed_fetch_one(server.url("huge"), fast(max_bytes=5_000_000))
    assert (result.status, result.error, result.ok) == (200, rc.BODY_TOO_LARGE, False)
    assert 5_000_000 < result.bytes <= 5_000_000 + BODY_CHUNK
    assert elapsed < 3.0


@pytest.mark.parametrize("route", ["gzip-bomb", "deflate-bomb"])
def test_a_decompression_bomb_stops_at_max_bytes_decoded(server: HostileServer, route: str) -> None:
    result, elapsed = timed_fetch_one(server.url(route), fast(max_bytes=10_000_000))
    assert (result.status, result.error, result.ok) == (200, rc.BODY_TOO_LARGE, False)
    # Decoding is bounded per read: a little over the limit, never a gigabyte.
    assert 10_000_000 < result.bytes <= 10_000_000 + 2 * BODY_CHUNK
    assert elapsed < 3.0


# --- retries -------------------------------------------------------------------------------------------------------


def test_429_retry_after_then_200(server: HostileServer) -> None:
    result, elapsed = timed_fetch_one(server.url("status?code=429&after=1&times=1&key=a"), fast(retries=2))
    assert (result.status, result.error, result.retries) == (200, "", 1)
    assert result.total_ms >= 950
    assert elapsed < 3.0


@pytest.mark.parametrize("code", [413, 429, 503])
def test_only_the_statuses_of_retry_status_are_retried_retry_after_or_not(server: HostileServer, code: int) -> None:
    """urllib3 retries any 413, 429 or 503 with a Retry-After, whatever its status_forcelist:
    `--retry-status 500` still sent each of them three times."""
    url = server.url(f"status?code={code}&after=0&key=forcelist-{code}")
    result, _ = timed_fetch_one(url, fast(retries=2, retry_statuses=(500,)))
    assert (result.status, result.retries) == (code, 0)
    assert len(server.requests_to("status")) == 1


@pytest.mark.parametrize("route", ["garbage", "no-colon", "many-headers?count=500", "huge-header?size=100000"])
def test_a_response_that_breaks_http_is_not_sent_for_again(server: HostileServer, route: str) -> None:
    """It breaks the same way each time: the row came after every retry's backoff (curl does not retry either)."""
    result, elapsed = timed_fetch_one(server.url(route), fast(retries=2, backoff_factor=1.0))
    assert (result.error, result.retries) == (rc.PROTOCOL, 0)
    assert len(server.requests_to(route.split("?")[0])) == 1
    assert elapsed < 1.0


def test_a_connection_closed_without_a_word_is_still_retried(server: HostileServer) -> None:
    """What a stale keep-alive connection gives (RemoteDisconnected): worth another try."""
    result, _ = timed_fetch_one(server.url("close"), fast(retries=2))
    assert (result.error, result.retries) == (rc.PROTOCOL, 2)
    assert len(server.requests_to("close")) == 3


@pytest.mark.parametrize("after", ["soon", "1.5", "-5"])
def test_an_unreadable_retry_after_falls_back_to_the_backoff(server: HostileServer, after: str) -> None:
    """urllib3 raised InvalidHeader, and the row lost the 503 it had."""
    retried, _ = timed_fetch_one(server.url(f"status?code=503&after={after}&times=1&key={after}"), fast(retries=1))
    assert (retried.status, retried.error, retried.retries) == (200, "", 1)
    given_up, _ = timed_fetch_one(server.url(f"status?code=503&after={after}"), fast(retries=0))
    assert (given_up.status, given_up.error, given_up.retries) == (503, "", 0)


def test_retries_cut_short_by_max_time_count_only_those_made(server: HostileServer) -> None:
    """The row said all 5 retries were made, with one request sent."""
    result, _ = timed_fetch_one(server.url("silent?for=3"), fast(read_timeout=5.0, max_time=1.0, retries=5))
    assert (result.error, result.retries) == (rc.TIMEOUT, 0)
    assert len(server.requests_to("silent")) == 1


def test_503_three_times_then_200(server: HostileServer) -> None:
    result, elapsed = timed_fetch_one(server.url("status?code=503&times=3&key=b"), fast(retries=3))
    assert (result.status, result.error, result.retries, result.ok) == (200, "", 3, True)
    assert len(server.requests_to("status")) == 4
    assert elapsed < 2.0


@pytest.mark.parametrize("max_time", [None, 30.0, 2.0])
def test_retry_after_a_day_gives_up_at_once_with_the_429(server: HostileServer, max_time: float | None) -> None:
    result, elapsed = timed_fetch_one(
        server.url(f"status?code=429&after=86400&key=day{max_time}"), fast(retries=3, max_time=max_time)
    )
    assert (result.status, result.error, result.ok, result.retries) == (429, "", False, 0)
    assert len(server.requests_to("status")) == 1
    assert elapsed < 2.0


def test_retry_after_longer_than_max_time_gives_up_at_once(server: HostileServer) -> None:
    """Retry-After 5 s is within --max-retry-wait, but not within a 1 s --max-time."""
    result, elapsed = timed_fetch_one(server.url("status?code=503&after=5&key=c"), fast(retries=3, max_time=1.0))
    assert (result.status, result.retries) == (503, 0)
    assert elapsed < 1.5


def test_a_503_with_an_endless_body_is_retried_without_reading_it_all(server: HostileServer) -> None:
    """1 MB arrives at once, then a byte every 0.2 s of a promised 10 GB: the retry must not wait for it.

    pools.drain_bounded reads at most pools.DRAIN_LIMIT (64 KiB) of an unwanted body; the server gives up
    after 4 s, so a client draining the whole body shows up as a 4 s row.
    """
    url = server.url("endless-error?code=503&times=1&key=d&for=4")
    result, elapsed = timed_fetch_one(url, fast(retries=1, read_timeout=5.0))
    assert (result.status, result.error, result.retries) == (200, "", 1)
    assert elapsed < 2.0, f"the 503's body was drained in full before the retry ({elapsed:.1f} s)"


@CONNECTION_KINDS
def test_max_time_bounds_the_drain_of_a_dripping_503_before_its_retry(server: HostileServer, connection: str) -> None:
    """The 503's body drips from its first byte: draining it before the retry must stop at --max-time."""
    url = server.url(f"endless-error?code=503&times=1&key=e-{connection}&fast=0&for=4" + _connection_param(connection))
    result, elapsed = timed_fetch_one(url, fast(retries=1, read_timeout=5.0, max_time=1.5))
    assert elapsed < 3.0, f"--max-time 1.5 s, but the row took {elapsed:.1f} s"
    # Either the deadline ended it, or the drain gave up early and the retry made it in time.
    assert result.error == rc.TIMEOUT or (result.status, result.error, result.retries) == (200, "", 1), result


# --- a server that never reads ---------------------------------------------------------------------------------


def test_a_big_post_to_a_server_that_never_reads_ends_in_time(hostile_server: StartServer) -> None:
    sink = hostile_server("never_read")
    config = fast(method="POST", data=b"x" * 50_000_000, connect_timeout=0.5, read_timeout=5.0)
    result, elapsed = timed_fetch_one(f"{sink.base_url}/upload", config)
    assert result.status is None and result.error
    assert elapsed < 3.0
    assert sink.accepted == 1  # a POST is not retried


def test_a_big_post_to_a_server_that_never_reads_is_a_timeout(hostile_server: StartServer) -> None:
    """The send blocks once the socket buffers are full; that is the connect/send timeout firing."""
    sink = hostile_server("never_read")
    config = fast(method="POST", data=b"x" * 50_000_000, connect_timeout=0.5, read_timeout=5.0)
    result, _ = timed_fetch_one(f"{sink.base_url}/upload", config)
    assert result.error == rc.TIMEOUT, f"{result.error}: {result.error_detail}"


def test_cli_big_post_to_a_server_that_never_reads(hostile_server: StartServer, tmp_path: Path) -> None:
    sink = hostile_server("never_read")
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 50_000_000)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{sink.base_url}/upload\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    start = time.monotonic()
    done = subprocess.run(
        [cli_command(), str(urls), "-d", f"@{body}", "--connect-timeout", "0.5", "--read-timeout", "5"]
        + ["-q", "-o", str(out)],
        env=offline_env(tmp_path),
        capture_output=True,
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert b"Traceback" not in done.stderr
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (row["method"], row["status"], row["error"]) == ("POST", None, rc.TIMEOUT)
    assert elapsed < 8.0


# --- credentials on redirects -------------------------------------------------------------------------------------

CREDENTIAL_HEADERS = {"Authorization": "Bearer s3cret", "Cookie": "session=s3cret", "Proxy-Authorization": "Basic eDp5"}


def test_credential_headers_do_not_follow_a_redirect_to_another_port(
    server: HostileServer, hostile_server: StartServer
) -> None:
    other = hostile_server()
    url = server.url("redirect?to=" + quote(other.url("ok?landed=1"), safe=""))
    result, _ = timed_fetch_one(url, fast(headers=tuple(CREDENTIAL_HEADERS.items())))
    assert (result.status, result.redirects) == (200, 1)
    (first,) = server.requests
    (second,) = other.requests
    assert {name: first.header(name) for name in CREDENTIAL_HEADERS} == CREDENTIAL_HEADERS
    assert {name: second.header(name) for name in CREDENTIAL_HEADERS} == dict.fromkeys(CREDENTIAL_HEADERS)


def test_credential_headers_do_not_follow_a_redirect_to_another_host(
    server: HostileServer, fake_dns: list[str]
) -> None:
    """Same server, other name: a.test → b.test (both 127.0.0.1 through fake_dns)."""
    url = f"http://a.test:{server.port}/redirect?to=" + quote(f"http://b.test:{server.port}/ok", safe="")
    result, _ = timed_fetch_one(url, fast(headers=tuple(CREDENTIAL_HEADERS.items())))
    assert (result.status, result.redirects) == (200, 1)
    first, second = server.requests
    assert first.header("Host") == f"a.test:{server.port}" and second.header("Host") == f"b.test:{server.port}"
    assert first.header("Authorization") == "Bearer s3cret"
    assert {name: second.header(name) for name in CREDENTIAL_HEADERS} == dict.fromkeys(CREDENTIAL_HEADERS)


def test_a_host_header_given_goes_to_its_own_server_only(server: HostileServer, fake_dns: list[str]) -> None:
    """`-H 'Host: vhost.test'` was sent on to b.test after a redirect: the row named b.test's
    URL while the request asked for vhost.test there. A same-server hop keeps it."""
    back = f"http://a.test:{server.port}/ok"
    away = f"http://b.test:{server.port}/redirect?to=" + quote(back, safe="")
    url = f"http://a.test:{server.port}/redirect?to=" + quote(away, safe="")
    result, _ = timed_fetch_one(url, fast(headers=(("Host", "vhost.test"),)))
    assert (result.status, result.redirects, result.final_url) == (200, 2, back)
    assert [request.header("Host") for request in server.requests] == [
        "vhost.test",
        f"b.test:{server.port}",
        f"a.test:{server.port}",
    ]
    same_server = f"http://a.test:{server.port}/redirect?to=" + quote("/ok", safe="")
    timed_fetch_one(same_server, fast(headers=(("Host", "vhost.test"),)))
    assert [request.header("Host") for request in server.requests[3:]] == ["vhost.test", "vhost.test"]


@pytest.mark.parametrize("via", ["the line", "a Location"])
def test_final_url_names_the_path_the_request_line_carried(server: HostileServer, via: str) -> None:
    """Requoting makes `%2e%2e` a `..` that urllib3 removes on the wire: the row said
    `/x/../ok` for a request for `/ok` (and --save-dir named its file after the former)."""
    dotted = f"http://127.0.0.1:{server.port}/x/%2e%2e/ok"
    url = dotted if via == "the line" else server.url("redirect?to=" + quote(dotted, safe=""))
    result, _ = timed_fetch_one(url, fast())
    assert (result.status, result.final_url) == (200, f"http://127.0.0.1:{server.port}/ok")
    assert server.requests[-1].path == "/ok"


def test_url_credentials_do_not_follow_a_redirect_to_another_port(
    server: HostileServer, hostile_server: StartServer
) -> None:
    other = hostile_server()
    url = f"http://user:s3cret@127.0.0.1:{server.port}/redirect?to=" + quote(other.url("ok"), safe="")
    result, _ = timed_fetch_one(url, fast())
    assert (result.status, result.redirects) == (200, 1)
    assert (server.requests[0].header("Authorization") or "").startswith("Basic ")
    assert other.requests[0].header("Authorization") is None


def test_cli_credential_headers_do_not_follow_a_redirect(
    server: HostileServer, hostile_server: StartServer, tmp_path: Path
) -> None:
    """-H on the command line, redirects to another port and to another name (localhost)."""
    other = hostile_server()
    urls = tmp_path / "urls.txt"
    urls.write_text(
        server.url("redirect?to=" + quote(other.url("ok?via=port"), safe=""))
        + "\n"
        + server.url("redirect?to=" + quote(f"http://localhost:{server.port}/ok?via=host", safe=""))
        + "\n",
        encoding="utf-8",
    )
    headers = [arg for name, value in CREDENTIAL_HEADERS.items() for arg in ("-H", f"{name}: {value}")]
    done = subprocess.run(
        [cli_command(), str(urls), *headers, "--retries", "0", "--timeout", "2", "-o", str(tmp_path / "out.jsonl")],
        env=offline_env(tmp_path),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((row["index"], row["status"], row["redirects"]) for row in rows) == [(0, 200, 1), (1, 200, 1)]
    for request in server.requests_to("redirect"):
        assert {name: request.header(name) for name in CREDENTIAL_HEADERS} == CREDENTIAL_HEADERS
    landed = server.requests_to("ok") + other.requests_to("ok")
    assert sorted(request.query["via"] for request in landed) == ["host", "port"]
    for request in landed:
        assert {name: request.header(name) for name in CREDENTIAL_HEADERS} == dict.fromkeys(CREDENTIAL_HEADERS)


# --- everything at once, in a real process: rows, exit code and peak memory -------------------------------------

# Every behaviour, some several times, with the error class each row must have under --max-time 3
# (None: bounded by `for=4` on the server and asserted in its own test above).
ALL_BEHAVIOURS: list[tuple[str, str | None]] = [
    ("silent", rc.TIMEOUT),
    ("drip?every=0.2", rc.TIMEOUT),
    ("drip-headers?every=0.2&for=4", rc.TIMEOUT),
    ("short-body", rc.PROTOCOL),
    ("bad-chunked", rc.PROTOCOL),
    ("reset", rc.PROTOCOL),
    ("close", rc.PROTOCOL),
    ("garbage", rc.PROTOCOL),
    ("no-colon", rc.PROTOCOL),
    ("many-headers", rc.PROTOCOL),
    ("huge-header", rc.PROTOCOL),
    ("redirect-loop", rc.TOO_MANY_REDIRECTS),
    ("redirect?to=" + quote("file:///etc/passwd", safe=""), rc.BAD_REDIRECT),
    ("redirect?to=" + quote("ftp://127.0.0.1:1/", safe=""), rc.BAD_REDIRECT),
    ("redirect?to=" + quote("javascript:alert(1)", safe=""), rc.BAD_REDIRECT),
    ("redirect?to=/ok&drip=0.2&for=4", None),
    ("status?code=429&after=1&times=1&key=rss-429", ""),
    ("status?code=503&times=1&key=rss-503", ""),
    ("status?code=429&after=86400&key=rss-day", ""),
    ("endless-error?code=503&times=1&key=rss-endless&for=4", None),
    ("ok", ""),
] + [(f"{bomb}?n={n}", rc.BODY_TOO_LARGE) for bomb in ("huge", "gzip-bomb", "deflate-bomb") for n in range(4)]

RSS_LIMIT_KB = 200 * 1024


def test_peak_memory_of_a_run_over_every_behaviour(server: HostileServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    expected = ALL_BEHAVIOURS + [("ftp://127.0.0.1/not-fetched", rc.INVALID_URL), ("http://", rc.INVALID_URL)]
    lines = [server.url(path) if "://" not in path else path for path, _ in expected]
    urls.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = [cli_command(), str(urls), "--max-time", "3", "--max-bytes", "20MB", "--retries", "1"]
    args += ["--backoff-factor", "0", "-q", "-o", str(out)]
    start = time.monotonic()
    code, peak_kb, stdout, stderr = run_measuring_peak_rss(args, offline_env(tmp_path), tmp_path)
    elapsed = time.monotonic() - start
    assert code == 1, stderr
    assert b"Traceback" not in stderr and stdout == b""
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(len(lines)))
    by_index = {row["index"]: row for row in rows}
    for index, (path, error) in enumerate(expected):
        assert by_index[index]["url"] == lines[index]
        if error is not None:
            assert by_index[index]["error"] == error, path
            assert by_index[index]["total_ms"] < 5000, path
    print(f"peak RSS of the CLI over {len(lines)} hostile URLs: {peak_kb / 1024:.1f} MB in {elapsed:.1f} s")
    assert peak_kb < RSS_LIMIT_KB, f"peak RSS {peak_kb / 1024:.0f} MB"
