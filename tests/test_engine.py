"""The engine against real loopback servers: retries, failures, TLS, redirects, limits, pools, cancellation."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import IdleWatch, two_hosts_with_the_ca_file_gone_between
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from werkzeug import Response

from pooledfetch import FetchConfig, Result, __version__, fetch_all
from pooledfetch import results as rc
from pooledfetch.demo import DemoServer
from pooledfetch.engine import run
from pooledfetch.errors import ConfigError
from pooledfetch.sources import iter_targets

POOL_FULL = "Connection pool is full, discarding connection"

# Small timeouts, no retries and no backoff unless a test is about them.
FAST = {"connect_timeout": 2.0, "read_timeout": 2.0, "retries": 0, "backoff_factor": 0.0}


def fast(**overrides: object) -> FetchConfig:
    return FetchConfig(**{**FAST, **overrides})  # type: ignore[arg-type]


def fetch(urls: Iterable[str | bytes], config: FetchConfig | None = None) -> list[Result]:
    return sorted(fetch_all(urls, config or fast()), key=lambda r: r.index)


def fetch_one(url: str, config: FetchConfig | None = None) -> Result:
    (result,) = fetch([url], config)
    return result


def received(server: HTTPServer) -> list:
    """The werkzeug requests a pytest-httpserver saw, in order."""
    return [request for request, _ in server.log]


# --- a plain fetch ---------------------------------------------------------------------------------------------


def test_plain_get_fills_the_row(demo_server: DemoServer) -> None:
    url = f"{demo_server.base_url}/html"
    result = fetch_one(url)
    assert result.index == 0
    assert result.url == url
    assert result.final_url == url
    assert (result.method, result.status, result.reason, result.ok) == ("GET", 200, "OK", True)
    assert (result.error, result.error_detail) == ("", "")
    assert result.content_type == "text/html"
    assert result.bytes == len(b"<!doctype html><title>demo</title><h1>pooledfetch demo</h1>\n")
    assert result.redirects == 0 and result.retries == 0
    assert result.ttfb_ms is not None and 0 <= result.ttfb_ms <= result.total_ms
    assert result.started_at.endswith("+00:00")


def test_http_error_status_is_a_response_not_an_error(demo_server: DemoServer) -> None:
    result = fetch_one(f"{demo_server.base_url}/status/404")
    assert (result.status, result.ok, result.error) == (404, False, "")
    assert result.got_response


# --- retries ---------------------------------------------------------------------------------------------------


def test_503_then_200_is_retried_once(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/flaky").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/flaky").respond_with_data("fine", status=200)
    result = fetch_one(httpserver.url_for("/flaky"), fast(retries=2))
    httpserver.check_assertions()
    assert (result.status, result.ok, result.error) == (200, True, "")
    assert result.retries == 1
    assert result.bytes == len("fine")
    assert len(httpserver.log) == 2


def test_503_every_time_gives_the_last_503_after_all_retries(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/down").respond_with_data("busy", status=503)
    result = fetch_one(httpserver.url_for("/down"), fast(retries=2))
    assert (result.status, result.ok, result.error) == (503, False, "")
    assert result.retries == 2
    assert len(httpserver.log) == 3


def test_post_is_not_retried_on_503(httpserver: HTTPServer) -> None:
    """Retrying a POST could repeat its side effects."""
    httpserver.expect_request("/submit", method="POST").respond_with_data("busy", status=503)
    result = fetch_one(httpserver.url_for("/submit"), fast(retries=2, method="POST", data=b"x"))
    assert (result.status, result.retries) == (503, 0)
    assert len(httpserver.log) == 1


def test_retry_after_is_honoured(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/limited").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "1"}
    )
    httpserver.expect_ordered_request("/limited").respond_with_data("ok")
    start = time.monotonic()
    result = fetch_one(httpserver.url_for("/limited"), fast(retries=1))
    elapsed = time.monotonic() - start
    httpserver.check_assertions()
    assert (result.status, result.ok, result.retries) == (200, True, 1)
    # backoff_factor is 0, so only the server's Retry-After can account for the wait.
    assert elapsed >= 0.9


def test_retry_after_beyond_max_retry_wait_gives_up_with_the_429(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/limited").respond_with_data(
        "come back tomorrow", status=429, headers={"Retry-After": "86400"}
    )
    start = time.monotonic()
    result = fetch_one(httpserver.url_for("/limited"), fast(retries=3, max_retry_wait=5.0))
    elapsed = time.monotonic() - start
    assert (result.status, result.ok, result.error) == (429, False, "")
    assert result.retries == 0
    assert len(httpserver.log) == 1  # gave up at once: no second attempt
    assert elapsed < 5.0  # did not sleep even the capped wait


# --- transport failures ----------------------------------------------------------------------------------------


def test_read_timeout(hostile_server) -> None:
    server = hostile_server("silent")
    result = fetch_one(f"{server.base_url}/", fast(read_timeout=0.5))
    assert (result.error, result.status, result.ok) == (rc.TIMEOUT, None, False)
    assert "timed out" in result.error_detail
    assert server.accepted == 1


def test_read_timeout_is_retried_for_get_and_counted(hostile_server) -> None:
    server = hostile_server("silent")
    result = fetch_one(f"{server.base_url}/", fast(read_timeout=0.3, retries=1))
    assert result.error == rc.TIMEOUT
    assert result.retries == 1
    assert server.accepted == 2


def test_timeout_while_reading_the_body_keeps_the_status(hostile_server) -> None:
    server = hostile_server("stall_after_headers")
    result = fetch_one(f"{server.base_url}/", fast(read_timeout=0.5))
    assert (result.status, result.error, result.ok) == (200, rc.TIMEOUT, False)
    assert not result.got_response


def test_truncated_body_is_a_protocol_error(hostile_server) -> None:
    server = hostile_server("truncated_body")
    result = fetch_one(f"{server.base_url}/", fast())
    assert (result.status, result.error, result.ok) == (200, rc.PROTOCOL, False)
    assert "IncompleteRead" in result.error_detail


def test_garbage_instead_of_http_is_a_protocol_error(hostile_server) -> None:
    server = hostile_server("garbage")
    result = fetch_one(f"{server.base_url}/", fast())
    assert (result.status, result.error, result.ok) == (None, rc.PROTOCOL, False)


def test_refused_connection(closed_port: int) -> None:
    result = fetch_one(f"http://127.0.0.1:{closed_port}/", fast())
    assert (result.error, result.status, result.ok) == (rc.CONNECT, None, False)
    assert "refused" in result.error_detail.lower()
    assert result.retries == 0


def test_refused_connection_reports_the_retries_spent(closed_port: int) -> None:
    result = fetch_one(f"http://127.0.0.1:{closed_port}/", fast(retries=2))
    assert (result.error, result.retries) == (rc.CONNECT, 2)


def test_dns_failure(fake_dns: list[str]) -> None:
    result = fetch_one("http://no-such-host.invalid/path", fast())
    assert (result.error, result.status, result.ok) == (rc.DNS, None, False)
    assert "no-such-host.invalid" in result.error_detail
    assert "no-such-host.invalid" in fake_dns


# --- TLS -----------------------------------------------------------------------------------------------------------


def test_tls_with_an_unknown_ca_fails_verification(https_server: DemoServer) -> None:
    result = fetch_one(f"{https_server.base_url}/get", fast())
    assert (result.error, result.status, result.ok) == (rc.SSL, None, False)
    assert "certificate" in result.error_detail.lower()
    assert https_server.requests == 0


def test_a_certificate_that_does_not_verify_is_not_tried_again(https_server: DemoServer) -> None:
    """Each retry met the same certificate after its backoff: 3 handshakes and ~1 s a URL."""
    start = time.monotonic()
    result = fetch_one(f"{https_server.base_url}/get", fast(retries=2, backoff_factor=1.0))
    assert (result.error, result.retries) == (rc.SSL, 0)
    assert time.monotonic() - start < 1.0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_without_verification(https_server: DemoServer) -> None:
    result = fetch_one(f"{https_server.base_url}/get", fast(verify=False))
    assert (result.status, result.ok, result.error) == (200, True, "")
    assert https_server.requests == 1


def test_tls_with_ca_bundle(https_server: DemoServer, ca_pem: str) -> None:
    port = https_server.server_address[1]
    urls = [f"{https_server.base_url}/get", f"https://localhost:{port}/html"]
    results = fetch(urls, fast(ca_bundle=ca_pem))
    assert [(r.status, r.ok, r.error) for r in results] == [(200, True, ""), (200, True, "")]
    assert results[1].content_type == "text/html"


def test_the_ca_bundle_is_loaded_once_for_every_connection_of_the_run(https_server: DemoServer, ca_pem: str) -> None:
    """urllib3 alone reloads it for each new connection (~20 ms of CPU with the OS store); here
    the file is gone before the second host's connection opens, and that connection still verifies."""
    urls = two_hosts_with_the_ca_file_gone_between(https_server, ca_pem)
    results = fetch(urls, fast(ca_bundle=ca_pem, workers=1))
    assert [(r.status, r.error, r.conn_reused) for r in results] == [(200, "", False), (200, "", False)]


