"""The shared transport: headers, the capped Retry, pools, TLS settings, cookies and proxies."""

from __future__ import annotations

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from urllib3 import HTTPResponse
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util import SKIP_HEADER

from pooledfetch import FetchConfig, __version__, fetch_all
from pooledfetch import results as rc
from pooledfetch.config import DEFAULT_MAX_RETRY_WAIT
from pooledfetch.demo import DemoServer
from pooledfetch.session import CappedRetry, Transport, build_headers, canonical_url

FAST = {"connect_timeout": 2.0, "read_timeout": 2.0, "retries": 0, "backoff_factor": 0.0}


def fast(**overrides: object) -> FetchConfig:
    return FetchConfig(**{**FAST, **overrides})  # type: ignore[arg-type]


# --- build_headers --------------------------------------------------------------------------------------------


def test_default_headers() -> None:
    headers = build_headers(FetchConfig())
    assert headers["User-Agent"] == f"pooledfetch/{__version__}"
    assert headers["Accept"] == "*/*"
    assert headers["Connection"] == "keep-alive"
    assert "gzip" in headers["Accept-Encoding"] and "deflate" in headers["Accept-Encoding"]


def test_header_overrides_a_default_case_insensitively() -> None:
    headers = build_headers(FetchConfig(headers=(("user-agent", "custom/1"), ("ACCEPT", "application/json"))))
    assert headers["User-Agent"] == "custom/1"
    assert headers["Accept"] == "application/json"
    assert sum(1 for name in headers if name.lower() == "user-agent") == 1


def test_header_is_added_and_the_last_value_wins() -> None:
    headers = build_headers(FetchConfig(headers=(("X-Token", "one"), ("X-Token", "two"), ("X-Other", "3"))))
    assert headers["x-token"] == "two"
    assert headers["X-Other"] == "3"


def test_empty_value_removes_a_default_header() -> None:
    headers = build_headers(FetchConfig(headers=(("Accept-Encoding", ""), ("connection", ""))))
    # urllib3 fills in Accept-Encoding itself unless told to skip it.
    assert headers["Accept-Encoding"] == SKIP_HEADER
    assert "Connection" not in headers
    assert headers["User-Agent"] == f"pooledfetch/{__version__}"  # the others stay


def test_empty_value_after_a_value_removes_it_and_unknown_names_are_harmless() -> None:
    headers = build_headers(FetchConfig(headers=(("X-Token", "one"), ("X-Token", ""), ("X-Never-Set", ""))))
    assert "X-Token" not in headers
    assert "X-Never-Set" not in headers


def test_user_agent_option() -> None:
    assert build_headers(FetchConfig(user_agent="probe/9"))["User-Agent"] == "probe/9"


def test_removed_user_agent_is_not_sent(httpserver: HTTPServer) -> None:
    """`-H 'User-Agent:'` removes the header (curl's convention): urllib3 must not put its own back."""
    httpserver.expect_request("/h").respond_with_data("ok")
    removed = (("User-Agent", ""), ("Accept-Encoding", ""))
    (result,) = fetch_all([httpserver.url_for("/h")], fast(headers=removed))
    assert result.ok
    ((request, _),) = httpserver.log
    assert "User-Agent" not in request.headers, request.headers.get("User-Agent")
    assert "Accept-Encoding" not in request.headers, request.headers.get("Accept-Encoding")


# --- CappedRetry ------------------------------------------------------------------------------------------------


def _capped(max_wait: float, respect_retry_after_header: bool = True) -> CappedRetry:
    retry = CappedRetry(total=3, status_forcelist=(429, 503), respect_retry_after_header=respect_retry_after_header)
    retry.max_wait = max_wait
    return retry


def _response(status: int, retry_after: str | None) -> HTTPResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return HTTPResponse(body=b"", headers=headers, status=status, preload_content=False)


def test_capped_retry_new_keeps_max_wait() -> None:
    retry = _capped(7.5)
    copy = retry.new(total=1)
    assert isinstance(copy, CappedRetry)
    assert copy.max_wait == 7.5
    assert copy.total == 1
    assert retry.max_wait == 7.5
    assert CappedRetry().max_wait == DEFAULT_MAX_RETRY_WAIT


