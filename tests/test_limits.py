"""Politeness limits (pooledfetch.limits): --rate, --per-host-concurrency, --per-host-rate, --pause-hosts.

The end-to-end tests run against small loopback servers that record when each request
arrived and left, and how many were in flight at once; the unit tests use an injected clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from click.testing import CliRunner
from conftest import serving
from recording import RecordingServer, most_in_one_second

from pooledfetch import FetchConfig, engine, fetch_all
from pooledfetch.cli import cli
from pooledfetch.errors import ConfigError
from pooledfetch.limits import (
    Abandoned,
    HostWindow,
    Limiter,
    TokenBucket,
    _HostSlots,
    host_key,
    retry_after_seconds,
    sleep_until,
)
from pooledfetch.results import Result
from pooledfetch.session import DeadlineExceeded
from pooledfetch.sources import Target

# --- end to end -------------------------------------------------------------------------------


def test_rate_spreads_requests_evenly(server: RecordingServer) -> None:
    urls = [f"{server.base_url}/n{i}" for i in range(60)]
    began = time.monotonic()
    results = list(fetch_all(urls, FetchConfig(rate=20, workers=8)))
    elapsed = time.monotonic() - began
    assert all(result.ok for result in results)
    assert 2.8 <= elapsed <= 4.0
    assert most_in_one_second(server.starts()) <= 22


def test_rate_option_on_the_command_line(server: RecordingServer) -> None:
    urls = "".join(f"{server.base_url}/n{i}\n" for i in range(20))
    began = time.monotonic()
    outcome = CliRunner().invoke(cli, ["-", "-q", "--rate", "20", "-w", "8"], input=urls)
    elapsed = time.monotonic() - began
    assert outcome.exit_code == 0, outcome.output
    assert len(server.starts()) == 20
    assert 0.9 <= elapsed <= 2.0
    assert most_in_one_second(server.starts()) <= 22


def test_per_host_concurrency_holds_for_each_host(server: RecordingServer, other_server: RecordingServer) -> None:
    urls = [f"{host.base_url}/delay/0.1?{i}" for i in range(12) for host in (server, other_server)]
    began = time.monotonic()
    results = list(fetch_all(urls, FetchConfig(per_host_concurrency=2, workers=16)))
    elapsed = time.monotonic() - began
    assert all(result.ok for result in results)
    assert server.record.peak == 2
    assert other_server.record.peak == 2
    # 6 rounds of 0.1 s per host, both hosts at once: not 12 rounds one host after the other.
    assert 0.55 <= elapsed < 1.2


def test_per_host_rate_limits_each_host_independently(server: RecordingServer, other_server: RecordingServer) -> None:
    urls = [f"{host.base_url}/n{i}" for i in range(16) for host in (server, other_server)]
    began = time.monotonic()
    results = list(fetch_all(urls, FetchConfig(per_host_rate=10, workers=8)))
    elapsed = time.monotonic() - began
    assert all(result.ok for result in results)
    # 16 requests at 10/s take 1.5 s per host; the two hosts run side by side.
    assert 1.4 <= elapsed <= 2.5
    for host in (server, other_server):
        assert most_in_one_second(host.starts()) <= 11


def test_waiting_for_a_limit_respects_max_time(server: RecordingServer) -> None:
    urls = [f"{server.base_url}/n{i}" for i in range(4)]
    began = time.monotonic()
    results = list(fetch_all(urls, FetchConfig(per_host_rate=0.5, max_time=0.5, workers=4)))
    elapsed = time.monotonic() - began
    assert sorted(result.error for result in results) == ["", "timeout", "timeout", "timeout"]
    # A wait that would end past the deadline fails at once rather than sleeping into it.
    assert elapsed < 0.5
    assert len(server.starts()) == 1


def test_retry_after_pauses_only_that_host(server: RecordingServer, other_server: RecordingServer) -> None:
    urls = [f"{server.base_url}/retry-after/2"]
    for i in range(12):
        urls += [f"{server.base_url}/n{i}", f"{other_server.base_url}/delay/0.1?{i}"]
    # Enough workers that those waiting on the paused host leave some free: without fair
    # scheduling, a worker that picked a paused host's URL waits with it.
    config = FetchConfig(pause_hosts=True, per_host_concurrency=1, retries=0, workers=16)
    results = list(fetch_all(urls, config))
    assert sum(result.status == 429 for result in results) == 1
    assert sum(result.ok for result in results) == 24
    refused = next(arrival for arrival in server.record.arrivals if arrival.path.startswith("/retry-after"))
    later = [arrival.start for arrival in server.record.arrivals if arrival.start > refused.start]
    assert min(later) - refused.end >= 1.9
    served_meanwhile = [start for start in other_server.starts() if refused.end < start < refused.end + 1.8]
    assert len(served_meanwhile) >= 8


def test_retry_after_pauses_the_host_while_urllib3_waits_to_retry(
    server: RecordingServer, other_server: RecordingServer
) -> None:
    urls = [f"{server.base_url}/retry-after/1"]
    for i in range(16):
        urls += [f"{server.base_url}/delay/0.05?{i}", f"{other_server.base_url}/delay/0.05?{i}"]
    # With a retry, urllib3 itself waits out the Retry-After: the host must be paused from the
    # first 429 on, not only when the worker gets the last one back.
    # Few workers: any that picked up a paused host's URL would sit waiting with it.
    config = FetchConfig(pause_hosts=True, retries=1, backoff_factor=0, workers=3)
    results = list(fetch_all(urls, config))
    assert sum(result.status == 429 and result.retries == 1 for result in results) == 1
    assert sum(result.ok for result in results) == 32
    refusals = [arrival for arrival in server.record.arrivals if arrival.path.startswith("/retry-after")]
    assert len(refusals) == 2
    assert refusals[1].start - refusals[0].end >= 0.9  # urllib3 waited for the retry
    # Requests sent before the client read the 429 may still arrive just after it.
    paused = (refusals[0].end + 0.1, refusals[0].end + 0.9)
    assert not [arrival for arrival in server.record.arrivals if paused[0] < arrival.start < paused[1]]
    served_meanwhile = [start for start in other_server.starts() if paused[0] < start < paused[1]]
    assert len(served_meanwhile) >= 5, served_meanwhile


def test_a_retry_waits_out_its_host_s_pause_begun_by_another_url(server: RecordingServer) -> None:
    """urllib3 slept only its own response's Retry-After (0 here) before the retry, which then
    went to a host another URL's 429 had paused for 2 s."""
    pausing, retried = f"{server.base_url}/retry-after/2", f"{server.base_url}/retry-after/0?delay=0.3"
    config = FetchConfig(pause_hosts=True, retries=1, backoff_factor=0, workers=2, max_retry_wait=5)
    list(fetch_all([pausing, retried], config))
    first_429 = next(arrival for arrival in server.record.arrivals if arrival.path == "/retry-after/2")
    tries = [arrival for arrival in server.record.arrivals if arrival.path.startswith("/retry-after/0")]
    assert len(tries) == 2
    assert tries[1].start >= first_429.end + 1.9


