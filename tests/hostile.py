"""A hostile HTTP server for fault tests: raw sockets on 127.0.0.1, every behaviour bounded in time.

Two ways to use it:

- `HostileServer()` routes on the first segment of the request path (see `ROUTES`): one server
  can hit every behaviour at once, e.g. `f"{server.base_url}/drip?every=0.2"`. Each response
  carries `Connection: close` (unless `keepalive=1`: the server still serves one request per
  connection, but the client does not know it in advance), so every request gets its own
  connection and its own thread.
- `HostileServer(behaviour)` runs one `Behaviour` (a callable taking the accepted socket and the
  stop event) on every connection, without reading or parsing anything first (`BEHAVIOURS`).

Every behaviour ends by itself within `MAX_BEHAVIOUR_SECONDS` (or sooner, per request, with a
`for=S` query parameter), when the client goes away, or within ~0.1 s of `stop()`.

Query parameters understood by most routes: `key` (per-key state: the first `times` requests
with that key misbehave, later ones get `200 ok`), `times`, `code`, `every` (drip interval),
`for` (how long to keep misbehaving).

The module also has the helpers subprocess tests share: `cli_command()` (the installed console
script) and `offline_env()` (an environment whose Python cannot reach any real DNS resolver).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

LOOPBACK = "127.0.0.1"
# Upper bound for anything a server thread does: none may outlive this.
MAX_BEHAVIOUR_SECONDS = 10.0
MAX_THREAD_SECONDS = MAX_BEHAVIOUR_SECONDS  # the name conftest.py used
_IO_POLL_SECONDS = 0.1
_MAX_HEAD_BYTES = 64 * 1024
_MAX_REQUEST_BODY = 1024 * 1024
# The reason phrase of `/reason`: a colour change and an OSC that would retitle a terminal.
EVIL_REASON = b"\x1b[31mRED\x1b]0;pwned\x07 OK"
ZEROS_1MB = bytes(1024 * 1024)

Behaviour = Callable[[socket.socket, threading.Event], None]


# --- one parsed request ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A request head as the server saw it (latin-1 text, so any bytes round-trip)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def route(self) -> str:
        segments = [segment for segment in self.path.split("/") if segment]
        return segments[0] if segments else ""

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True, encoding="latin-1"))

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def parse_head(head: bytes) -> Request | None:
    """Parse `METHOD target HTTP/1.x` and the header lines; None when it is not a request."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name.strip(), value.strip()))
    return Request(parts[0], parts[1], tuple(headers))


def read_request_head(conn: socket.socket, stop: threading.Event, deadline: float | None = None) -> bytes:
    """Read until the end of the request head, the stop event, EOF or the time bound."""
    deadline = deadline if deadline is not None else time.monotonic() + MAX_BEHAVIOUR_SECONDS
    data = b""
    conn.settimeout(_IO_POLL_SECONDS)
    while b"\r\n\r\n" not in data and len(data) < _MAX_HEAD_BYTES:
        if stop.is_set() or time.monotonic() > deadline:
            break
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


# --- one exchange: a request and the tools to answer it -------------------------------------------------------


