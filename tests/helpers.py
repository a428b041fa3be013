"""Small shared test helpers: result rows to feed sinks, and running a command on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from pooledfetch.demo import DemoServer
from pooledfetch.results import Result

# A successful GET as most sink tests want it; each test overrides what it is about.
BASE_ROW: dict[str, object] = {
    "index": 0,
    "url": "https://example.com/",
    "final_url": "https://example.com/",
    "method": "GET",
    "status": 200,
    "reason": "OK",
    "ok": True,
    "error": "",
    "error_detail": "",
    "ttfb_ms": 5.0,
    "total_ms": 12.4,
    "bytes": 512,
    "content_type": "text/html",
    "redirects": 0,
    "retries": 0,
    "started_at": "2024-01-02T03:04:05.678+00:00",
}


def make_result(**changes: object) -> Result:
    return Result(**{**BASE_ROW, **changes})  # type: ignore[arg-type]


def run_on_pty(args: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> tuple[int, bytes]:
    """Run `args` with stdout and stderr on one pseudo-terminal; the exit code and all it printed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=dict(env))
    finally:
        os.close(follower)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), bytes(output)
    finally:
        os.close(leader)


class IdleWatch:
    """An `idle` callback for engine.run / run_on_cluster that notes, at each call, how many rows
    the consumer had taken and on which thread it was called."""

    def __init__(self) -> None:
        self.rows: list[Result] = []
        self.calls: list[tuple[int, threading.Thread]] = []

    def __call__(self) -> None:
        self.calls.append((len(self.rows), threading.current_thread()))

    def consume(self, results: Iterable[Result]) -> None:
        for row in results:
            self.rows.append(row)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def two_hosts_with_the_ca_file_gone_between(server: DemoServer, ca_pem: str) -> Iterator[str]:
    """Two HTTPS URLs of `server` under two host names (so two TLS connections); the CA file is
    removed once the first has been answered, before the second connection opens."""
    yield f"{server.base_url}/get"
    wait_until(lambda: server.requests == 1)
    os.remove(ca_pem)
    yield f"https://localhost:{server.server_address[1]}/get"