def test_cancel_ends_waits_for_a_limit_at_once(server: RecordingServer) -> None:
    urls = [f"{server.base_url}/n{i}" for i in range(6)]
    cancel = threading.Event()
    began = time.monotonic()
    results = []
    for result in fetch_all(urls, FetchConfig(rate=2, workers=6), cancel=cancel):
        results.append(result)
        cancel.set()
    elapsed = time.monotonic() - began
    assert sorted(result.error for result in results) == [""] + ["cancelled"] * 5
    # Neither the rate's waits (up to 2.5 s) nor the 3 s grace period were sat out.
    assert elapsed < 0.5
    assert len(server.starts()) == 1


# --- units ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spaces_reservations_without_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, clock)
    assert [bucket.reserve() for _ in range(3)] == [100.0, 100.25, 100.5]
    clock.now = 110.0  # a long idle spell does not save up a burst
    assert bucket.reserve() == 110.0
    assert bucket.reserve() == 110.25
    assert not bucket.idle()
    clock.now = 111.0
    assert bucket.idle()


def test_token_bucket_reserves_nothing_past_a_deadline() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, clock)
    assert bucket.reserve(deadline=100.5) == 100.0
    assert bucket.reserve(deadline=100.5) is None
    assert bucket.reserve(deadline=101.0) == 101.0  # the refused caller took no instant