def test_a_ca_bundle_wins_over_insecure_hostnames_included(
    https_server: DemoServer, ca_pem: str, fake_dns: list[str]
) -> None:
    port = https_server.server_address[1]
    config = fast(ca_bundle=ca_pem, verify=False)
    right, wrong = fetch([f"{https_server.base_url}/get", f"https://elsewhere.test:{port}/get"], config)
    assert (right.status, right.error) == (200, "")
    assert (wrong.error, wrong.ok) == (rc.SSL, False)


def test_a_ca_bundle_without_certificates_is_a_config_error_before_any_request(
    https_server: DemoServer, tmp_path: Path
) -> None:
    bundle = tmp_path / "not-a-ca.pem"
    bundle.write_text("this is not PEM\n")
    with pytest.raises(ConfigError, match="holds no usable CA certificate"):
        next(iter(fetch_all([f"{https_server.base_url}/get"], fast(ca_bundle=str(bundle)))))
    assert https_server.requests == 0


def test_a_ca_directory_without_hashed_names_is_a_config_error_before_any_request(
    https_server: DemoServer, ca_pem: str, tmp_path: Path
) -> None:
    """OpenSSL reads a CA directory by subject hash at each handshake: a directory of plain PEM
    files (or none) was accepted, and every HTTPS row then failed as `ssl`."""
    (tmp_path / "ca.pem").write_text(Path(ca_pem).read_text())
    with pytest.raises(ConfigError, match="no hashed certificate names"):
        next(iter(fetch_all([f"{https_server.base_url}/get"], fast(ca_bundle=str(tmp_path)))))
    assert https_server.requests == 0


