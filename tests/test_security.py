"""What reaches the terminal, the exports and the wire when URLs, servers and files are hostile:
no escape sequences on stdout, no formulas in CSV, no credentials in output, no .netrc unless
asked, TLS verified unless -k. Every test runs the installed command in a real subprocess."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from helpers import run_on_pty
from hostile import HostileServer, cli_command, offline_env

from pooledfetch import results as rc
from pooledfetch.cli import cli
from pooledfetch.demo import DemoServer
from pooledfetch.results import FIELDS
from pooledfetch.text import mask_credentials

StartServer = Callable[..., HostileServer]


@pytest.fixture
def server(hostile_server: StartServer) -> HostileServer:
    return hostile_server()


def run_cli(
    tmp_path: Path, lines: Sequence[str | bytes], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run pooledfetch over `lines` (str or exact bytes), offline; no retries, short timeouts."""
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))
    done = subprocess.run(
        [cli_command(), str(urls), "--retries", "0", "--timeout", "2", *args],
        env=env or offline_env(tmp_path),
        capture_output=True,
        timeout=60,
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    return done


def jsonl(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(rows, key=lambda row: int(str(row["index"])))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return sorted(csv.DictReader(stream), key=lambda row: int(row["index"]))


def exports(tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "out.csv"), "-o", str(tmp_path / "out.json"), "-o", str(tmp_path / "out.jsonl")]


# --- the terminal ---------------------------------------------------------------------------------------------

TERMINAL_CONTROLS = (b"\x1b", b"\x07", b"\xc2\x9b", b"\r")


def hostile_terminal_lines(server: HostileServer) -> list[str | bytes]:
    return [
        server.url("reason"),  # reason phrase: ESC [31m and an OSC title ending in BEL
        server.url("reason?code=503&text=" + quote("\x1b[2J\x1b]0;title\x07 gone")),
        server.url("ok/%1b%5b31m%1b%5d0%3bx%07-percent-encoded"),
        f"{server.base_url}/ok/\x1b[31mred\x1b]0;x\x07-raw".encode(),
        f"{server.base_url}/ok/\u009b31m-c1-csi".encode(),
        f"{server.base_url}/ok/[bold red]markup[/bold red]",
        server.url("redirect?to=" + quote("http://127.0.0.1:1/\x1b[31m\x07")),
        b"http://\x1b]0;x\x07.invalid/",
    ]


def test_no_control_character_reaches_the_terminal_lines(server: HostileServer, tmp_path: Path) -> None:
    lines = hostile_terminal_lines(server)
    done = run_cli(tmp_path, lines)
    assert done.returncode == 1
    for control in TERMINAL_CONTROLS:
        assert control not in done.stdout, control
        assert control not in done.stderr, control
    printed = done.stdout.decode("utf-8").splitlines()
    assert len(printed) == len(lines)
    # Rich markup is not interpreted: it is printed as the literal text of the URL.
    assert any(line.endswith("/ok/[bold red]markup[/bold red]") for line in printed)
    # Control characters are shown as visible escapes, not dropped silently.
    assert any("\\x1b[31mred" in line for line in printed)


def test_no_control_character_reaches_stdout_as_jsonl(server: HostileServer, tmp_path: Path) -> None:
    lines = hostile_terminal_lines(server)
    done = run_cli(tmp_path, lines, "-o", "-")
    for control in TERMINAL_CONTROLS:
        assert control not in done.stdout, control
    rows = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(len(lines)))
    # The exports keep the exact values: JSON escapes them, it does not lose them.
    reasons = {row["reason"] for row in rows}
    assert "\x1b[31mRED\x1b]0;pwned\x07 OK" in reasons


def run_on_a_terminal(tmp_path: Path, lines: Sequence[str | bytes], timeout: float = 30.0) -> tuple[int, bytes]:
    """Run the CLI with stdout and stderr on a pseudo-terminal (the live view and the rich summary)."""
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))
    env = offline_env(tmp_path, TERM="xterm-256color", COLUMNS="240", LINES="50")
    env.pop("NO_COLOR")
    return run_on_pty([cli_command(), str(urls), "--retries", "0", "--timeout", "2"], env, timeout)


