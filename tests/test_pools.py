"""Connection accounting, checked against what a real loopback server counted itself."""

from __future__ import annotations

import pytest
from conftest import TLSDemoServer

from pooledfetch import FetchConfig, fetch_all
from pooledfetch.demo import DemoServer
from pooledfetch.engine import RunProgress, run
from pooledfetch.sources import iter_targets


def test_300_urls_over_6_workers_open_at_most_6_connections(demo_server: DemoServer) -> None:
    config = FetchConfig(pool_maxsize=6, workers=6, retries=0)
    urls = [f"{demo_server.base_url}/get?{i}" for i in range(300)]
    progress = RunProgress()

    results = list(run(iter_targets(urls, config), config, progress=progress))

    assert len(results) == 300 and all(result.ok for result in results)
    assert demo_server.connections <= 6
    assert progress.accounting.connections_opened == demo_server.connections
    assert progress.accounting.requests_sent == 300 == demo_server.requests
    reused = sum(1 for result in results if result.conn_reused)
    assert reused >= 294
    # Every connection the server saw shows up as exactly one row with a new connection.
    assert 300 - reused == demo_server.connections
    assert all(result.connect_ms == 0.0 for result in results if result.conn_reused)
    assert all(result.pool_wait_ms is not None and result.pool_wait_ms >= 0 for result in results)


def test_over_https_connect_ms_includes_the_handshake(https_server: TLSDemoServer, ca_pem: str) -> None:
    config = FetchConfig(pool_maxsize=2, workers=2, retries=0, ca_bundle=ca_pem)
    results = list(fetch_all([f"{https_server.base_url}/get?{i}" for i in range(40)], config))

    assert all(result.ok for result in results)
    new = [result for result in results if result.conn_reused is False]
    reused = [result for result in results if result.conn_reused]
    assert 1 <= len(new) <= 2 and len(reused) >= 38
    assert all(result.connect_ms is not None and result.connect_ms > 0 for result in new)
    assert all(result.connect_ms == 0.0 for result in reused)


@pytest.mark.parametrize("invalid", ["ftp://example.com/", "not a url"])
def test_rows_without_a_connection_say_so(invalid: str) -> None:
    (result,) = fetch_all([invalid], FetchConfig())
    assert (result.conn_reused, result.connect_ms, result.pool_wait_ms) == (None, None, None)