def test_fetch_all_refuses_one_url_given_as_text() -> None:
    """Iterated, a string was one `invalid_url` row per character."""
    with pytest.raises(TypeError, match="iterable of URLs"):
        fetch_all("http://127.0.0.1:9/")
    with pytest.raises(TypeError, match="config must be a FetchConfig"):
        fetch_all(["http://127.0.0.1:9/"], {"workers": 2})  # type: ignore[arg-type]


def test_an_item_that_is_no_url_gets_its_own_row() -> None:
    """A None among the URLs raised AttributeError after the first row: the rest had none."""
    rows = sorted(fetch_all(["http://127.0.0.1:9/", None, 5], fast(retries=0)), key=lambda row: row.index)  # type: ignore[list-item]
    assert [(row.index, row.error) for row in rows] == [(0, rc.CONNECT), (1, rc.INVALID_URL), (2, rc.INVALID_URL)]
    assert rows[1].error_detail == "not a URL: NoneType"


def test_tls_hostname_mismatch_fails_even_with_the_ca(
    https_server: DemoServer, ca_pem: str, fake_dns: list[str]
) -> None:
    port = https_server.server_address[1]
    result = fetch_one(f"https://elsewhere.test:{port}/get", fast(ca_bundle=ca_pem))
    assert (result.error, result.ok) == (rc.SSL, False)
    assert "elsewhere.test" in fake_dns


# --- redirects -------------------------------------------------------------------------------------------------


def test_redirects_are_followed(demo_server: DemoServer) -> None:
    url = f"{demo_server.base_url}/redirect/3"
    result = fetch_one(url)
    assert (result.status, result.ok, result.error) == (200, True, "")
    assert result.redirects == 3
    assert result.url == url
    assert result.final_url == f"{demo_server.base_url}/get"
    assert demo_server.requests == 4


def test_redirects_not_followed_report_the_3xx(demo_server: DemoServer) -> None:
    url = f"{demo_server.base_url}/redirect/3"
    result = fetch_one(url, fast(follow_redirects=False))
    assert (result.status, result.redirects, result.error) == (302, 0, "")
    assert result.ok  # a 3xx is a successful answer when redirects are not followed
    assert result.final_url == url
    assert demo_server.requests == 1


