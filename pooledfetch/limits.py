"""Politeness limits: an overall request rate, per-host concurrency and rate, and host pauses.

A few dozen lines of token bucket and semaphore bookkeeping do not justify a new dependency,
and they must respect things no rate-limit library knows about: each URL's --max-time
deadline and the run being stopped (Ctrl-C, or the consumer closing it), so no wait ever
runs past either.

What is limited is each *hop* a worker sends: the first request and every redirect hop each
take a permit (a per-host slot and a token from each bucket). urllib3's own retries of a hop
take no new permit: they are spaced by the retry backoff and `Retry-After`, and stay within
the hop's per-host slot.

A `Limiter` exists per run, only when some limit is configured: with none, the engine skips
this module entirely. With a per-host limit, a `HostWindow` also interleaves the input by host,
so that workers are not all left waiting on one host's limit while other hosts' URLs queue.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from urllib3.response import BaseHTTPResponse

from pooledfetch.config import FetchConfig
from pooledfetch.feed import Feed
from pooledfetch.pools import PoolAccounting
from pooledfetch.session import DEFAULT_PORTS, DeadlineExceeded, RetryObserver
from pooledfetch.sources import Target

Clock = Callable[[], float]

# Per-host state is kept for at most this many hosts: a list of a million hosts must not grow
# a million entries. Idle entries go first; an evicted entry only costs a host its history.
MAX_TRACKED_HOSTS = 10_000
# How often a worker waiting for a per-host slot looks at its deadline and the stop event.
_SLOT_POLL_SECONDS = 0.1
# Statuses whose Retry-After pauses the whole host (with --pause-hosts).
PAUSE_STATUSES = frozenset((429, 503))
# How many targets a HostWindow reads ahead of the ones sent, to interleave them by host.
WINDOW = 4096


class Abandoned(Exception):
    """The run was stopped while this request waited for a limit."""


class TokenBucket:
    """A smooth rate limit: one request every 1/rate seconds, with no burst.

    Each caller reserves the next free instant and then sleeps until it (outside the lock), so
    callers are served in order and a request's instant is known before anyone waits for it.
    """

    __slots__ = ("_interval", "_next", "_lock", "_clock")

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError("rate must be more than 0")
        self._interval = 1.0 / rate
        self._next = float("-inf")
        self._lock = threading.Lock()
        self._clock = clock

    def reserve(self, deadline: float | None = None) -> float | None:
        """The instant (clock time) this request may go, or None if that is past `deadline`.

        Nothing is reserved when None is returned, so a request that gives up costs others nothing.
        """
        with self._lock:
            at = max(self._clock(), self._next)
            if deadline is not None and at > deadline:
                return None
            self._next = at + self._interval
            return at

    @property
    def next_free(self) -> float:
        """The first instant (clock time) a new request could be given."""
        with self._lock:
            return self._next

    def hold(self, until: float) -> None:
        """Give no request an instant before `until` (clock time)."""
        with self._lock:
            self._next = max(self._next, until)

    def idle(self) -> bool:
        """True when a fresh bucket would behave the same (so this one can be forgotten)."""
        return self._next <= self._clock()


def host_key(url: str) -> str:
    """What "one host" means here: the URL's host and port (credentials dropped, case folded, the
    scheme's default port left out, so `http://h/` and `http://h:80/` are one host)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2].lower()
    host, colon, port = netloc.rpartition(":")
    if colon and (not port or port.isdigit() and int(port) == DEFAULT_PORTS.get(parts.scheme.lower())):
        return host
    return netloc


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def sleep_until(when: float, deadline: float | None, stop: threading.Event, clock: Clock = time.monotonic) -> None:
    """Wait until `when`; fail at once if that is past `deadline`; end early once `stop` is set."""
    if deadline is not None and when > deadline:
        raise DeadlineExceeded
    remaining = when - clock()
    if remaining > 0 and stop.wait(remaining):
        raise Abandoned
    if stop.is_set():
        raise Abandoned


