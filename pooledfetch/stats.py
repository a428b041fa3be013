"""Running statistics over the result stream, in bounded memory whatever the number of URLs."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pooledfetch import results as rc
from pooledfetch.results import Result
from pooledfetch.sink import Sink

# Hosts tracked one by one; the rest are summed under OTHER_HOSTS so memory stays bounded.
MAX_TRACKED_HOSTS = 10_000
OTHER_HOSTS = "(other hosts)"
PERCENTILES = (50, 90, 95, 99)
RATE_WINDOW_SECONDS = 5.0


# Rows of URLs never sent: no request to count against their hosts.
_NEVER_SENT = frozenset((rc.INVALID_URL, rc.CANCELLED))
# Rows whose time says nothing of the server: never sent, lost with a worker, or cut short by
# the user (an interrupted row given up after the grace period has no time at all, 0 ms).
_NOT_TIMED = _NEVER_SENT | {rc.WORKER_LOST, rc.INTERRUPTED}


class LatencyHistogram:
    """HdrHistogram-style: log-spaced buckets, ~1% relative error, memory bounded by the value range."""

    _GROWTH = 1.01
    _MIN_MS = 0.01
    _LOG_GROWTH = math.log(_GROWTH)

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0
        self.total = 0.0

    def record(self, value_ms: float) -> None:
        self._buckets[self._bucket(value_ms)] += 1
        self.count += 1
        self.total += value_ms
        self.max = max(self.max, value_ms)

    def percentile(self, percent: float) -> float:
        """The value below which `percent` % of the recorded values fall (0.0 when empty)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * percent / 100.0))
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return min(self._value(bucket), self.max)
        return self.max

    def _bucket(self, value_ms: float) -> int:
        if value_ms <= self._MIN_MS:
            return 0
        return 1 + int(math.log(value_ms / self._MIN_MS) / self._LOG_GROWTH)

    def _value(self, bucket: int) -> float:
        # The upper edge of the bucket: a percentile never understates.
        return self._MIN_MS * self._GROWTH**bucket if bucket else self._MIN_MS


@dataclass
class HostStats:
    requests: int = 0
    failures: int = 0  # errors and 4xx/5xx
    new_connections: int = 0
    reused_connections: int = 0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass
class RunStats(Sink):
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    total: int = 0
    ok: int = 0
    http_errors: int = 0
    failed: int = 0
    bytes_received: int = 0
    retries: int = 0
    new_connections: int = 0
    reused_connections: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    hosts: dict[str, HostStats] = field(default_factory=dict)
    ttfb: LatencyHistogram = field(default_factory=LatencyHistogram)
    total_time: LatencyHistogram = field(default_factory=LatencyHistogram)
    pool_wait: LatencyHistogram = field(default_factory=LatencyHistogram)
    _recent: deque[tuple[float, int]] = field(default_factory=deque)
    _hostnames: dict[str, str] = field(default_factory=dict)

    def write(self, result: Result) -> None:
        self.total += 1
        self.bytes_received += result.bytes
        self.retries += result.retries
        failed = bool(result.error)
        if failed:
            self.failed += 1
            self.errors[result.error] += 1
        elif result.ok:
            self.ok += 1
        else:
            self.http_errors += 1
        if result.status is not None:
            self.statuses[result.status] += 1
            failed = failed or result.status >= 400
        if result.error not in _NOT_TIMED:
            if result.ttfb_ms is not None:
                self.ttfb.record(result.ttfb_ms)
            self.total_time.record(result.total_ms)
        if result.pool_wait_ms is not None:
            self.pool_wait.record(result.pool_wait_ms)
        host = self._host(result) if result.error not in _NEVER_SENT else None
        if host is not None:
            host.requests += 1
            host.failures += failed
        if result.conn_reused is not None:
            if result.conn_reused:
                self.reused_connections += 1
            else:
                self.new_connections += 1
            if host is not None:
                host.reused_connections += result.conn_reused
                host.new_connections += not result.conn_reused
        self._count_for_rate()

    def close(self) -> None:
        if self.finished is None:
            self.finished = time.monotonic()

    def _host(self, result: Result) -> HostStats | None:
        url = result.final_url
        # Parsing every URL is the costliest step here; one host name per origin is enough.
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]
        name = self._hostnames.get(origin)
        if name is None:
            try:
                name = urlsplit(origin).hostname or ""
            except ValueError:
                name = ""
            if len(self._hostnames) >= MAX_TRACKED_HOSTS:
                self._hostnames.clear()
            self._hostnames[origin] = name
        if not name:
            return None
        if name not in self.hosts and len(self.hosts) >= MAX_TRACKED_HOSTS:
            name = OTHER_HOSTS
        return self.hosts.setdefault(name, HostStats())

    def _count_for_rate(self) -> None:
        now = time.monotonic()
        second = math.floor(now)
        if self._recent and self._recent[-1][0] == second:
            self._recent[-1] = (second, self._recent[-1][1] + 1)
        else:
            self._recent.append((second, 1))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_SECONDS:
            self._recent.popleft()

    @property
    def duration(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    @property
    def rate(self) -> float:
        """URLs per second over the whole run."""
        return self.total / self.duration if self.duration > 0 else 0.0

    @property
    def recent_rate(self) -> float:
        """URLs per second over the last few seconds (the whole run while it is younger)."""
        if not self._recent:
            return 0.0
        window = min(RATE_WINDOW_SECONDS, max(time.monotonic() - self._recent[0][0], 1e-3))
        return sum(count for _, count in self._recent) / window

    def status_classes(self) -> dict[str, int]:
        classes: Counter[str] = Counter()
        for status, count in self.statuses.items():
            classes[f"{status // 100}xx"] += count
        return dict(sorted(classes.items()))

    def top_hosts(self, limit: int = 10) -> list[tuple[str, HostStats]]:
        return sorted(self.hosts.items(), key=lambda item: (-item[1].requests, item[0]))[:limit]

    def summary_line(self) -> str:
        errors = ", ".join(f"{name} {count}" for name, count in self.errors.most_common())
        failed = f"{self.failed} failed" + (f" ({errors})" if errors else "")
        return (
            f"{self.total} URLs: {self.ok} ok, {self.http_errors} HTTP errors, {failed}"
            f" in {self.duration:.2f} s ({self.rate:,.1f} URLs/s, {human_bytes(self.bytes_received)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data (for --summary-json)."""
        return {
            "urls": self.total,
            "ok": self.ok,
            "http_errors": self.http_errors,
            "failed": self.failed,
            "errors": dict(self.errors.most_common()),
            "status_classes": self.status_classes(),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "duration_s": round(self.duration, 3),
            "urls_per_s": round(self.rate, 1),
            "bytes": self.bytes_received,
            "retries": self.retries,
            "latency_ms": {
                name: {
                    **{f"p{p}": round(histogram.percentile(p), 3) for p in PERCENTILES},
                    "max": round(histogram.max, 3),
                }
                for name, histogram in (("ttfb", self.ttfb), ("total", self.total_time))
            },
            "pool_wait_ms": {
                "total": round(self.pool_wait.total, 3),
                "p95": round(self.pool_wait.percentile(95), 3),
            },
            "connections": {"new": self.new_connections, "reused": self.reused_connections},
            "top_hosts": [
                {
                    "host": name,
                    "requests": host.requests,
                    "error_rate": round(host.error_rate, 4),
                    "new_connections": host.new_connections,
                    "reused_connections": host.reused_connections,
                }
                for name, host in self.top_hosts()
            ],
        }


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