def test_too_many_redirects(demo_server: DemoServer) -> None:
    result = fetch_one(f"{demo_server.base_url}/redirect/5", fast(max_redirects=2))
    assert (result.error, result.ok) == (rc.TOO_MANY_REDIRECTS, False)
    assert result.status == 302
    assert result.redirects == 2
    assert demo_server.requests == 3


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/pub/file", "javascript:alert(1)"])
def test_redirect_to_another_scheme_is_not_followed(httpserver: HTTPServer, location: str) -> None:
    httpserver.expect_request("/go").respond_with_data("", status=302, headers={"Location": location})
    result = fetch_one(httpserver.url_for("/go"))
    assert (result.error, result.ok, result.status) == (rc.BAD_REDIRECT, False, 302)
    assert result.redirects == 0
    assert result.final_url == httpserver.url_for("/go")
    assert len(httpserver.log) == 1


@pytest.mark.parametrize(
    "location",
    [
        pytest.param("http://", id="empty-authority"),
        pytest.param("//", id="scheme-relative-empty-authority"),
        pytest.param("https:///no-host", id="https-no-host"),
        pytest.param("http://127.0.0.1:99999/", id="port-out-of-range"),
        pytest.param("http://exa mple.invalid/", id="space-in-host"),
    ],
)
def test_redirect_to_an_unusable_url_is_a_bad_redirect(
    demo_server: DemoServer, fake_dns: list[str], location: str
) -> None:
    """A Location with no host, a bad port or a bad host is refused, not followed nor blamed on the input.

    The input URL is fine, so `invalid_url` (an input-line class) would be wrong, and an empty
    authority must not be resolved against the current URL (that requests the same URL again).
    """
    url = f"{demo_server.base_url}/redirect-to?url={quote(location, safe='')}"
    result = fetch_one(url)
    assert (result.status, result.ok) == (302, False)
    assert (result.error, result.redirects) == (rc.BAD_REDIRECT, 0), (result.error, result.error_detail)
    assert demo_server.requests == 1
    assert set(fake_dns) <= {"127.0.0.1"}  # the bad host itself was never looked up


def _redirect_then_land(first: HTTPServer, location: str, landing: HTTPServer) -> None:
    first.expect_request("/start").respond_with_data("", status=302, headers={"Location": location})
    landing.expect_request("/landing").respond_with_data("landed")


CREDENTIALS = FetchConfig(
    **FAST,  # type: ignore[arg-type]
    headers=(("Authorization", "Bearer x"), ("Cookie", "session=secret"), ("X-Other", "kept")),
)


def test_authorization_is_kept_on_a_same_origin_redirect(httpserver: HTTPServer) -> None:
    _redirect_then_land(httpserver, "/landing", httpserver)
    result = fetch_one(httpserver.url_for("/start"), CREDENTIALS)
    assert (result.status, result.redirects) == (200, 1)
    start, landing = received(httpserver)
    assert start.headers.get("Authorization") == "Bearer x"
    assert landing.path == "/landing"
    assert landing.headers.get("Authorization") == "Bearer x"
    assert landing.headers.get("Cookie") == "session=secret"


def test_credentials_are_stripped_on_a_redirect_to_another_port(
    httpserver: HTTPServer, second_httpserver: HTTPServer
) -> None:
    _redirect_then_land(httpserver, second_httpserver.url_for("/landing"), second_httpserver)
    result = fetch_one(httpserver.url_for("/start"), CREDENTIALS)
    assert (result.status, result.redirects) == (200, 1)
    assert result.final_url == second_httpserver.url_for("/landing")
    (start,) = received(httpserver)
    assert start.headers.get("Authorization") == "Bearer x"
    (landing,) = received(second_httpserver)
    assert landing.headers.get("Authorization") is None
    assert landing.headers.get("Cookie") is None
    assert landing.headers.get("X-Other") == "kept"


def test_credentials_are_stripped_on_a_redirect_to_another_host(httpserver: HTTPServer, fake_dns: list[str]) -> None:
    other = f"http://other-host.test:{httpserver.port}/landing"
    _redirect_then_land(httpserver, other, httpserver)
    result = fetch_one(httpserver.url_for("/start"), CREDENTIALS)
    assert (result.status, result.redirects, result.final_url) == (200, 1, other)
    start, landing = received(httpserver)
    assert start.headers.get("Authorization") == "Bearer x"
    assert landing.host.startswith("other-host.test")
    assert landing.headers.get("Authorization") is None
    assert landing.headers.get("Cookie") is None


