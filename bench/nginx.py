"""A throwaway nginx on loopback for the benchmarks: HTTP and HTTPS, keep-alive, stub_status."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOSTS = 20
SMALL_BODY = b"x" * 200
LARGE_BODY = b"y" * 100_000

CONFIG = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        {listen_http}
        {listen_https}
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        root {prefix}/www;
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location = /status {{ stub_status; }}
    }}
}}
"""


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise SystemExit("nginx not found: install it (Debian: apt-get install nginx-light) and run again")
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_certificate(prefix: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1, via trustme (a test extra) or openssl."""
    ca_path = prefix / "ca.pem"
    try:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert(*(f"127.0.0.{host}" for host in range(1, HOSTS + 1)), "localhost")
        server.private_key_pem.write_to_path(str(prefix / "key.pem"))
        server.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))
        ca.cert_pem.write_to_path(str(ca_path))
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(prefix / "key.pem"),
             "-out", str(prefix / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        shutil.copy(prefix / "cert.pem", ca_path)
    return ca_path


@dataclass
class Nginx:
    http_port: int
    https_port: int
    status_port: int
    ca_path: str
    process: subprocess.Popen[bytes]
    prefix: Path

    def http_url(self, path: str, host: int = 1) -> str:
        return f"http://127.0.0.{host}:{self.http_port}{path}"

    def https_url(self, path: str, host: int = 1, port: int | None = None) -> str:
        return f"https://127.0.0.{host}:{port or self.https_port}{path}"

    def accepted_connections(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5) as response:
            text = response.read().decode()
        # "server accepts handled requests\n N N N": the first number counts accepted connections.
        match = re.search(r"^\s*(\d+)\s+\d+\s+\d+\s*$", text, re.MULTILINE)
        assert match, text
        return int(match.group(1)) - 1  # minus the status request's own connection

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


def start() -> Nginx:
    prefix = Path(tempfile.mkdtemp(prefix="pooledfetch-bench-"))
    prefix.chmod(0o755)  # nginx's workers drop root and must still read www/
    (prefix / "www").mkdir()
    (prefix / "www" / "small").write_bytes(SMALL_BODY)
    (prefix / "www" / "large").write_bytes(LARGE_BODY)
    ca_path = _write_certificate(prefix)
    http_port, https_port, status_port = _free_port(), _free_port(), _free_port()
    addresses = [f"127.0.0.{host}" for host in range(1, HOSTS + 1)]
    listen_http = "\n        ".join(f"listen {address}:{http_port};" for address in addresses)
    listen_https = "\n        ".join(f"listen {address}:{https_port} ssl;" for address in addresses)
    config = CONFIG.format(prefix=prefix, listen_http=listen_http, listen_https=listen_https, status_port=status_port)
    (prefix / "nginx.conf").write_text(config)
    process = subprocess.Popen(
        [find_nginx(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    server = Nginx(http_port, https_port, status_port, str(ca_path), process, prefix)
    for _ in range(100):
        try:
            server.accepted_connections()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise SystemExit("nginx did not start: see its error log")