def test_no_injected_sequence_reaches_the_live_view_or_summary(server: HostileServer, tmp_path: Path) -> None:
    """On a terminal rich draws the live table and the summary with its own escape codes; none
    of the server's or the input's may get through: no title change, no screen clear, no BEL."""
    code, output = run_on_a_terminal(tmp_path, hostile_terminal_lines(server))
    assert code == 1, output.decode(errors="replace")
    assert b"Traceback" not in output
    for injected in (b"\x1b]0;", b"\x1b[2J", b"\x07", b"\xc2\x9b", b"pwned"):
        assert injected not in output, injected
    assert b"[bold red]markup[/bold red]" in output  # shown as text, not taken as markup


def test_csv_on_a_terminal_shows_server_text_escaped(server: HostileServer, tmp_path: Path) -> None:
    """`-o - --format csv` printed the reason phrase's ESC, OSC and BEL raw to the terminal (JSON
    escapes them anyway); in a file the CSV keeps the exact values."""
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("reason") + "\n", encoding="utf-8")
    env = offline_env(tmp_path, TERM="xterm-256color", COLUMNS="240", LINES="50")
    code, output = run_on_pty([cli_command(), str(urls), "-o", "-", "--format", "csv"], env)
    assert code == 0, output.decode(errors="replace")
    for injected in (b"\x1b]0;", b"\x07", b"\x1b[31mRED"):
        assert injected not in output, injected
    assert b"\\x1b[31mRED" in output  # shown escaped, not lost
    exported = tmp_path / "rows.csv"
    assert CliRunner().invoke(cli, [str(urls), "-q", "-o", str(exported)]).exit_code == 0
    assert "\x1b[31mRED\x1b]0;pwned\x07 OK" in exported.read_text(encoding="utf-8")


# --- CSV injection ------------------------------------------------------------------------------------------------

FORMULAS = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1:A2)", '=HYPERLINK("http://x.invalid","y")']


def test_csv_cells_that_look_like_formulas_are_defused(server: HostileServer, tmp_path: Path) -> None:
    evil_reason = '=HYPERLINK("http://x.invalid","click")'
    lines = [*FORMULAS, server.url("reason?text=" + quote(evil_reason))]
    done = run_cli(tmp_path, lines, "-q", *exports(tmp_path))
    assert done.returncode == 1
    table = csv_rows(tmp_path / "out.csv")
    assert [row["url"] for row in table[: len(FORMULAS)]] == ["'" + formula for formula in FORMULAS]
    assert [row["error"] for row in table[: len(FORMULAS)]] == [rc.INVALID_URL] * len(FORMULAS)
    assert table[-1]["reason"] == "'" + evil_reason
    for cell in (value for row in table for value in row.values()):
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    for rows in (jsonl(tmp_path / "out.jsonl"), json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))):
        rows = sorted(rows, key=lambda row: row["index"])
        assert [row["url"] for row in rows[: len(FORMULAS)]] == FORMULAS
        assert rows[-1]["reason"] == evil_reason


# --- credentials in URLs ---------------------------------------------------------------------------------------------

SECRETS = ("s3cret-pass", "t0ken-only", "hunter2-hop")


def credential_lines(server: HostileServer) -> list[str]:
    return [
        f"http://alice:s3cret-pass@127.0.0.1:{server.port}/ok",
        f"http://t0ken-only@127.0.0.1:{server.port}/ok",
        f"http://alice:s3cret-pass@127.0.0.1:{server.port}/redirect?key=hop",
        "http://alice:s3cret-pass@127.0.0.1:1/refused",
        "ftp://alice:s3cret-pass@127.0.0.1/invalid",
    ]


def all_output(done: subprocess.CompletedProcess[bytes], tmp_path: Path) -> dict[str, str]:
    texts = {"stdout": done.stdout.decode("utf-8"), "stderr": done.stderr.decode("utf-8")}
    for name in ("out.csv", "out.json", "out.jsonl"):
        texts[name] = (tmp_path / name).read_text(encoding="utf-8")
    return texts


def test_credentials_are_masked_everywhere_by_default(server: HostileServer, tmp_path: Path) -> None:
    server.locations["hop"] = f"http://bob:hunter2-hop@127.0.0.1:{server.port}/ok?hop=1".encode()
    done = run_cli(tmp_path, credential_lines(server), *exports(tmp_path))
    assert done.returncode == 1
    for where, text in all_output(done, tmp_path).items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in {where}"
    rows = jsonl(tmp_path / "out.jsonl")
    assert rows[0]["url"] == f"http://alice:***@127.0.0.1:{server.port}/ok"
    assert rows[1]["url"] == f"http://***@127.0.0.1:{server.port}/ok"
    assert rows[2]["final_url"] == f"http://bob:***@127.0.0.1:{server.port}/ok?hop=1"
    assert [row["error"] for row in rows] == ["", "", "", rc.CONNECT, rc.INVALID_URL]
    # Masked in the output only: the server still got the credentials.
    sent = {request.header("Authorization") for request in server.requests}
    assert "Basic " + base64.b64encode(b"alice:s3cret-pass").decode() in sent