def test_capped_retry_increment_keeps_max_wait_and_records_history() -> None:
    retry = _capped(5.0).increment(method="GET", url="/x", response=_response(503, "2"))
    assert isinstance(retry, CappedRetry)
    assert retry.max_wait == 5.0
    assert len(retry.history) == 1 and retry.history[0].status == 503
    again = retry.increment(method="GET", url="/x", response=_response(429, None))
    assert again.max_wait == 5.0 and len(again.history) == 2


def test_capped_retry_gives_up_on_a_long_retry_after() -> None:
    with pytest.raises(MaxRetryError) as caught:
        _capped(5.0).increment(method="GET", url="/x", response=_response(429, "3600"))
    assert isinstance(caught.value.reason, ResponseError)
    assert "3600" in str(caught.value.reason) and "max-retry-wait" in str(caught.value.reason)


def test_capped_retry_cap_survives_new() -> None:
    """The cap must hold on the copies urllib3 makes for every attempt, not only on the first."""
    retry = _capped(5.0).new(total=2).increment(method="GET", url="/x", response=_response(503, "1"))
    with pytest.raises(MaxRetryError):
        retry.increment(method="GET", url="/x", response=_response(503, "10"))


def test_capped_retry_ignores_retry_after_when_not_respected() -> None:
    retry = _capped(5.0, respect_retry_after_header=False)
    assert len(retry.increment(method="GET", url="/x", response=_response(429, "3600")).history) == 1


# --- Transport ---------------------------------------------------------------------------------------------------


def test_transport_uses_one_adapter_with_the_configured_retry() -> None:
    config = FetchConfig(pool_maxsize=7, pool_connections=3, retries=4, max_retry_wait=9.0, connect_timeout=1.5)
    transport = Transport(config)
    try:
        assert transport.session.get_adapter("http://a.example/") is transport.adapter
        assert transport.session.get_adapter("https://a.example/") is transport.adapter
        assert transport.session.trust_env is False
        retry = transport.adapter.max_retries
        assert isinstance(retry, CappedRetry)
        assert (retry.total, retry.max_wait, retry.raise_on_status) == (4, 9.0, False)
        assert "POST" not in retry.allowed_methods
        assert transport.adapter._pool_maxsize == 7  # noqa: SLF001 - no public accessor
        pools = transport.adapter.poolmanager.pool_classes_by_scheme
        assert pools["http"].pool_wait == 1.5 and pools["https"].pool_wait == 1.5
    finally:
        transport.close()


def test_transport_verify_setting(ca_pem: str) -> None:
    for config, expected in [
        (FetchConfig(), True),
        (FetchConfig(verify=False), False),
        (FetchConfig(ca_bundle=ca_pem), ca_pem),
    ]:
        transport = Transport(config)
        try:
            assert transport.verify == expected
        finally:
            transport.close()