def test_sleep_until_never_sleeps_past_deadline_or_abandon() -> None:
    abandon = threading.Event()
    with pytest.raises(DeadlineExceeded):
        sleep_until(time.monotonic() + 60, time.monotonic() + 1, abandon)
    abandon.set()
    with pytest.raises(Abandoned):
        sleep_until(time.monotonic() + 60, None, abandon)


def test_host_slot_wait_stops_at_the_deadline() -> None:
    slots = _HostSlots(1)
    abandon = threading.Event()
    slots.acquire("a:1", None, abandon)
    slots.acquire("b:1", None, abandon)  # another host is not held up
    with pytest.raises(DeadlineExceeded):
        slots.acquire("a:1", time.monotonic() + 0.05, abandon)
    slots.release("a:1")
    slots.acquire("a:1", time.monotonic() + 0.05, abandon)


def test_retry_after_values() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("2", now) == 2.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_host_key_is_host_and_port() -> None:
    assert host_key("http://user:pw@Example.COM:8080/a") == "example.com:8080"
    assert host_key("https://example.com/") != host_key("https://example.com:8443/")


@pytest.mark.parametrize(
    ("url", "same_as"),
    [
        ("http://Example.com:80/a", "http://example.com/b"),
        ("https://example.com:443/", "https://example.com/"),
        ("http://example.com:/", "http://example.com/"),
        ("http://[::1]:80/", "http://[::1]/"),
    ],
)
def test_a_default_port_written_out_is_the_same_host(url: str, same_as: str) -> None:
    """Otherwise `http://h/` and `http://h:80/` were two hosts to --per-host-concurrency 1 (and
    shared one pool): the server saw two connections at once."""
    assert host_key(url) == host_key(same_as)
    assert host_key("http://example.com:443/") != host_key("http://example.com/")


def test_no_limits_means_no_limiter() -> None:
    assert Limiter.for_config(FetchConfig()) is None
    assert Limiter.for_config(FetchConfig(rate=1)) is not None