def test_credentials_of_a_line_without_a_scheme_are_masked(server: HostileServer, tmp_path: Path) -> None:
    """`user:secret@host/` and `//user:secret@host/` (fetched with --default-scheme) showed the
    password on stdout and in the `url` column: only a `scheme://` authority was masked."""
    lines = [f"alice:s3cret-pass@127.0.0.1:{server.port}/ok", f"//alice:s3cret-pass@127.0.0.1:{server.port}/ok?2"]
    done = run_cli(tmp_path, lines, "--default-scheme", "http", *exports(tmp_path))
    assert done.returncode == 0, done.stderr
    for where, text in all_output(done, tmp_path).items():
        assert "s3cret-pass" not in text, where
    rows = sorted(jsonl(tmp_path / "out.jsonl"), key=lambda row: row["index"])
    assert [row["url"] for row in rows] == [
        f"alice:***@127.0.0.1:{server.port}/ok",
        f"//alice:***@127.0.0.1:{server.port}/ok?2",
    ]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("Failed to parse: 'user:pw@host/x'", "Failed to parse: 'user:***@host/x'"),
        ("user:p@ss@host/x", "user:***@host/x"),
        ("write to bob@example.com", "write to bob@example.com"),  # no password: maybe an address
        ("mailto:bob@example.com", "mailto:bob@example.com"),  # a URI whose part after the colon is no password
        ("http://u:p@h/ and v:q@k/", "http://u:***@h/ and v:***@k/"),
    ],
)
def test_mask_credentials_in_free_text(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_show_credentials_keeps_them(server: HostileServer, tmp_path: Path) -> None:
    server.locations["hop"] = f"http://bob:hunter2-hop@127.0.0.1:{server.port}/ok?hop=1".encode()
    done = run_cli(tmp_path, credential_lines(server), "--show-credentials", *exports(tmp_path))
    assert done.returncode == 1
    texts = all_output(done, tmp_path)
    for where in ("stdout", "out.csv", "out.json", "out.jsonl"):
        assert "alice:s3cret-pass@" in texts[where], where
        assert "t0ken-only@" in texts[where], where
    assert "bob:hunter2-hop@" in texts["out.jsonl"]


def test_a_password_with_an_at_sign_is_masked_whole(server: HostileServer, tmp_path: Path) -> None:
    """`user:p@ss@host` is user `user`, password `p@ss` (the last @ ends the userinfo, as urllib3
    and requests parse it): none of the password may show."""
    line = f"http://alice:p@ssw0rd-tail@127.0.0.1:{server.port}/ok"
    done = run_cli(tmp_path, [line], *exports(tmp_path))
    (request,) = server.requests
    assert request.header("Authorization") == "Basic " + base64.b64encode(b"alice:p@ssw0rd-tail").decode()
    for where, text in all_output(done, tmp_path).items():
        assert "ssw0rd-tail" not in text, f"part of the password in {where}: {text[:300]!r}"


# --- .netrc -------------------------------------------------------------------------------------------------------


def netrc_env(tmp_path: Path, host: str, *, via_variable: bool) -> dict[str, str]:
    """A .netrc with credentials for `host`: in $NETRC, or in the (fake) home directory."""
    env = offline_env(tmp_path)
    entry = f"machine {host}\n  login alice\n  password n3trc-secret\n"
    path = tmp_path / "netrc" if via_variable else Path(env["HOME"]) / ".netrc"
    path.write_text(entry, encoding="utf-8")
    path.chmod(0o600)
    if via_variable:
        env["NETRC"] = str(path)
    return env


NETRC_AUTH = "Basic " + base64.b64encode(b"alice:n3trc-secret").decode()


@pytest.mark.parametrize("via_variable", [True, False], ids=["NETRC", "HOME"])
def test_netrc_is_ignored_by_default(server: HostileServer, tmp_path: Path, via_variable: bool) -> None:
    env = netrc_env(tmp_path, "127.0.0.1", via_variable=via_variable)
    done = run_cli(tmp_path, [server.url("ok")], env=env)
    assert done.returncode == 0, done.stderr
    assert server.requests[0].header("Authorization") is None


@pytest.mark.parametrize("via_variable", [True, False], ids=["NETRC", "HOME"])
def test_netrc_is_used_with_the_flag(server: HostileServer, tmp_path: Path, via_variable: bool) -> None:
    env = netrc_env(tmp_path, "127.0.0.1", via_variable=via_variable)
    done = run_cli(tmp_path, [server.url("ok")], "--netrc", env=env)
    assert done.returncode == 0, done.stderr
    assert server.requests[0].header("Authorization") == NETRC_AUTH
    assert b"n3trc-secret" not in done.stdout + done.stderr


def test_netrc_credentials_do_not_follow_a_redirect_to_another_host(
    server: HostileServer, hostile_server: StartServer, tmp_path: Path
) -> None:
    other = hostile_server()
    env = netrc_env(tmp_path, "127.0.0.1", via_variable=True)
    url = server.url("redirect?to=" + quote(f"http://localhost:{other.port}/ok", safe=""))
    done = run_cli(tmp_path, [url], "--netrc", env=env)
    assert done.returncode == 0, done.stderr
    assert server.requests[0].header("Authorization") == NETRC_AUTH
    assert other.requests[0].header("Authorization") is None


def test_a_broken_netrc_is_one_clear_line(server: HostileServer, tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    (tmp_path / "netrc").write_text("this is not a netrc file\n", encoding="utf-8")
    env["NETRC"] = str(tmp_path / "netrc")
    done = run_cli(tmp_path, [server.url("ok")], "--netrc", env=env)
    assert done.returncode == 2, done.stderr
    printed = done.stderr.decode().splitlines()
    assert len(printed) == 1, f"expected one clear line on stderr, got {printed}"
    message = printed[0]
    assert message.startswith("pooledfetch: error:") and "netrc" in message
    assert server.requests == []


# --- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_is_verified_by_default(https_server: DemoServer, tmp_path: Path) -> None:
    done = run_cli(tmp_path, [f"{https_server.base_url}/get"], "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 1
    (row,) = jsonl(tmp_path / "out.jsonl")
    assert (row["status"], row["error"]) == (None, rc.SSL)
    assert "CERTIFICATE_VERIFY_FAILED" in str(row["error_detail"])


def test_tls_verification_is_off_only_with_insecure(https_server: DemoServer, tmp_path: Path) -> None:
    done = run_cli(tmp_path, [f"{https_server.base_url}/get"], "-k", "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 0, done.stderr
    (row,) = jsonl(tmp_path / "out.jsonl")
    assert (row["status"], row["error"]) == (200, "")
    assert b"Warning" not in done.stderr  # asked for once, not warned about per connection


def test_tls_with_the_ca_bundle_verifies(https_server: DemoServer, ca_pem: str, tmp_path: Path) -> None:
    done = run_cli(tmp_path, [f"{https_server.base_url}/get"], "--ca-bundle", ca_pem, "-o", str(tmp_path / "o.jsonl"))
    assert done.returncode == 0, done.stderr
    assert jsonl(tmp_path / "o.jsonl")[0]["status"] == 200


def test_insecure_wins_over_a_ca_bundle_in_the_environment(https_server: DemoServer, tmp_path: Path) -> None:
    env = offline_env(tmp_path, REQUESTS_CA_BUNDLE=str(tmp_path / "missing.pem"))
    done = run_cli(tmp_path, [f"{https_server.base_url}/get"], "-k", "-o", str(tmp_path / "o.jsonl"), env=env)
    assert done.returncode == 0, done.stderr
    assert jsonl(tmp_path / "o.jsonl")[0]["status"] == 200


def test_exports_header_is_the_schema(server: HostileServer, tmp_path: Path) -> None:
    """The CSV header row is the schema, so a formula-defusing prefix never shifts a column."""
    run_cli(tmp_path, ["=1+1", server.url("ok")], "-q", "-o", str(tmp_path / "out.csv"))
    with (tmp_path / "out.csv").open(encoding="utf-8", newline="") as stream:
        table = list(csv.reader(stream))
    assert table[0] == list(FIELDS)
    assert all(len(row) == len(FIELDS) for row in table)
