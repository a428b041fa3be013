"""A built-in threaded HTTP/1.1 keep-alive server with httpbin-style paths, on loopback.

`pooledfetch --demo` fetches the bundled sample list against it, offline. The tests use it
too: it counts the TCP connections it accepts, so connection reuse can be checked from the
server's side.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import threading
import time
import uuid
import zlib
from importlib import resources
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

MAX_DELAY_SECONDS = 10.0
MAX_BYTES = 10 * 1000 * 1000
MAX_REDIRECTS = 50
SAMPLE_LIST = "sample_urls.txt"


def sample_lines() -> list[str]:
    """The bundled sample list (relative httpbin-style paths)."""
    return resources.files("pooledfetch").joinpath(SAMPLE_LIST).read_text("utf-8").splitlines()


class DemoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pooledfetch-demo"
    # Headers and body leave in one write: separate small writes meet Nagle plus delayed ACK (40 ms each).
    wbufsize = 64 * 1024
    server: DemoServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's output is pooledfetch's own."""

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_PATCH(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def do_OPTIONS(self) -> None:
        self._route()

    def _route(self) -> None:
        self.server.count_request(self)
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        name = segments[0] if segments else ""
        argument = segments[1] if len(segments) > 1 else ""
        query = parse_qs(parts.query)
        body = self._request_body()
        try:
            if name in ("", "get", "anything", "post", "put", "patch", "delete", "headers", "json"):
                self._json(200, self._echo(body))
            elif name == "status":
                self._status(int(argument.split(",")[0]))
            elif name == "delay":
                time.sleep(min(float(argument or 0), MAX_DELAY_SECONDS))
                self._json(200, self._echo(body))
            elif name == "bytes":
                self._send(200, os.urandom(min(int(argument or 0), MAX_BYTES)), "application/octet-stream")
            elif name in ("redirect", "relative-redirect"):
                hops = min(int(argument or 1), MAX_REDIRECTS)
                self._redirect(302, f"/redirect/{hops - 1}" if hops > 1 else "/get")
            elif name == "redirect-to":
                status = int(query.get("status_code", ["302"])[0])
                self._redirect(status, query.get("url", ["/get"])[0])
            elif name == "gzip":
                self._send(200, gzip.compress(self._json_bytes(self._echo(body))), "application/json", "gzip")
            elif name == "deflate":
                self._send(200, zlib.compress(self._json_bytes(self._echo(body))), "application/json", "deflate")
            elif name == "html":
                self._send(200, b"<!doctype html><title>demo</title><h1>pooledfetch demo</h1>\n", "text/html")
            elif name == "uuid":
                self._json(200, {"uuid": str(uuid.uuid4())})
            elif name == "user-agent":
                self._json(200, {"user-agent": self.headers.get("User-Agent", "")})
            elif name == "robots.txt":
                self._send(200, b"User-agent: *\nDisallow: /deny\n", "text/plain")
            else:
                self._status(404)
        except ValueError:
            self._status(400)

    def _request_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BYTES)) if length > 0 else b""

    def _echo(self, body: bytes) -> dict[str, Any]:
        return {
            "method": self.command,
            "url": f"http://{self.headers.get('Host', '')}{self.path}",
            "headers": dict(self.headers.items()),
            "data": body.decode("utf-8", "replace"),
        }

    def _status(self, status: int) -> None:
        if 300 <= status < 400:
            self._redirect(status, "/get")
        else:
            self._send(status, b"" if status in (204, 304) else f"{status}\n".encode(), "text/plain")

    def _redirect(self, status: int, location: str) -> None:
        self._send(status, b"", "text/plain", location=location)

    @staticmethod
    def _json_bytes(payload: dict[str, Any]) -> bytes:
        return json.dumps(payload, indent=2).encode() + b"\n"

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, self._json_bytes(payload), "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, encoding: str | None = None, location: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        if location:
            self.send_header("Location", location)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class DemoServer(http.server.ThreadingHTTPServer):
    """Serve on 127.0.0.1 at a free port in a background thread; counts connections and requests."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), DemoHandler)
        self._lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self._thread: threading.Thread | None = None

    scheme = "http"

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.connections += 1
        super().process_request(request, client_address)

    def count_request(self, handler: DemoHandler) -> None:
        with self._lock:
            self.requests += 1

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name="pooledfetch-demo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DemoServer", "sample_lines"]
