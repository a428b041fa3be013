"""Controls power users expect: options from the environment, cookies, client certificates, completion."""

from __future__ import annotations

import http.server
import json
import os
import select
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from conftest import LOOPBACK, TLSDemoServer, serving
from cryptography.hazmat.primitives import serialization
from helpers import two_hosts_with_the_ca_file_gone_between
from hostile import cli_command
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pooledfetch import FetchConfig, fetch_all, tls
from pooledfetch.cli import cli
from pooledfetch.configfile import load_defaults
from pooledfetch.engine import RunProgress, run
from pooledfetch.errors import ExitCode
from pooledfetch.sources import iter_targets


def _recording(httpserver: HTTPServer) -> list[Request]:
    seen: list[Request] = []

    def record(request: Request) -> Response:
        seen.append(request)
        return Response("ok")

    httpserver.expect_request("/seen").respond_with_handler(record)
    return seen


def _url_file(tmp_path: Path, url: str) -> str:
    path = tmp_path / "urls.txt"
    path.write_text(url + "\n")
    return str(path)


def test_options_come_from_the_environment_and_the_command_line_wins(httpserver: HTTPServer, tmp_path: Path) -> None:
    seen = _recording(httpserver)
    urls = _url_file(tmp_path, httpserver.url_for("/seen"))
    env = {"POOLEDFETCH_USER_AGENT": "from-env/1", "POOLEDFETCH_QUIET": "1"}

    from_env = CliRunner(env=env).invoke(cli, [urls])
    overridden = CliRunner(env=env).invoke(cli, [urls, "-A", "from-flag/2"])

    assert (from_env.exit_code, overridden.exit_code) == (0, 0)
    assert from_env.stdout == ""  # POOLEDFETCH_QUIET
    assert [request.headers["User-Agent"] for request in seen] == ["from-env/1", "from-flag/2"]


def test_options_named_otherwise_inside_take_their_variable_as_spelt(httpserver: HTTPServer, tmp_path: Path) -> None:
    """POOLEDFETCH_HEADER and POOLEDFETCH_OUTPUT were ignored (only ..._HEADERS and ..._OUTPUTS,
    the parameters' inner names, worked), and a header value's space split it in two."""
    seen = _recording(httpserver)
    urls = _url_file(tmp_path, httpserver.url_for("/seen"))
    out = tmp_path / "rows.jsonl"
    # A trailing newline (a heredoc's) was an empty value: "-H '' is not 'Name: value'".
    env = {"POOLEDFETCH_HEADER": "X-One: first value\nX-Two: second\n", "POOLEDFETCH_OUTPUT": f"{out}\n"}

    result = CliRunner(env=env).invoke(cli, [urls, "-q"])

    assert result.exit_code == 0, result.output
    assert [(request.headers["X-One"], request.headers["X-Two"]) for request in seen] == [("first value", "second")]
    assert len(out.read_text().splitlines()) == 1


def test_a_config_file_sets_defaults_below_the_environment_and_the_command_line(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    seen = _recording(httpserver)
    urls = _url_file(tmp_path, httpserver.url_for("/seen"))
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[project]\nname = "x"\n\n[tool.pooledfetch]\n'
        'user_agent = "from-file/0"\nheader = ["X-From: file"]\nquiet = true\n'
    )

    from_file = CliRunner().invoke(cli, ["--config", str(config), urls])
    from_env = CliRunner(env={"POOLEDFETCH_USER_AGENT": "from-env/1"}).invoke(cli, ["--config", str(config), urls])
    from_flag = CliRunner(env={"POOLEDFETCH_CONFIG": str(config)}).invoke(cli, [urls, "-A", "from-flag/2"])

    assert [run.exit_code for run in (from_file, from_env, from_flag)] == [0, 0, 0]
    assert from_file.stdout == ""  # quiet = true
    assert [request.headers["User-Agent"] for request in seen] == ["from-file/0", "from-env/1", "from-flag/2"]
    assert all(request.headers["X-From"] == "file" for request in seen)