@dataclass
class Exchange:
    """The connection, its request and bounded ways to answer it."""

    conn: socket.socket
    request: Request
    server: HostileServer
    deadline: float

    @property
    def stop(self) -> threading.Event:
        return self.server.stop_event

    def alive(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def param(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def number(self, name: str, default: float) -> float:
        return float(self.param(name) or default)

    def hits(self) -> int:
        """How many requests (this one included) this route has seen with this `key`."""
        return self.server.hit(self.request.route, self.param("key"))

    def misbehave(self) -> bool:
        """True while this key has been seen at most `times` times (always, without `times`)."""
        times = self.param("times")
        return not times or self.hits() <= int(times)

    def bound(self, name: str = "for") -> None:
        """Shorten this exchange's time bound to the `for` parameter, if given."""
        if seconds := self.param(name):
            self.deadline = min(self.deadline, time.monotonic() + float(seconds))

    def send(self, data: bytes) -> bool:
        """Send all of `data`; False when the client went away, the stop event or the time bound came first."""
        view = memoryview(data)
        while view:
            if not self.alive():
                return False
            try:
                sent = self.conn.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep, cut short by the stop event or the time bound; True when the whole time passed."""
        remaining = min(seconds, self.deadline - time.monotonic())
        if remaining <= 0:
            return False
        return not self.stop.wait(remaining) and time.monotonic() < self.deadline

    def hang(self) -> None:
        """Say nothing until the stop event or the time bound."""
        self.stop.wait(max(0.0, self.deadline - time.monotonic()))

    def head(
        self,
        status: int,
        reason: bytes = b"",
        headers: Sequence[tuple[str, str | bytes]] = (),
        *,
        length: int | None = None,
    ) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (status, reason or _REASONS.get(status, b"Whatever"))]
        for name, value in headers:
            lines.append(name.encode("latin-1") + b": " + (value if isinstance(value, bytes) else value.encode()))
        if length is not None:
            lines.append(b"Content-Length: %d" % length)
        if not self.param("keepalive"):
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[str, str | bytes]] = (),
        reason: bytes = b"",
    ) -> bool:
        return self.send(self.head(status, reason, headers, length=len(body)) + body)

    def ok(self) -> bool:
        return self.respond(200, b"ok\n", [("Content-Type", "text/plain")])

    def drip(self, every: float, byte: bytes = b"x") -> None:
        """One byte every `every` seconds until the client leaves, the stop event or the time bound."""
        while self.send(byte) and self.wait(every):
            pass

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        with contextlib.suppress(OSError):
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()

    def linger(self) -> None:
        """Half-close and let the client read everything before the socket goes (no RST race)."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)
        end = min(self.deadline, time.monotonic() + 1.0)
        while time.monotonic() < end and not self.stop.is_set():
            try:
                if not self.conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


_REASONS = {
    200: b"OK",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


# --- routes -----------------------------------------------------------------------------------------------------

Route = Callable[[Exchange], None]


def route_ok(ex: Exchange) -> None:
    """`/ok`: 200 with a 3-byte body."""
    ex.ok()
    ex.linger()


def route_silent(ex: Exchange) -> None:
    """`/silent`: read the request, never answer."""
    ex.bound()
    ex.hang()


def route_slow(ex: Exchange) -> None:
    """`/slow?key=K&times=N&for=S`: say nothing (for the first N requests of K), then 200."""
    ex.bound()
    if ex.misbehave():
        ex.hang()
    else:
        route_ok(ex)


def route_delay(ex: Exchange) -> None:
    """`/delay?s=1`: 200 after `s` seconds."""
    if ex.wait(ex.number("s", 1.0)):
        route_ok(ex)


def route_drip(ex: Exchange) -> None:
    """`/drip?every=0.2`: a 200 head promising 1 GB, then one body byte every `every` seconds."""
    ex.bound()
    if ex.send(ex.head(200, headers=[("Content-Type", "text/plain")], length=10**9)):
        ex.drip(ex.number("every", 0.2))


def route_drip_headers(ex: Exchange) -> None:
    """`/drip-headers?every=0.2`: a status line, then a header that grows by a byte every `every` s."""
    ex.bound()
    if ex.send(b"HTTP/1.1 200 OK\r\nX-Slow: "):
        ex.drip(ex.number("every", 0.2))


def route_short_body(ex: Exchange) -> None:
    """`/short-body`: Content-Length 100, 10 bytes of body, then close."""
    ex.send(ex.head(200, headers=[("Content-Type", "text/plain")], length=100) + b"0123456789")
    ex.linger()


def route_bad_chunked(ex: Exchange) -> None:
    """`/bad-chunked`: chunked transfer encoding whose first chunk size is not hex."""
    head = ex.head(200, headers=[("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
    ex.send(head + b"5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n")
    ex.linger()


def route_reset(ex: Exchange) -> None:
    """`/reset`: a 200 head promising 1 MB, 1000 bytes of it, a pause, then a TCP RST."""
    if ex.send(ex.head(200, length=1_000_000) + b"x" * 1000):
        ex.wait(0.2)
    ex.reset()


def route_close(ex: Exchange) -> None:
    """`/close`: read the request, close without a word."""
    ex.conn.close()


def route_garbage(ex: Exchange) -> None:
    """`/garbage`: something that is not an HTTP status line."""
    ex.send(b"SSH-2.0-OpenSSH_9.9 \x00\xff this is not http\r\n\r\n")
    ex.linger()


def route_no_colon(ex: Exchange) -> None:
    """`/no-colon`: a head with a line that is no field, before its Content-Length; kept open."""
    ex.send(b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 3\r\n\r\nok\n")
    ex.linger()


def route_many_headers(ex: Exchange) -> None:
    """`/many-headers?count=5000`: a 200 head with thousands of header lines."""
    count = int(ex.number("count", 5000))
    ex.send(ex.head(200, headers=[(f"X-Header-{i}", "v") for i in range(count)], length=0))
    ex.linger()


def route_huge_header(ex: Exchange) -> None:
    """`/huge-header?size=1048576`: one header line of a megabyte."""
    size = int(ex.number("size", 1024 * 1024))
    ex.send(ex.head(200, headers=[("X-Huge", b"a" * size)], length=0))
    ex.linger()


def route_redirect(ex: Exchange) -> None:
    """`/redirect?to=LOCATION&code=302&drip=0`: a redirect; with `drip`, its body drips; with
    `also=LOCATION`, a second Location header.

    `/redirect?key=K` redirects to `server.locations[K]`, a Location the input URL does not show.
    """
    if (key := ex.param("key")) in ex.server.locations:
        location = ex.server.locations[key]
    else:
        location = unquote_to_bytes(ex.request.query.get("to", "/ok").encode("latin-1"))
    code = int(ex.number("code", 302))
    if also := ex.param("also"):
        ex.respond(code, b"", [("Location", location), ("Location", unquote_to_bytes(also.encode("latin-1")))])
        ex.linger()
        return
    if every := ex.number("drip", 0):
        ex.bound()
        if ex.send(ex.head(code, headers=[("Location", location)], length=10**6)):
            ex.drip(every)
        return
    ex.respond(code, b"", [("Location", location)])
    ex.linger()


def route_redirect_loop(ex: Exchange) -> None:
    """`/redirect-loop`: a 302 back to itself, forever."""
    ex.respond(302, b"", [("Location", ex.request.target)])
    ex.linger()


def route_huge(ex: Exchange) -> None:
    """`/huge`: Content-Length 5 GB of zeros, sent until the client goes away."""
    ex.bound()
    if ex.send(ex.head(200, headers=[("Content-Type", "application/octet-stream")], length=5 * 10**9)):
        block = bytes(256 * 1024)
        while ex.send(block):
            pass


def _bomb(ex: Exchange, encoding: str, wbits: int) -> None:
    """Zeros compressed lazily, 1 MB at a time: kilobytes on the wire, gigabytes decoded."""
    ex.bound()
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Encoding", encoding),
        ("Transfer-Encoding", "chunked"),
    ]
    if not ex.send(ex.head(200, headers=headers)):
        return
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    for _ in range(20 * 1024):  # 20 GiB decoded at most
        chunk = compressor.compress(ZEROS_1MB) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if not ex.send(b"%x\r\n%s\r\n" % (len(chunk), chunk)):
            return
    tail = compressor.flush()
    ex.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))


def route_gzip_bomb(ex: Exchange) -> None:
    """`/gzip-bomb`: Content-Encoding gzip, endless zeros."""
    _bomb(ex, "gzip", 31)


def route_deflate_bomb(ex: Exchange) -> None:
    """`/deflate-bomb`: Content-Encoding deflate (zlib-wrapped), endless zeros."""
    _bomb(ex, "deflate", 15)


def route_status(ex: Exchange) -> None:
    """`/status?code=503&times=N&key=K&after=S`: `code` (with `Retry-After: S`) N times per key, then 200."""
    if not ex.misbehave():
        route_ok(ex)
        return
    headers: list[tuple[str, str | bytes]] = [("Content-Type", "text/plain")]
    if after := ex.param("after"):
        headers.append(("Retry-After", after))
    code = int(ex.number("code", 503))
    ex.respond(code, b"%d\n" % code, headers)
    ex.linger()


def route_endless_error(ex: Exchange) -> None:
    """`/endless-error?code=503&times=N&key=K&fast=BYTES`: an error whose body never ends, then 200.

    The body promises 10 GB: `fast` bytes go at once, then it drips a byte every 0.2 s, so
    only a client that reads a bounded part of it before retrying gets anywhere.
    """
    ex.bound()
    if not ex.misbehave():
        route_ok(ex)
        return
    code = int(ex.number("code", 503))
    if ex.send(ex.head(code, headers=[("Content-Type", "text/plain")], length=10 * 10**9)):
        if ex.send(bytes(int(ex.number("fast", 1024 * 1024)))):
            ex.drip(ex.number("every", 0.2))


def route_informational(ex: Exchange) -> None:
    """`/informational?codes=102,103`: an informational response of each code, then `200 ok`."""
    for code in ex.param("codes", "103").split(","):
        if not ex.send(b"HTTP/1.1 %s Informational\r\nLink: </style.css>; rel=preload\r\n\r\n" % code.encode()):
            return
    route_ok(ex)


def route_reason(ex: Exchange) -> None:
    """`/reason?text=PERCENT-ENCODED&code=200`: a status line with a hostile reason phrase."""
    text = ex.param("text")
    reason = unquote_to_bytes(text.encode("latin-1")) if text else EVIL_REASON
    ex.respond(int(ex.number("code", 200)), b"ok\n", [("Content-Type", "text/plain")], reason=reason)
    ex.linger()


ROUTES: dict[str, Route] = {
    "ok": route_ok,
    "silent": route_silent,
    "slow": route_slow,
    "delay": route_delay,
    "drip": route_drip,
    "drip-headers": route_drip_headers,
    "short-body": route_short_body,
    "bad-chunked": route_bad_chunked,
    "reset": route_reset,
    "close": route_close,
    "garbage": route_garbage,
    "no-colon": route_no_colon,
    "many-headers": route_many_headers,
    "huge-header": route_huge_header,
    "redirect": route_redirect,
    "redirect-loop": route_redirect_loop,
    "huge": route_huge,
    "gzip-bomb": route_gzip_bomb,
    "deflate-bomb": route_deflate_bomb,
    "status": route_status,
    "endless-error": route_endless_error,
    "reason": route_reason,
    "informational": route_informational,
}


def _not_found(ex: Exchange) -> None:
    ex.respond(404, b"no such hostile route\n", [("Content-Type", "text/plain")])
    ex.linger()


# --- whole-connection behaviours (no request parsing) -------------------------------------------------------


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, read the request, never answer (until the test ends or the time bound)."""
    read_request_head(conn, stop)
    stop.wait(MAX_BEHAVIOUR_SECONDS)


def stall_after_headers(conn: socket.socket, stop: threading.Event) -> None:
    """Send a 200 head promising 100 bytes, 10 of them, then nothing."""
    read_request_head(conn, stop)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789")
    stop.wait(MAX_BEHAVIOUR_SECONDS)


def truncated_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 100 bytes, send 10, close the connection."""
    read_request_head(conn, stop)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789")


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    """Answer with something that is not HTTP, then close."""
    read_request_head(conn, stop)
    conn.sendall(b"SSH-2.0-OpenSSH_9.9 this is not http\r\n\r\n")


def never_read(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and hold the connection without ever reading from it: the client's sends fill up."""
    stop.wait(MAX_BEHAVIOUR_SECONDS)


BEHAVIOURS: dict[str, Behaviour] = {
    "silent": silent,
    "stall_after_headers": stall_after_headers,
    "truncated_body": truncated_body,
    "garbage": garbage,
    "never_read": never_read,
}


# --- the server ---------------------------------------------------------------------------------------------------


@dataclass
class HostileServer:
    """A raw TCP server on loopback: `ROUTES` by path, or one `behaviour` for every connection.

    `.base_url`, `.accepted` (connections so far), `.requests` (parsed request heads, routing
    mode only), `.hit()` counts per (route, key). A context manager; `stop()` ends everything.
    """

    behaviour: Behaviour | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    # Locations for `/redirect?key=K`, set by the test.
    locations: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: Counter[tuple[str, str]] = Counter()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, name="hostile-accept", daemon=True)
        self._accept_thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def hit(self, route: str, key: str) -> int:
        with self._lock:
            self._hits[(route, key)] += 1
            return self._hits[(route, key)]

    def requests_to(self, route: str) -> list[Request]:
        return [request for request in list(self.requests) if request.route == route]

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if self.behaviour is not None:
                self.behaviour(conn, self.stop_event)
            else:
                self._route(conn)

    def _route(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + MAX_BEHAVIOUR_SECONDS
        head = read_request_head(conn, self.stop_event, deadline)
        request = parse_head(head)
        if request is None:
            return
        request = Request(request.method, request.target, request.headers, self._body(conn, head, request, deadline))
        self.requests.append(request)
        ROUTES.get(request.route, _not_found)(Exchange(conn, request, self, deadline))

    def _body(self, conn: socket.socket, head: bytes, request: Request, deadline: float) -> bytes:
        """The request body, up to 1 MB (an unread body would make close() send a RST)."""
        if request.route == "silent":
            return b""
        try:
            length = min(int(request.header("Content-Length") or 0), _MAX_REQUEST_BODY)
        except ValueError:
            return b""
        body = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
        while len(body) < length and not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            body += chunk
        return body[:length]

    def stop(self) -> None:
        self.stop_event.set()
        end = time.monotonic() + MAX_BEHAVIOUR_SECONDS
        self._accept_thread.join(max(0.0, end - time.monotonic()))
        for thread in list(self._threads):
            thread.join(max(0.0, end - time.monotonic()))
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def hostile(behaviour: str | Behaviour | None = None) -> Iterator[HostileServer]:
    """A started HostileServer (routing, or a `BEHAVIOURS` name, or a callable), stopped on exit."""
    server = HostileServer(BEHAVIOURS[behaviour] if isinstance(behaviour, str) else behaviour)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full and never drained: a connect to it times out
    (the kernel drops the SYN) instead of being refused."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((LOOPBACK, port))
        time.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --- subprocess helpers -------------------------------------------------------------------------------------------


def cli_command() -> str:
    """The installed `pooledfetch` console script, next to the running interpreter."""
    path = Path(sys.executable).parent / "pooledfetch"
    assert path.exists(), f"pooledfetch is not installed next to {sys.executable}"
    return str(path)


_OFFLINE_SITECUSTOMIZE = '''\
"""Written by tests/hostile.py: no DNS from this process. *.test is 127.0.0.1, IP literals and
localhost resolve as usual, any other name fails at once without asking a resolver."""
import ipaddress
import socket

_real = socket.getaddrinfo


def _offline_getaddrinfo(host, port, *args, **kwargs):
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if isinstance(name, str):
        bare = name.strip("[]").rstrip(".").lower()
        if bare.endswith(".test"):
            return _real("127.0.0.1", port, *args, **kwargs)
        try:
            ipaddress.ip_address(bare.split("%")[0])
        except ValueError:
            if bare != "localhost":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline test)")
    return _real(host, port, *args, **kwargs)


socket.getaddrinfo = _offline_getaddrinfo
'''


# Runs the command given in argv[2:] and writes {"returncode", "maxrss_kb"} to argv[1] as JSON.
# Why a launcher: Linux charges a child's ru_maxrss with the resident size of the process it was
# forked from (exec records the old address space's high-water mark), so a CLI forked straight
# from a 200 MB pytest would report at least 200 MB. Forked from this small launcher, it reports
# its own peak (or the launcher's ~10 MB, whichever is larger).
_RSS_LAUNCHER = """
import json, os, subprocess, sys, threading
process = subprocess.Popen(sys.argv[2:])
watchdog = threading.Timer(float(os.environ.get("RSS_LAUNCHER_TIMEOUT", "60")), process.kill)
watchdog.start()
_, status, usage = os.wait4(process.pid, 0)
watchdog.cancel()
process.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as report:
    json.dump({"returncode": process.returncode, "maxrss_kb": usage.ru_maxrss}, report)
"""


def run_measuring_peak_rss(
    args: Sequence[str], env: dict[str, str], directory: Path, timeout: float = 60.0
) -> tuple[int, int, bytes, bytes]:
    """Run `args` to completion; (exit code, peak RSS in KiB, stdout, stderr).

    The peak comes from os.wait4() on the process, called by a small launcher process (see
    _RSS_LAUNCHER for why not by this one); stdout and stderr go through files, not pipes.
    """
    report = directory / "rusage.json"
    out, err = directory / "measured.stdout", directory / "measured.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        subprocess.run(
            [sys.executable, "-c", _RSS_LAUNCHER, str(report), *args],
            env={**env, "RSS_LAUNCHER_TIMEOUT": str(timeout)},
            stdout=stdout,
            stderr=stderr,
            timeout=timeout + 10,
            check=True,
        )
    usage = json.loads(report.read_text(encoding="utf-8"))
    return int(usage["returncode"]), int(usage["maxrss_kb"]), out.read_bytes(), err.read_bytes()


def offline_env(directory: Path, **overrides: str) -> dict[str, str]:
    """os.environ for a subprocess that never reaches a real resolver, a proxy or the user's files.

    A `sitecustomize.py` in `directory` (put first on PYTHONPATH) fakes name resolution;
    HOME points into `directory`, so no ~/.netrc or other dotfile of the user is read.
    """
    site = directory / "offline-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_OFFLINE_SITECUSTOMIZE, encoding="utf-8")
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and name not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "NETRC")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        HOME=str(home),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env