def test_ca_bundle_wins_over_requests_ca_bundle_env(
    https_server: DemoServer, ca_pem: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "does-not-exist.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "does-not-exist.pem"))
    (result,) = fetch_all([f"{https_server.base_url}/get"], fast(ca_bundle=ca_pem))
    assert (result.status, result.ok) == (200, True)


def test_requests_ca_bundle_env_is_not_read(
    https_server: DemoServer, ca_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment settings are not re-read per request: the env CA is not trusted implicitly either."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_pem)
    (result,) = fetch_all([f"{https_server.base_url}/get"], fast())
    assert result.error == rc.SSL


def test_no_cookies_are_kept_between_urls(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/set").respond_with_data("set", headers={"Set-Cookie": "session=secret; Path=/"})
    httpserver.expect_ordered_request("/check").respond_with_data("checked")
    urls = [httpserver.url_for("/set"), httpserver.url_for("/check")]
    results = list(fetch_all(urls, fast(pool_maxsize=1)))  # one worker: /set completes before /check
    httpserver.check_assertions()
    assert all(r.ok for r in results)
    (_, check) = [request for request, _ in httpserver.log]
    assert check.path == "/check"
    assert check.headers.get("Cookie") is None


def test_environment_proxy_is_used(demo_server: DemoServer, fake_dns: list[str], monkeypatch) -> None:
    """http_proxy is read at start: the request goes to the (loopback) proxy, which never resolves the name."""
    monkeypatch.setenv("http_proxy", demo_server.base_url)
    (result,) = fetch_all(["http://behind-proxy.invalid/get"], fast())
    assert (result.status, result.ok, result.error) == (200, True, "")
    assert demo_server.requests == 1
    assert "behind-proxy.invalid" not in fake_dns


def test_no_proxy_bypasses_the_environment_proxy(demo_server: DemoServer, fake_dns: list[str], monkeypatch) -> None:
    monkeypatch.setenv("http_proxy", demo_server.base_url)
    monkeypatch.setenv("no_proxy", "behind-proxy.invalid")
    (result,) = fetch_all(["http://behind-proxy.invalid/get"], fast())
    assert result.error == rc.DNS
    assert demo_server.requests == 0
    assert "behind-proxy.invalid" in fake_dns


# --- the canonical-URL fast path ------------------------------------------------------------------------------

_HOST = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)
# Characters the fast path takes, and some it must refuse.
_CANONICAL_CHARS = "abcXYZ019-._~!$&'()*+,;=:@/?"
_ANY_CHARS = _CANONICAL_CHARS + "%#[] é"


def _prepared_by_requests(url: str) -> str | None:
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    return prepared.url


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP"]),
    host=_HOST,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    rest=st.one_of(st.text(alphabet=_CANONICAL_CHARS, max_size=30), st.text(alphabet=_ANY_CHARS, max_size=30)),
)
def test_the_fast_path_agrees_with_requests_prepare_url(scheme: str, host: str, port: int | None, rest: str) -> None:
    """Whenever canonical_url() answers, it answers exactly what requests' prepare_url would."""
    url = f"{scheme}://{host}{f':{port}' if port else ''}{rest}"
    fast = canonical_url(url)
    if fast is not None:
        assert fast == _prepared_by_requests(url)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://h.example?x=1", "http://h.example/?x=1"),
        ("https://x.org/a.b/c.d?e.f", "https://x.org/a.b/c.d?e.f"),
        ("http://a.example/x?y=%7E", None),  # requoting would rewrite the escape
        ("http://a.example/x?", None),  # requests drops an empty query
        ("http://A.example/", None),  # the host would be lowercased
        ("http://a.example/x/../y", None),  # dot segments are removed
        ("http://a.example/a b", None),  # the space would be quoted
        ("http://user:pw@a.example/", None),  # credentials go to the Authorization header
    ],
)
def test_the_fast_path_takes_only_canonical_urls(url: str, expected: str | None) -> None:
    assert canonical_url(url) == expected
    if expected is not None:
        assert _prepared_by_requests(url) == expected


def test_pools_past_pool_connections_are_evicted_and_opened_again() -> None:
    # Three origins, room for two pools: each visit to a third evicts (closes) the oldest pool,
    # and a later request to that origin must get a live pool, never a ClosedPoolError.
    with DemoServer() as first, DemoServer() as second, DemoServer() as third:
        servers = [first, second, third]
        urls = [f"{servers[i % 3].base_url}/status/200?{i}" for i in range(12)]
        results = list(fetch_all(urls, FetchConfig(workers=1, pool_connections=2)))
        assert [result.status for result in results] == [200] * 12
        # Every visit found its origin's pool evicted since the last one: a new connection each time.
        assert sum(server.connections for server in servers) == 12


def test_the_pool_of_an_origin_is_remembered_while_the_manager_has_room(demo_server: DemoServer) -> None:
    transport = Transport(fast())
    try:
        for _ in range(3):
            response = transport.send(transport.prepare(f"{demo_server.base_url}/status/200"))
            response.read()
            response.release_conn()
        assert len(transport.adapter.poolmanager.pools) == 1
        assert demo_server.connections == 1
    finally:
        transport.close()
