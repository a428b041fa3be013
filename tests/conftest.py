"""Shared fixtures: real servers on loopback only, every behaviour bounded in time.

- `demo_server`: a fresh `pooledfetch.demo.DemoServer` per test (counts `.connections` and `.requests`).
- `shared_demo_server`: one DemoServer for the whole session, for tests that do not count anything
  (and for hypothesis tests, which cannot use function-scoped fixtures).
- `tls_ca`, `ca_pem`, `https_server`: a trustme CA, its PEM on disk, and a DemoServer speaking TLS
  with a certificate for 127.0.0.1 / localhost signed by that CA.
- `hostile_server`: a factory for raw TCP servers that misbehave (never answer, stall, truncate, talk garbage,
  drip, bomb, reset...); the server itself lives in tests/hostile.py.
- `fake_dns`: a resolver in front of `socket.getaddrinfo`: `*.invalid` fails, `*.test` is 127.0.0.1,
  everything else goes to the real resolver.
- `closed_port` (alias `free_port`): a loopback port with nothing listening on it.
- `server`, `other_server`: two `tests/recording.RecordingServer`s, which record each request's arrival
  and the most in flight at once (modules that need another kind of `server` define their own).
- `httpserver` (pytest-httpserver) listens on 127.0.0.1; `second_httpserver` is another instance on
  another port, e.g. the far end of a cross-origin redirect.

An autouse fixture removes proxy variables from the environment, so no request leaves loopback through one.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from hostile import BEHAVIOURS, LOOPBACK, MAX_THREAD_SECONDS, Behaviour, HostileServer
from pytest_httpserver import HTTPServer
from recording import RecordingServer

from pooledfetch.demo import DemoServer

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback servers directly; a proxy from the developer's shell must not interfere."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# --- the demo server -------------------------------------------------------------------------------


# serve_forever() polls for shutdown every 0.5 s by default: that would be added to every test's teardown.
SERVE_POLL_SECONDS = 0.02


ServerT = TypeVar("ServerT", bound=socketserver.BaseServer)


def serving(server: ServerT) -> Iterator[ServerT]:
    """Run `server` in a daemon thread (quick to shut down) and stop it afterwards."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SERVE_POLL_SECONDS}, name="test-server", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(MAX_THREAD_SECONDS)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    yield from serving(RecordingServer())


@pytest.fixture
def other_server() -> Iterator[RecordingServer]:
    yield from serving(RecordingServer())


@pytest.fixture
def demo_server() -> Iterator[DemoServer]:
    """A started DemoServer on 127.0.0.1; `.base_url`, `.connections`, `.requests`."""
    yield from serving(DemoServer())


@pytest.fixture(scope="session")
def shared_demo_server() -> Iterator[DemoServer]:
    """One DemoServer for the session: do not assert on its counters."""
    yield from serving(DemoServer())


# --- TLS ------------------------------------------------------------------------------------------------


class TLSDemoServer(DemoServer):
    """The demo server behind TLS. The handshake runs in the handler thread, not in the accept loop."""

    scheme = "https"

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.handshake_failures = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client rejecting the certificate is an expected outcome here, not a traceback on stderr.
        with self._lock:
            self.handshake_failures += 1


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(tls_ca: trustme.CA, tmp_path: Path) -> str:
    """Path of the trustme CA certificate in PEM form (for FetchConfig(ca_bundle=...))."""
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def https_server(tls_ca: trustme.CA) -> Iterator[TLSDemoServer]:
    """A started TLS demo server whose certificate covers 127.0.0.1 and localhost only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
    yield from serving(TLSDemoServer(context))


# --- pytest-httpserver ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    """Bind pytest-httpserver's `httpserver` to 127.0.0.1 explicitly (not whatever "localhost" is)."""
    return (LOOPBACK, 0)


@pytest.fixture
def second_httpserver() -> Iterator[HTTPServer]:
    """Another pytest-httpserver on its own port, e.g. the far end of a cross-origin redirect."""
    server = HTTPServer(host=LOOPBACK, port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


# --- hostile servers --------------------------------------------------------------------------------------
# The server itself is ordinary code in tests/hostile.py, so subprocess tests and scripts can use it too.


@pytest.fixture
def hostile_server() -> Iterator[Callable[..., HostileServer]]:
    """Factory: `hostile_server("silent")` (a name from BEHAVIOURS, or any callable taking the
    accepted socket and a stop event) → a started HostileServer, stopped when the test ends;
    `hostile_server()` → one that routes on the path (hostile.ROUTES: `/drip`, `/gzip-bomb`, ...).
    `.base_url`, `.accepted` (connections so far), `.requests` (routing mode)."""
    servers: list[HostileServer] = []

    def start(behaviour: str | Behaviour | None = None) -> HostileServer:
        server = HostileServer(BEHAVIOURS[behaviour] if isinstance(behaviour, str) else behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- ports and names -------------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port that was free a moment ago and has nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port(closed_port: int) -> int:
    """Alias of `closed_port`."""
    return closed_port


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Resolve `*.invalid` to "no such name" and `*.test` to 127.0.0.1; delegate the rest.

    Returns the list of names looked up, in order, so a test can see what was resolved.
    """
    real_getaddrinfo = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode("ascii") if isinstance(host, bytes) else host
        if isinstance(name, str):
            looked_up.append(name)
            if name.rstrip(".").lower().endswith(".invalid"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            if name.rstrip(".").lower().endswith(".test"):
                return real_getaddrinfo(LOOPBACK, port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up