def test_a_standalone_config_file_uses_its_top_level(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/moved").respond_with_data("", status=302, headers={"Location": "/seen"})
    seen = _recording(httpserver)
    config = tmp_path / "pooledfetch.toml"
    config.write_text("no-follow = true\nformat = 'jsonl'\noutput = ['-']\n")
    result = CliRunner().invoke(cli, ["--config", str(config), _url_file(tmp_path, httpserver.url_for("/moved"))])
    assert result.exit_code == 0, result.output
    assert '"status": 302' in result.stdout
    assert seen == []


def test_the_no_side_of_a_flag_pair_sets_the_flag_off(tmp_path: Path) -> None:
    config = tmp_path / "pooledfetch.toml"
    config.write_text("no-pool-block = true\npool_maxsize = 7\n")
    assert load_defaults(str(config), cli) == {"pool_block": False, "pool_maxsize": 7}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("workers = [", "is not valid TOML"),
        ("wrokers = 3", "'wrokers' is not a pooledfetch option"),
        ("version = true", "'version' is not a pooledfetch option"),
        ("[tool.black]\nline-length = 1", "no [tool.pooledfetch] table"),
        ("header = [['a']]", "'header' must be a list of values"),
        ("workers = [1, 2]", "'workers' takes one value, not a list"),
        ("quiet = 'yes'", "'quiet' is a flag: use true or false"),
        ("workers = 'many'", "'workers' must be a whole number"),
    ],
)
def test_a_bad_config_file_is_a_usage_error_naming_the_problem(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content + "\n")
    result = CliRunner().invoke(cli, ["--config", str(config), str(config)])
    assert result.exit_code == ExitCode.USAGE
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cookies_are_sent_with_every_request(httpserver: HTTPServer, tmp_path: Path) -> None:
    seen = _recording(httpserver)
    result = CliRunner().invoke(
        cli, [_url_file(tmp_path, httpserver.url_for("/seen")), "-q", "-b", "a=1", "-b", "b=two"]
    )
    assert result.exit_code == 0
    assert seen[0].headers["Cookie"] == "a=1; b=two"


@pytest.mark.parametrize("cookie", ["no-equals-sign", "=value", "a=1; b=2"])
def test_a_malformed_cookie_is_a_usage_error(tmp_path: Path, cookie: str) -> None:
    result = CliRunner().invoke(cli, [_url_file(tmp_path, "http://127.0.0.1:9/"), "--cookie", cookie])
    assert result.exit_code == ExitCode.USAGE
    assert "cookie" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def mutual_tls_server(tls_ca: trustme.CA) -> Iterator[TLSDemoServer]:
    """A TLS server that accepts only clients with a certificate from `tls_ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(context)
    yield from serving(TLSDemoServer(context))


@pytest.mark.parametrize("key_apart", [False, True], ids=["cert-with-key", "cert-and-key"])
def test_a_client_certificate_opens_a_server_that_requires_one(
    mutual_tls_server: TLSDemoServer, tls_ca: trustme.CA, ca_pem: str, tmp_path: Path, key_apart: bool
) -> None:
    client = tls_ca.issue_cert("pooledfetch-client@example.test")
    cert = tmp_path / "client.pem"
    key = tmp_path / "client.key"
    if key_apart:
        client.cert_chain_pems[0].write_to_path(str(cert))
        client.private_key_pem.write_to_path(str(key))
        credentials = ["--cert", str(cert), "--key", str(key)]
    else:
        client.private_key_and_cert_chain_pem.write_to_path(str(cert))
        credentials = ["--cert", str(cert)]
    urls = _url_file(tmp_path, f"{mutual_tls_server.base_url}/get")
    base = [urls, "-o", "-", "--ca-bundle", ca_pem, "--retries", "0", "--timeout", "5"]

    refused = CliRunner().invoke(cli, base)
    admitted = CliRunner().invoke(cli, [*base, *credentials])

    assert refused.exit_code == ExitCode.SOME_FAILED
    assert '"error": "ssl"' in refused.stdout or '"error": "protocol"' in refused.stdout
    assert admitted.exit_code == ExitCode.OK, admitted.stdout + admitted.stderr
    assert '"status": 200' in admitted.stdout


def test_the_command_loads_its_tls_files_once(
    mutual_tls_server: TLSDemoServer,
    tls_ca: trustme.CA,
    ca_pem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check made before the exports open is the context the run fetches with: with a full
    trust store each load is ~20 ms of the run's start."""
    cert = tmp_path / "client.pem"
    tls_ca.issue_cert("pooledfetch-client@example.test").private_key_and_cert_chain_pem.write_to_path(str(cert))
    loaded: list[tuple[str | None, str | None]] = []
    load = tls.load

    def counted(config: FetchConfig) -> ssl.SSLContext:
        loaded.append((config.ca_bundle, config.client_cert))
        return load(config)

    monkeypatch.setattr(tls, "load", counted)
    urls = _url_file(tmp_path, f"{mutual_tls_server.base_url}/get")

    result = CliRunner().invoke(cli, [urls, "-o", "-", "--ca-bundle", ca_pem, "--cert", str(cert)])

    assert result.exit_code == ExitCode.OK, result.stdout + result.stderr
    assert '"status": 200' in result.stdout
    assert loaded == [(ca_pem, str(cert))]