class _HostSlots:
    """At most `limit` requests in flight per host.

    A host's entry lives only while it has requests in flight, so the dict never holds more
    entries than there are workers.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight: dict[str, int] = {}
        self._changed = threading.Condition()

    def acquire(self, host: str, deadline: float | None, stop: threading.Event) -> None:
        with self._changed:
            while self._in_flight.get(host, 0) >= self._limit:
                if stop.is_set():
                    raise Abandoned
                wait = _SLOT_POLL_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise DeadlineExceeded
                self._changed.wait(wait)
            self._in_flight[host] = self._in_flight.get(host, 0) + 1

    def release(self, host: str) -> None:
        with self._changed:
            left = self._in_flight[host] - 1
            if left:
                self._in_flight[host] = left
            else:
                del self._in_flight[host]
            self._changed.notify_all()


class _HostTimes:
    """Per-host token buckets and pause ends, created lazily, at most MAX_TRACKED_HOSTS of each."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._paused_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def bucket(self, host: str) -> TokenBucket | None:
        if self._rate is None:
            return None
        with self._lock:
            bucket = self._buckets.get(host)
            if bucket is None:
                if len(self._buckets) >= MAX_TRACKED_HOSTS:
                    self._forget_idle_buckets()
                bucket = self._buckets[host] = TokenBucket(self._rate)
            return bucket

    def _forget_idle_buckets(self) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.idle()]:
            del self._buckets[key]
        while len(self._buckets) >= MAX_TRACKED_HOSTS:
            self._buckets.popitem(last=False)  # the oldest: a brief overshoot beats unbounded memory

    def paused_until(self, host: str) -> float | None:
        if not self._paused_until:
            return None  # the common case: no host paused, no lock taken
        with self._lock:
            until = self._paused_until.get(host)
            if until is not None and until <= time.monotonic():
                # Forgotten once over, so runs go back to the lock-free path above.
                del self._paused_until[host]
                return None
            return until

    def holds(self) -> dict[str, float]:
        """Per host, the later of its pause end and its bucket's next free instant."""
        with self._lock:
            holds = {host: bucket.next_free for host, bucket in self._buckets.items()}
            for host, until in self._paused_until.items():
                holds[host] = max(until, holds.get(host, until))
        return holds

    def pause(self, host: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        with self._lock:
            if len(self._paused_until) >= MAX_TRACKED_HOSTS:
                now = time.monotonic()
                self._paused_until = {key: end for key, end in self._paused_until.items() if end > now}
            self._paused_until[host] = max(until, self._paused_until.get(host, until))


class Limiter:
    """Every limit of one run; `acquire` before sending a hop, `release` when it is done with.

    `stop()` ends every wait at once (with Abandoned): a URL still waiting for its turn when
    the run is interrupted is never sent, not even during the grace period for those in flight.
    """

    def __init__(self, config: FetchConfig, accounting: PoolAccounting | None = None) -> None:
        self._accounting = accounting
        self._stopped = threading.Event()
        self._overall = TokenBucket(config.rate) if config.rate is not None else None
        self._slots = _HostSlots(config.per_host_concurrency) if config.per_host_concurrency is not None else None
        self._hosts = _HostTimes(config.per_host_rate)
        self._pause_hosts = config.pause_hosts
        self._max_pause = config.max_retry_wait

    @classmethod
    def for_config(cls, config: FetchConfig, accounting: PoolAccounting | None = None) -> Limiter | None:
        """A limiter when `config` asks for any limit; None (nothing to do per request) otherwise.

        With `accounting`, the time each request spends waiting for its permit is added to it.
        """
        wanted = (config.rate, config.per_host_concurrency, config.per_host_rate)
        if all(value is None for value in wanted) and not config.pause_hosts:
            return None
        return cls(config, accounting)

    def stop(self) -> None:
        self._stopped.set()

    def acquire(self, url: str, deadline: float | None) -> str:
        """Wait until a request to `url` may be sent; return its host key for `release`.

        Order matters: the per-host slot first, so a worker never holds a reserved rate instant
        while it queues for a slot; the overall token last, so waiting on a slow host does not
        waste instants other hosts could use. Raises DeadlineExceeded or Abandoned.
        """
        host = host_key(url)
        began = time.monotonic()
        try:
            if self._slots is not None:
                self._slots.acquire(host, deadline, self._stopped)
            try:
                self._wait_out_pause(host, deadline)
                self._take(self._hosts.bucket(host), deadline, self._stopped)
                self._take(self._overall, deadline, self._stopped)
                # A pause that began while this waited for its rate instants holds it too: "no
                # worker sends the host anything until then" (its instants pass unused).
                self._wait_out_pause(host, deadline)
            except BaseException:
                self.release(host)
                raise
        finally:
            if self._accounting is not None:
                self._accounting.waited_for_limits(time.monotonic() - began)
        return host

    def _wait_out_pause(self, host: str, deadline: float | None) -> None:
        while (paused := self._hosts.paused_until(host)) is not None:
            sleep_until(paused, deadline, self._stopped)

    def release(self, host: str | None) -> None:
        if host is not None and self._slots is not None:
            self._slots.release(host)

    def paused(self, host: str) -> bool:
        """True while `host` is paused (Retry-After with --pause-hosts, or a hold)."""
        return self._hosts.paused_until(host) is not None

    def retry_observer(self, host: str | None) -> RetryObserver | None:
        """What urllib3 should tell of each try it retries, so a pause starts with its wait; it
        answers until when the host is paused, which the retry then waits out too."""
        if not self._pause_hosts or host is None:
            return None

        def observed(response: BaseHTTPResponse | None) -> float | None:
            if response is not None:
                self.observe(host, response.status, response.headers.get("Retry-After"))
            return self._hosts.paused_until(host)

        return observed

    def observe(self, host: str, status: int, retry_after: str | None) -> None:
        """With --pause-hosts, a 429/503's Retry-After pauses its host for every worker."""
        if not self._pause_hosts or status not in PAUSE_STATUSES:
            return
        seconds = retry_after_seconds(retry_after)
        if seconds is not None and seconds > 0:
            self._hosts.pause(host, min(seconds, self._max_pause))

    def holds(self) -> dict[str, float]:
        """Per host, the instant (time.monotonic()) before which it must not be sent to again:
        the end of its pause or its next per-host rate slot, whichever is later. Hosts free now
        are left out. With `hold`, this carries a host's limits over to another Limiter (the
        next chunk of its URLs, in another process perhaps)."""
        now = time.monotonic()
        return {host: until for host, until in self._hosts.holds().items() if until > now}

    def hold(self, host: str, until: float) -> None:
        """Send nothing to `host` before `until` (time.monotonic()), whatever the pause setting."""
        if until > time.monotonic():
            self._hosts.pause(host, until - time.monotonic())

    def overall_next(self) -> float | None:
        """The next free instant (time.monotonic()) of the overall --rate bucket, if there is one."""
        return self._overall.next_free if self._overall is not None else None

    def hold_overall(self, until: float) -> None:
        """Carry the overall --rate spacing over from an earlier Limiter of this process."""
        if self._overall is not None:
            self._overall.hold(until)

    @staticmethod
    def _take(bucket: TokenBucket | None, deadline: float | None, stop: threading.Event) -> None:
        if bucket is None:
            return
        at = bucket.reserve(deadline)
        if at is None:
            raise DeadlineExceeded
        sleep_until(at, deadline, stop)


class HostWindow:
    """The input read a bounded look-ahead at a time and handed out round-robin by host.

    A worker waits for its host's limit holding the URL it picked up, so a long run of URLs to
    one host would otherwise take every worker while other hosts' URLs queue behind it. Up to
    `size` targets are buffered per host; `next_ready` hands out the next one from a host with
    fewer than `per_host_concurrency` targets in flight (any host without that limit), in turn.

    Used by the consuming thread only (no locks). The engine tells it when a target is sent
    (`started`) and when its result is consumed (`finished`). Targets with no URL (invalid
    lines) are handed out first, whatever the limits: they still get their row.
    """

    def __init__(
        self,
        targets: Iterable[Target],
        per_host_concurrency: int | None,
        size: int = WINDOW,
        paused: Callable[[str], bool] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._feed: Feed | None = targets if isinstance(targets, Feed) else Feed(targets)
        self._limit = per_host_concurrency
        self._paused = paused
        self._size = size
        self._buffered = 0
        self._queues: dict[str, deque[Target]] = {}  # hosts with buffered targets
        self._turns: deque[str] = deque()  # hosts that may be ready, in round-robin order
        self._in_turns: set[str] = set()
        self._invalid: deque[Target] = deque()
        self._in_flight: dict[str, int] = {}  # per host: targets started and not yet finished
        self._host_of: dict[int, str] = {}  # per started target's index: its host

    @property
    def buffered(self) -> int:
        """How many targets are read from the input and not yet handed out."""
        return self._buffered

    @property
    def exhausted(self) -> bool:
        """True once every target of the input has been handed out."""
        self._fill()
        return self._buffered == 0 and self._feed is None

    def next_ready(self) -> Target | None:
        """The next target that may be sent now; None if none (all at their limit, or none left)."""
        self._fill()
        if self._invalid:
            self._buffered -= 1
            return self._invalid.popleft()
        for _ in range(len(self._turns)):
            host = self._turns.popleft()
            if self._at_limit(host):
                self._in_turns.discard(host)  # back in turn once one of its targets finishes
                continue
            if self._paused is not None and self._paused(host):
                self._turns.append(host)  # a worker would only sit waiting with it: next round
                continue
            queue = self._queues[host]
            target = queue.popleft()
            self._buffered -= 1
            if queue:
                self._turns.append(host)
            else:
                del self._queues[host]
                self._in_turns.discard(host)
            return target
        return None

    def started(self, target: Target) -> None:
        """`target` (one handed out by next_ready) was sent to the workers."""
        if target.url is None:
            return
        host = host_key(target.url)
        self._host_of[target.index] = host
        self._in_flight[host] = self._in_flight.get(host, 0) + 1

    def finished(self, index: int) -> None:
        """The result of the started target with this index was consumed."""
        host = self._host_of.pop(index, None)
        if host is None:
            return
        left = self._in_flight[host] - 1
        if left:
            self._in_flight[host] = left
        else:
            del self._in_flight[host]
        if host in self._queues and host not in self._in_turns:
            self._in_turns.add(host)
            self._turns.append(host)

    def drain(self) -> Iterator[Target]:
        """Every target not handed out yet, buffered first, then the rest of the input."""
        yield from self._invalid
        self._invalid.clear()
        for queue in self._queues.values():
            yield from queue
        self._queues.clear()
        self._turns.clear()
        self._in_turns.clear()
        self._buffered = 0
        feed, self._feed = self._feed, None
        if feed is not None:
            yield from feed.rest()

    def _at_limit(self, host: str) -> bool:
        return self._limit is not None and self._in_flight.get(host, 0) >= self._limit

    def _fill(self) -> None:
        if self._feed is None:
            return
        while self._buffered < self._size:
            target = self._feed.take()
            if target is None:
                if self._feed.exhausted:
                    self._feed = None
                return
            self._buffered += 1
            if target.url is None:
                self._invalid.append(target)
                continue
            host = host_key(target.url)
            queue = self._queues.get(host)
            if queue is None:
                queue = self._queues[host] = deque()
            queue.append(target)
            if host not in self._in_turns:
                self._in_turns.add(host)
                self._turns.append(host)