@pytest.mark.parametrize(
    ("status", "method", "body"), [(302, "GET", b""), (303, "GET", b""), (307, "POST", b"payload")]
)
def test_post_redirect_method_and_body(httpserver: HTTPServer, status: int, method: str, body: bytes) -> None:
    httpserver.expect_request("/start").respond_with_data("", status=status, headers={"Location": "/landing"})
    httpserver.expect_request("/landing").respond_with_data("landed")
    result = fetch_one(httpserver.url_for("/start"), fast(method="POST", data=b"payload"))
    assert (result.status, result.redirects) == (200, 1)
    start, landing = received(httpserver)
    assert (start.method, start.get_data()) == ("POST", b"payload")
    assert (landing.method, landing.get_data()) == (method, body)
    if not body:
        assert landing.headers.get("Content-Type") is None


# --- body size limits -----------------------------------------------------------------------------------------


def test_body_larger_than_max_bytes(demo_server: DemoServer) -> None:
    result = fetch_one(f"{demo_server.base_url}/bytes/5000", fast(max_bytes=1000))
    assert (result.status, result.error, result.ok) == (200, rc.BODY_TOO_LARGE, False)
    assert "1000" in result.error_detail


def test_body_exactly_max_bytes_is_fine(demo_server: DemoServer) -> None:
    result = fetch_one(f"{demo_server.base_url}/bytes/1000", fast(max_bytes=1000))
    assert (result.status, result.error, result.bytes) == (200, "", 1000)