@pytest.mark.parametrize("problem", ["ca-not-pem", "cert-not-pem", "encrypted-key", "key-of-another-cert"])
def test_unusable_tls_files_are_one_line_and_exit_2_before_any_request(
    problem: str, mutual_tls_server: TLSDemoServer, tls_ca: trustme.CA, ca_pem: str, tmp_path: Path
) -> None:
    client = tls_ca.issue_cert("pooledfetch-client@example.test")
    cert, key, not_pem = tmp_path / "client.pem", tmp_path / "client.key", tmp_path / "not.pem"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    not_pem.write_text("not PEM at all\n")
    ca, expected = ca_pem, "cannot be used as a client certificate"
    if problem == "ca-not-pem":
        ca, expected = str(not_pem), "holds no usable CA certificate"
    elif problem == "cert-not-pem":
        cert = not_pem
    elif problem == "encrypted-key":
        private_key = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
        encryption = serialization.BestAvailableEncryption(b"secret")
        key.write_bytes(
            private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        )
        expected = "private key is encrypted"
    else:
        tls_ca.issue_cert("someone-else@example.test").private_key_pem.write_to_path(str(key))
    urls = _url_file(tmp_path, f"{mutual_tls_server.base_url}/get")

    previous = tmp_path / "previous.jsonl"
    previous.write_text('{"a previous run": "kept"}\n')
    args = [urls, "-o", str(previous), "--ca-bundle", ca, "--cert", str(cert), "--key", str(key)]

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == ExitCode.USAGE
    assert f"Error: {expected}" in result.stderr or expected in result.stderr.splitlines()[-1], result.stderr
    assert "Traceback" not in result.output
    assert previous.read_text() == '{"a previous run": "kept"}\n'
    assert mutual_tls_server.requests == 0


def test_key_without_cert_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("not used")
    result = CliRunner().invoke(cli, [_url_file(tmp_path, "http://127.0.0.1:9/"), "--key", str(key)])
    assert result.exit_code == ExitCode.USAGE
    assert "--key needs --cert" in result.stderr