@pytest.mark.parametrize("settings", [{"rate": 0}, {"rate": -1.0}, {"per_host_rate": 0.0}, {"per_host_concurrency": 0}])
def test_limits_are_validated(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FetchConfig(**settings)  # type: ignore[arg-type]


# --- fair scheduling: the host window ---------------------------------------------------------


@pytest.fixture
def small_servers() -> Iterator[list[RecordingServer]]:
    running = [serving(RecordingServer()) for _ in range(3)]
    try:
        yield [next(each) for each in running]
    finally:
        for each in running:
            each.close()


def _small_hosts_done_after(results: list[Result], big: int) -> int:
    """How many of the first `big` rows (the big host's) had finished when the last other row did."""
    big_done = last_small = 0
    for result in results:
        if result.index < big:
            big_done += 1
        else:
            last_small = big_done
    return last_small


def test_small_hosts_are_not_stuck_behind_a_big_one(
    server: RecordingServer, small_servers: list[RecordingServer]
) -> None:
    big = [f"{server.base_url}/delay/0.01?{i}" for i in range(400)]
    small = [f"{host.base_url}/delay/0.01?{i}" for host in small_servers for i in range(10)]
    results = list(fetch_all(big + small, FetchConfig(per_host_concurrency=2, workers=8)))
    assert all(result.ok for result in results)
    assert sorted(result.index for result in results) == list(range(len(big) + len(small)))
    assert server.record.peak == 2
    # Without the window, the small hosts' URLs are only read once ~390 of the big host's are done.
    assert _small_hosts_done_after(results, len(big)) < len(big) * 0.2


def _targets(hosts: str, counted: list[int]) -> Iterator[Target]:
    """One target per letter of `hosts` (its host), counting how many were read in `counted`."""
    for index, host in enumerate(hosts):
        counted[0] += 1
        url = None if host == "-" else f"http://{host}.test/{index}"
        yield Target(index, url or "not a url", url, None if url else "invalid")


def test_window_never_buffers_more_than_its_size() -> None:
    read = [0]
    window = HostWindow(_targets("a" * 1000 + "bc" * 50, read), per_host_concurrency=2, size=64)
    in_flight: list[Target] = []  # a fake engine: started, result not yet consumed
    handed = 0
    while not window.exhausted:
        target = window.next_ready()
        if target is None:
            # Every buffered host at its limit: consume the oldest result.
            window.finished(in_flight.pop(0).index)
            continue
        window.started(target)
        in_flight.append(target)
        handed += 1
        assert len([t for t in in_flight if t.url and "a.test" in t.url]) <= 2
        assert window.buffered <= 64
        assert read[0] - handed == window.buffered  # read from the input = handed out + buffered
    assert read[0] == handed == 1100


@pytest.mark.parametrize("limit", [{"rate": 2.0}, {"per_host_rate": 2.0}])
def test_a_pause_that_begins_while_a_worker_waits_for_its_rate_instant_holds_it_too(limit: dict[str, float]) -> None:
    """The pause was looked at once, before the rate wait: a worker already waiting for its
    instant sent at it, into the host's pause (the QA saw 2-4 requests reach a paused host)."""
    limiter = Limiter(FetchConfig(pause_hosts=True, **limit))
    url = "http://paused.test/"
    limiter.acquire(url, None)  # the first instant is now
    began = time.monotonic()
    sent: list[float] = []

    def second_worker() -> None:
        limiter.acquire(url, None)
        sent.append(time.monotonic() - began)

    waiting = threading.Thread(target=second_worker)
    waiting.start()  # its instant is 0.5 s from now
    time.sleep(0.1)
    limiter.observe(host_key(url), 429, "1")  # a 429 to another worker: paused until ~1.1 s
    waiting.join(5)
    assert sent and sent[0] >= 1.05, sent
    limiter.stop()


def test_window_holds_back_a_paused_hosts_targets_until_its_pause_ends() -> None:
    paused = {"a.test"}
    window = HostWindow(_targets("aabab", [0]), per_host_concurrency=None, paused=lambda host: host in paused)
    handed = [window.next_ready() for _ in range(3)]
    assert [host_key(t.url) if t and t.url else None for t in handed] == ["b.test", "b.test", None]
    assert not window.exhausted  # a's targets wait in the window, not in a worker
    paused.clear()
    rest = [window.next_ready() for _ in range(4)]
    assert [host_key(t.url) if t and t.url else None for t in rest] == ["a.test"] * 3 + [None]
    assert window.exhausted


def test_window_hands_out_round_robin_within_limits() -> None:
    read = [0]
    window = HostWindow(_targets("aaaaab-ac", read), per_host_concurrency=2, size=4)
    assert read[0] == 0  # nothing read before it is asked for
    first = [window.next_ready() for _ in range(3)]
    assert read[0] == 4 + 2  # the window's worth, topped up as targets are handed out
    hosts = [host_key(t.url) if t and t.url else None for t in first]
    assert hosts == ["a.test", "a.test", "a.test"]  # no limit counted until started
    window = HostWindow(_targets("aaaaab-ac", [0]), per_host_concurrency=2, size=8)
    got = []
    while (target := window.next_ready()) is not None:
        window.started(target)
        got.append(target)
    # The invalid line first, then a, b and c in turn, a again, and a is then at its limit.
    assert [t.raw if t.url is None else host_key(t.url)[0] for t in got] == ["not a url", "a", "b", "c", "a"]
    assert not window.exhausted and window.buffered == 4  # the other four of host a
    window.finished(got[1].index)
    target = window.next_ready()
    assert target is not None and target.url is not None and host_key(target.url) == "a.test"
    window.started(target)
    assert window.next_ready() is None


def test_window_drain_gives_back_everything_not_handed_out() -> None:
    read = [0]
    window = HostWindow(_targets("ab" * 20, read), per_host_concurrency=1, size=8)
    handed = [window.next_ready(), window.next_ready()]
    rest = list(window.drain())
    assert sorted([t.index for t in rest] + [t.index for t in handed if t]) == list(range(40))
    assert window.exhausted and window.next_ready() is None


def test_cancel_with_a_buffered_window_gives_one_row_per_line(server: RecordingServer) -> None:
    urls = [f"{server.base_url}/delay/0.2?{i}" for i in range(300)] + ["not a url"] * 3
    cancel = threading.Event()
    results = []
    for result in fetch_all(urls, FetchConfig(per_host_concurrency=2, workers=8), cancel=cancel):
        results.append(result)
        cancel.set()
    assert sorted(result.index for result in results) == list(range(len(urls)))
    errors = [result.error for result in results]
    assert errors.count("cancelled") >= len(urls) - 4
    assert len(server.starts()) <= 2


def test_no_per_host_limit_takes_the_old_path(server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_window(*args: object, **kwargs: object) -> None:
        raise AssertionError("a HostWindow was created without a per-host limit")

    monkeypatch.setattr(engine, "HostWindow", no_window)
    urls = [f"{server.base_url}/n{i}" for i in range(5)]
    assert all(result.ok for result in fetch_all(urls, FetchConfig(workers=2)))
    assert all(result.ok for result in fetch_all(urls, FetchConfig(rate=100, workers=2)))
    assert engine._host_window(iter(()), FetchConfig(rate=100), None) is None
    for limit in ({"per_host_concurrency": 1}, {"per_host_rate": 5.0}, {"pause_hosts": True}):
        monkeypatch.undo()
        assert engine._host_window(iter(()), FetchConfig(**limit), None) is not None  # type: ignore[arg-type]


# --- the summary reports the limits and the time spent waiting on them ------------------------------------------


def test_summary_shows_limits_in_force_and_time_waited(server: RecordingServer) -> None:
    from rich.console import Console

    from pooledfetch.engine import RunProgress, run
    from pooledfetch.sources import iter_targets
    from pooledfetch.stats import RunStats
    from pooledfetch.summary import render_summary, summary_data

    config = FetchConfig(rate=20, per_host_concurrency=4, workers=8)
    progress = RunProgress()
    stats = RunStats()
    for result in run(iter_targets([f"{server.base_url}/n{i}" for i in range(10)], config), config, progress=progress):
        stats.write(result)

    limits = summary_data(stats, progress.accounting, config)["limits"]
    assert (limits["rate"], limits["per_host_concurrency"], limits["pause_hosts"]) == (20, 4, False)
    # Ten requests spaced 50 ms apart: the later ones waited, 0.05 s × (0 + 1 + … + 9) in all at most.
    assert 0.3 < limits["waited_s"] < 3.0
    console = Console(record=True, width=100, force_terminal=False)
    console.print(render_summary(stats, progress.accounting, config))
    text = console.export_text()
    assert "Limits" in text and "--rate 20/s · --per-host-concurrency 4" in text and "s in total" in text
    unlimited = Console(record=True, width=100, force_terminal=False)
    unlimited.print(render_summary(stats, progress.accounting, FetchConfig()))
    assert "Limits" not in unlimited.export_text()