def test_gzip_body_counts_decoded_bytes_against_max_bytes(httpserver: HTTPServer) -> None:
    plain = b"a" * 1_000_000
    squeezed = gzip.compress(plain)
    assert len(squeezed) < 10_000
    httpserver.expect_request("/bomb").respond_with_response(
        Response(squeezed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    )
    within = fetch_one(httpserver.url_for("/bomb"), fast(max_bytes=2_000_000))
    assert (within.status, within.error) == (200, "")
    assert within.bytes == len(plain)  # decoded size, not the wire size

    result = fetch_one(httpserver.url_for("/bomb"), fast(max_bytes=100_000))
    assert (result.status, result.error, result.ok) == (200, rc.BODY_TOO_LARGE, False)


# --- what reaches the server ---------------------------------------------------------------------------------


def test_method_headers_and_body_reach_the_server(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/submit", method="POST", data=b'{"a": 1}').respond_with_data("created", status=201)
    config = fast(method="post", data=b'{"a": 1}', headers=(("X-Test", "yes"), ("Content-Type", "application/json")))
    result = fetch_one(httpserver.url_for("/submit"), config)
    httpserver.check_assertions()
    assert (result.method, result.status, result.ok) == ("POST", 201, True)
    (request,) = received(httpserver)
    assert request.headers["X-Test"] == "yes"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Length"] == "8"
    assert request.headers["User-Agent"] == f"pooledfetch/{__version__}"


def test_user_agent_and_removed_default_header(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/h").respond_with_data("ok")
    fetch_one(httpserver.url_for("/h"), fast(user_agent="probe/2", headers=(("Accept", ""),)))
    (request,) = received(httpserver)
    assert request.headers["User-Agent"] == "probe/2"
    assert "Accept" not in request.headers


def test_head_request(demo_server: DemoServer) -> None:
    result = fetch_one(f"{demo_server.base_url}/bytes/500", fast(method="HEAD"))
    assert (result.method, result.status, result.ok, result.bytes) == ("HEAD", 200, True, 0)


# --- pools ---------------------------------------------------------------------------------------------------------


def test_connections_are_reused(demo_server: DemoServer) -> None:
    results = fetch([f"{demo_server.base_url}/get?n={i}" for i in range(200)], FetchConfig(pool_maxsize=5))
    assert len(results) == 200
    assert all(r.ok and r.status == 200 for r in results)
    assert demo_server.requests == 200
    assert 1 <= demo_server.connections <= 5


def test_no_connection_discarded_at_the_defaults(demo_server: DemoServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    urls = [
        f"{demo_server.base_url}/delay/0.01?n={i}" if i % 4 == 0 else f"{demo_server.base_url}/get?n={i}"
        for i in range(300)
    ]
    results = fetch(urls, FetchConfig())
    assert all(r.ok for r in results) and len(results) == 300
    assert not [r for r in caplog.records if POOL_FULL in r.getMessage()]
    assert demo_server.connections <= FetchConfig().pool_maxsize


def test_connection_discards_are_detected_when_workers_exceed_the_pool(
    demo_server: DemoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The check above can fail: more workers than pooled connections and no blocking discards some."""
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    urls = [f"{demo_server.base_url}/delay/0.05?n={i}" for i in range(48)]
    results = fetch(urls, FetchConfig(pool_maxsize=2, workers=8, pool_block=False))
    assert all(r.ok for r in results) and len(results) == 48
    assert [r for r in caplog.records if POOL_FULL in r.getMessage()]
    assert demo_server.connections > 2


def test_waiting_for_a_pooled_connection_is_bounded(demo_server: DemoServer) -> None:
    config = FetchConfig(pool_maxsize=1, workers=3, connect_timeout=0.3, read_timeout=5.0, retries=0)
    assert config.pool_block
    results = fetch([f"{demo_server.base_url}/delay/1?n={i}" for i in range(3)], config)
    assert len(results) == 3
    outcomes = sorted((r.error, r.status) for r in results)
    assert ("", 200) in outcomes
    assert (rc.POOL_TIMEOUT, None) in outcomes
    assert {error for error, _ in outcomes} <= {"", rc.POOL_TIMEOUT}
    assert demo_server.connections == 1


# --- one row per line ----------------------------------------------------------------------------------------


def test_every_line_yields_exactly_one_row(demo_server: DemoServer) -> None:
    base = demo_server.base_url
    lines: list[str | bytes] = [
        f"{base}/get",
        "",
        "# a comment",
        "ftp://127.0.0.1/file",
        "   ",
        "javascript:alert(1)",
        "/relative/without/base",
        "http://[not-closed/",
        b"\xff\xfe not utf-8",
        f"{base}/status/500".encode(),
        "mailto:someone@example.com",
        f"  {base}/html  ",
        "#another comment",
        "http://",
    ]
    results = fetch(lines, fast())
    assert [r.index for r in results] == list(range(10))
    by_index = {r.index: r for r in results}
    assert (by_index[0].status, by_index[0].ok) == (200, True)
    for index in (1, 2, 3, 4, 5, 7, 9):
        assert by_index[index].error == rc.INVALID_URL, by_index[index]
        assert by_index[index].status is None
        assert by_index[index].error_detail
    assert (by_index[6].status, by_index[6].error) == (500, "")
    assert (by_index[8].status, by_index[8].url) == (200, f"{base}/html")
    assert demo_server.requests == 3


LINE_KINDS = st.sampled_from(["ok", "missing", "blank", "comment", "ftp", "relative", "mailto", "bytes"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(LINE_KINDS, max_size=25))
def test_rows_match_url_lines_property(shared_demo_server: DemoServer, kinds: list[str]) -> None:
    base = shared_demo_server.base_url
    make = {
        "ok": f"{base}/get",
        "missing": f"{base}/status/404",
        "blank": "  ",
        "comment": "# nothing",
        "ftp": "ftp://127.0.0.1/x",
        "relative": "some/path",
        "mailto": "mailto:x@y.z",
        "bytes": f"{base}/uuid".encode(),
    }
    lines = [make[kind] for kind in kinds]
    url_kinds = [kind for kind in kinds if kind not in ("blank", "comment")]
    results = list(fetch_all(lines, fast(pool_maxsize=4)))
    assert sorted(r.index for r in results) == list(range(len(url_kinds)))
    for result in results:
        kind = url_kinds[result.index]
        if kind in ("ftp", "relative", "mailto"):
            assert result.error == rc.INVALID_URL
        else:
            assert result.error == ""
            assert result.status == (404 if kind == "missing" else 200)


def test_idle_is_called_on_the_consuming_thread_while_the_run_waits_for_a_slow_row(demo_server: DemoServer) -> None:
    """The CLI flushes its exports then: the fast row must not sit in a buffer until the slow one comes."""
    config = fast(workers=2)
    urls = [f"{demo_server.base_url}/get", f"{demo_server.base_url}/delay/1"]
    watch = IdleWatch()
    watch.consume(run(iter_targets(urls, config), config, idle=watch))
    assert len(watch.rows) == 2
    assert (1, threading.current_thread()) in watch.calls


# --- cancellation --------------------------------------------------------------------------------------------


def test_cancel_after_the_first_row(demo_server: DemoServer) -> None:
    config = fast(pool_maxsize=2, read_timeout=5.0)
    lines = [f"{demo_server.base_url}/delay/0.5?n={i}" for i in range(30)]
    cancel = threading.Event()
    results: list[Result] = []
    for result in run(iter_targets(lines, config), config, cancel=cancel, grace_seconds=0.3):
        results.append(result)
        cancel.set()
    assert sorted(r.index for r in results) == list(range(30))
    assert results[0].ok
    errors = [r.error for r in results]
    assert set(errors) <= {"", rc.CANCELLED, rc.INTERRUPTED}
    # Submission stops at max_in_flight until a row is consumed, and the first row sets `cancel`.
    assert errors.count(rc.CANCELLED) >= len(lines) - config.max_in_flight
    assert demo_server.requests <= config.max_in_flight
    for result in results:
        assert result.url == lines[result.index]
        if result.error:
            assert not result.ok
        if result.error == rc.CANCELLED:
            assert (result.status, result.bytes) == (None, 0)


def test_cancel_abandons_a_request_stuck_on_the_wire_after_the_grace_period(
    demo_server: DemoServer, hostile_server
) -> None:
    stuck = hostile_server("silent")
    config = fast(pool_maxsize=2, read_timeout=5.0)
    lines = [f"{stuck.base_url}/never", f"{demo_server.base_url}/get"]
    cancel = threading.Event()
    results: list[Result] = []
    for result in run(iter_targets(lines, config), config, cancel=cancel, grace_seconds=0.3):
        results.append(result)
        cancel.set()
    first, second = results
    assert (first.index, first.ok) == (1, True)
    assert (second.index, second.error, second.status) == (0, rc.INTERRUPTED, None)
    assert stuck.accepted == 1


def test_worker_loops_end_and_free_a_shared_executor_when_cancelled_after_the_input_ran_out(
    demo_server: DemoServer,
) -> None:
    """Two workers, three targets, all handed out (the third waiting in the inbox) when the run is
    cancelled. The loops were told to end when the input ran out; taking the waiting target back
    must not take that from them, or a shared executor (a Dask worker's, across chunks) never
    gets its threads back."""
    config = fast(workers=2, pool_maxsize=2, read_timeout=5.0)
    lines = [f"{demo_server.base_url}/delay/1?n={i}" for i in range(3)]
    cancel = threading.Event()
    before = demo_server.requests

    def cancel_once_two_are_on_the_wire() -> None:
        deadline = time.monotonic() + 10
        while demo_server.requests - before < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        cancel.set()

    threading.Thread(target=cancel_once_two_are_on_the_wire, daemon=True).start()
    executor = ThreadPoolExecutor(config.workers)
    try:
        results = list(run(iter_targets(lines, config), config, cancel=cancel, executor=executor, grace_seconds=5))
        assert [r.error for r in sorted(results, key=lambda r: r.index)] == ["", "", rc.CANCELLED]
        assert executor.submit(lambda: "free").result(timeout=5) == "free"
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def test_cancel_before_start_sends_nothing(demo_server: DemoServer) -> None:
    cancel = threading.Event()
    cancel.set()
    lines = [f"{demo_server.base_url}/get?n={i}" for i in range(10)] + ["ftp://x/"]
    results = list(fetch_all(lines, fast(), cancel=cancel))
    assert sorted(r.index for r in results) == list(range(11))
    assert {r.error for r in results} == {rc.CANCELLED}
    assert demo_server.requests == 0


def test_a_short_input_starts_no_more_worker_threads_than_it_keeps_busy(demo_server: DemoServer) -> None:
    """Worker loops start as targets go out: three URLs at -w 50 take three threads, not fifty."""
    config = FetchConfig(workers=50)
    executor = ThreadPoolExecutor(config.workers)
    try:
        urls = [f"{demo_server.base_url}/get?i={i}" for i in range(3)]
        rows = list(run(iter_targets(urls, config), config, executor=executor))
        assert sorted(row.status for row in rows) == [200, 200, 200]
        assert 1 <= len(executor._threads) <= 3
    finally:
        executor.shutdown()