@pytest.mark.parametrize(
    "shell, marker", [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --no-files --command")]
)
def test_shell_completion_scripts(shell: str, marker: str) -> None:
    env = {**os.environ, "_POOLEDFETCH_COMPLETE": f"{shell}_source"}
    done = subprocess.run([cli_command()], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert marker in done.stdout and "pooledfetch" in done.stdout


class _RecordingProxy(http.server.ThreadingHTTPServer):
    """A forward proxy that answers every request itself and remembers the request line's target."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _ProxyHandler)
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RecordingProxy

    def do_GET(self) -> None:
        self.server.targets.append(self.path)  # absolute-form: http://host:port/path
        body = b"via proxy\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        """A tunnel to a loopback port (only): bytes piped both ways until either side closes."""
        self.server.targets.append(self.path)  # authority-form: host:port
        host, _, port = self.path.rpartition(":")
        if host not in (LOOPBACK, "localhost"):
            self.send_error(403)
            return
        with socket.create_connection((LOOPBACK, int(port)), timeout=10) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            sockets = [self.connection, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def proxy() -> Iterator[_RecordingProxy]:
    yield from serving(_RecordingProxy())


def test_https_through_a_proxy_tunnel_verifies_with_the_run_s_one_tls_context(
    proxy: _RecordingProxy, https_server: TLSDemoServer, ca_pem: str
) -> None:
    """The CA file is gone before the second tunnel's TLS connection opens, and it still verifies."""
    port = https_server.server_address[1]
    config = FetchConfig(proxy=proxy.url, ca_bundle=ca_pem, workers=1, retries=0)
    urls = two_hosts_with_the_ca_file_gone_between(https_server, ca_pem)
    rows = sorted(fetch_all(urls, config), key=lambda row: row.index)
    assert [(row.status, row.error) for row in rows] == [(200, ""), (200, "")]
    assert proxy.targets == [f"{LOOPBACK}:{port}", f"localhost:{port}"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_connections_through_a_proxy_are_accounted_like_direct_ones(
    proxy: _RecordingProxy, https_server: TLSDemoServer, httpserver: HTTPServer, ca_pem: str, scheme: str
) -> None:
    """Plain HTTP goes to the proxy itself; HTTPS through a tunnel per origin. Either way each
    row says whether its connection was new or reused, and the run counts what was opened."""
    httpserver.expect_request("/get").respond_with_data("ok")
    base = httpserver.url_for("/get") if scheme == "http" else f"{https_server.base_url}/get"
    config = FetchConfig(proxy=proxy.url, ca_bundle=ca_pem, workers=1, retries=0)
    progress = RunProgress()
    rows = sorted(run(iter_targets([base] * 3, config), config, progress=progress), key=lambda row: row.index)
    assert [(row.status, row.conn_reused) for row in rows] == [(200, False), (200, True), (200, True)]
    assert rows[0].connect_ms is not None and rows[0].connect_ms > 0
    assert rows[1].connect_ms == 0.0
    assert progress.accounting.connections_opened == 1
    assert progress.accounting.requests_sent == 3
    assert len(proxy.targets) == (3 if scheme == "http" else 1)  # one tunnel, three requests in it


def test_proxy_option_sends_every_request_through_the_proxy(
    proxy: _RecordingProxy, httpserver: HTTPServer, tmp_path: Path
) -> None:
    seen = _recording(httpserver)
    target = httpserver.url_for("/seen")
    result = CliRunner().invoke(cli, [_url_file(tmp_path, target), "-q", "--proxy", proxy.url])
    assert result.exit_code == 0
    assert proxy.targets == [target]
    assert seen == []  # the target itself was never contacted


def test_environment_proxy_is_used_unless_no_env_proxy(
    proxy: _RecordingProxy, httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _recording(httpserver)
    target = httpserver.url_for("/seen")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    urls = _url_file(tmp_path, target)

    through_env = CliRunner().invoke(cli, [urls, "-q"])
    direct = CliRunner().invoke(cli, [urls, "-q", "--no-env-proxy"])

    assert (through_env.exit_code, direct.exit_code) == (0, 0)
    assert proxy.targets == [target]
    assert len(seen) == 1


def test_a_proxy_that_is_not_an_http_url_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [_url_file(tmp_path, "http://127.0.0.1:9/"), "--proxy", "socks5://127.0.0.1:1"])
    assert result.exit_code == ExitCode.USAGE
    assert "--proxy" in result.stderr


@pytest.mark.parametrize("option", ["--proxy", "--base-url"])
def test_a_usage_error_masks_the_password_of_the_url_it_quotes(tmp_path: Path, option: str) -> None:
    result = CliRunner().invoke(
        cli, [_url_file(tmp_path, "http://127.0.0.1:9/"), option, "http://alice:s3cret@h:99999/"]
    )
    assert result.exit_code == ExitCode.USAGE
    assert "alice:***@h" in result.stderr and "s3cret" not in result.stderr


def test_a_proxy_that_refuses_is_told_in_words_not_a_tuple(tmp_path: Path, free_port: int) -> None:
    """The detail was `('Unable to connect to proxy', NewConnectionError("AccountedHTTPConnection(host=...`."""
    urls = _url_file(tmp_path, "http://127.0.0.1:9/")
    result = CliRunner().invoke(
        cli, [urls, "-q", "-o", "-", "--retries", "0", "--proxy", f"http://127.0.0.1:{free_port}"]
    )
    row = json.loads(result.stdout)
    assert row["error"] == "proxy"
    assert row["error_detail"].startswith("Unable to connect to proxy: Failed to establish a new connection")
