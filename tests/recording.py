"""A loopback HTTP server that records when each request arrived and left, and the most in flight.

`/delay/S` answers after S seconds; `/retry-after/S` is a 429 with `Retry-After: S`; anything
else is a 200. conftest.py serves it as the `server` and `other_server` fixtures.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from hostile import LOOPBACK


@dataclass
class Arrival:
    path: str
    start: float
    end: float = 0.0


@dataclass
class Recorder:
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """`/delay/S` answers after S seconds; `/retry-after/S` is a 429 with `Retry-After: S`; else 200.
    Any path with `?delay=S` answers after S seconds."""

    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        record = self.server.record
        arrival = Arrival(self.path, time.monotonic())
        with record.lock:
            record.arrivals.append(arrival)
            record.in_flight += 1
            record.peak = max(record.peak, record.in_flight)
        try:
            self._answer()
        finally:
            with record.lock:
                record.in_flight -= 1
                arrival.end = time.monotonic()

    def _answer(self) -> None:
        status, headers = 200, {}
        path, _, query = self.path.partition("?")
        if delay := parse_qs(query).get("delay"):
            time.sleep(float(delay[0]))
        if path.startswith("/delay/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        elif path.startswith("/retry-after/"):
            status, headers = 429, {"Retry-After": path.rsplit("/", 1)[1]}
        body = b"ok\n"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _RecordingHandler)
        self.record = Recorder()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"

    def starts(self) -> list[float]:
        with self.record.lock:
            return sorted(arrival.start for arrival in self.record.arrivals)


def most_in_one_second(starts: list[float]) -> int:
    """The largest number of arrivals within any window of one second."""
    most, first = 0, 0
    for last, start in enumerate(starts):
        while start - starts[first] > 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most
