"""Cluster mode (pooledfetch.cluster): the engine on real Dask worker processes, on loopback only.

One LocalCluster of two worker processes is shared by the tests that only need a cluster to run
on (`dask_client`); tests about the command line start their own, as a user's run does. Killing
a worker is survivable for the shared cluster: its nanny starts a new one, and `dask_client`
waits for both workers before each test.
"""

from __future__ import annotations

import dataclasses
import http.server
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import serving
from helpers import IdleWatch, wait_until
from hostile import LOOPBACK, cli_command, offline_env
from recording import RecordingServer, most_in_one_second
from test_interrupts import Run

from pooledfetch import localworkers
from pooledfetch import results as rc
from pooledfetch.config import FetchConfig
from pooledfetch.demo import DemoServer
from pooledfetch.engine import DEFAULT_GRACE_SECONDS, fetch_all
from pooledfetch.errors import ExitCode, InputError
from pooledfetch.feed import Feed, ReadAhead
from pooledfetch.limits import Limiter
from pooledfetch.results import Result
from pooledfetch.sources import Target, iter_targets

distributed = pytest.importorskip("distributed")

from pooledfetch import cluster  # noqa: E402 - only once Dask is known to be there

# Cluster start-up on two busy cores can take several seconds.
START_SECONDS = 60.0
# Row fields that differ between two runs of the same URLs (timing, connections, who fetched).
_VARYING = {"ttfb_ms", "total_ms", "started_at", "conn_reused", "connect_ms", "pool_wait_ms", "worker"}


@pytest.fixture(scope="module")
def _shared_cluster() -> Iterator[Any]:
    with cluster.connect(2, None, START_SECONDS) as client:
        yield client


@pytest.fixture
def dask_client(_shared_cluster: Any) -> Any:
    """A client of the shared two-process LocalCluster, with both workers up."""
    _shared_cluster.wait_for_workers(2, timeout=START_SECONDS)
    return _shared_cluster


def _comparable(row: Result) -> dict[str, Any]:
    return {name: value for name, value in dataclasses.asdict(row).items() if name not in _VARYING}


def _lines(server: DemoServer, count: int) -> list[str]:
    paths = ["status/200", "status/404", "redirect/1", "bytes/100"]
    return [f"{server.base_url}/{paths[i % len(paths)]}?i={i}" for i in range(count)] + ["not a url", "ftp://x/"]


# --- the library -------------------------------------------------------------------------------------------


def test_chunks_on_two_processes_give_the_rows_of_a_single_process(dask_client: Any, demo_server: DemoServer) -> None:
    lines = _lines(demo_server, 120)
    config = FetchConfig(workers=4)
    single = sorted(fetch_all(lines, config), key=lambda row: row.index)
    rows = list(cluster.run_on_cluster(iter_targets(lines, config), config, dask_client, chunk_size=10))
    assert sorted(row.index for row in rows) == list(range(len(lines)))
    assert [_comparable(row) for row in sorted(rows, key=lambda row: row.index)] == [_comparable(r) for r in single]
    fetched = [row for row in rows if row.error != rc.INVALID_URL]
    assert len({row.worker for row in fetched}) == 2
    assert all(row.worker.startswith("tcp://127.0.0.1:") for row in fetched)
    assert {row.worker for row in rows if row.error == rc.INVALID_URL} == {""}


def test_keep_order_on_a_cluster_gives_input_order_with_a_bounded_window(
    dask_client: Any, demo_server: DemoServer
) -> None:
    # The first URL is slow: every later row waits for it, and no more than the window is taken.
    lines = [f"{demo_server.base_url}/delay/1"] + [f"{demo_server.base_url}/status/200?i={i}" for i in range(60)]
    config = FetchConfig(workers=4, keep_order=True, reorder_window=16)
    before = demo_server.requests
    rows = cluster.run_on_cluster(iter_targets(lines, config), config, dask_client)
    first = next(rows)
    assert first.index == 0 and first.status == 200
    assert demo_server.requests - before <= 16
    assert [row.index for row in rows] == list(range(1, len(lines)))


def test_a_piped_input_is_sent_on_in_chunks_of_what_has_come(dask_client: Any, demo_server: DemoServer) -> None:
    """A chunk does not wait to fill (512 URLs) while the input waits for its next line."""
    more = threading.Event()

    def piped() -> Iterator[str]:
        yield f"{demo_server.base_url}/get?line=0"
        more.wait()
        yield f"{demo_server.base_url}/get?line=1"

    config = FetchConfig(workers=2)
    opener = threading.Timer(15, more.set)
    opener.start()
    try:
        rows = cluster.run_on_cluster(ReadAhead(iter_targets(piped(), config)), config, dask_client)
        first = next(rows)
        assert not more.is_set(), "the first row waited for the next line"
        assert (first.index, first.status) == (0, 200)
        more.set()
        assert [(row.index, row.status) for row in rows] == [(1, 200)]
    finally:
        opener.cancel()


def test_fetch_all_takes_a_client(dask_client: Any, demo_server: DemoServer) -> None:
    rows = list(fetch_all([f"{demo_server.base_url}/status/200?i={i}" for i in range(5)], client=dask_client))
    assert sorted(row.index for row in rows) == list(range(5))
    assert all(row.status == 200 and row.worker for row in rows)


def test_idle_is_called_on_the_client_while_a_slow_chunk_is_out(dask_client: Any, demo_server: DemoServer) -> None:
    config = FetchConfig(workers=2)
    urls = [f"{demo_server.base_url}/get", f"{demo_server.base_url}/delay/1"]
    watch = IdleWatch()
    watch.consume(cluster.run_on_cluster(iter_targets(urls, config), config, dask_client, chunk_size=1, idle=watch))
    assert len(watch.rows) == 2
    assert (1, threading.current_thread()) in watch.calls


def test_an_input_failing_part_way_keeps_the_rows_of_the_chunks_sent(dask_client: Any, demo_server: DemoServer) -> None:
    """The chunks out were forgotten when the input raised (a later file with other columns)."""
    config = FetchConfig(workers=2)

    def failing() -> Iterator[Target]:
        yield from iter_targets([f"{demo_server.base_url}/get?i={i}" for i in range(30)], config)
        raise InputError("stdin has other columns than 'a.csv'")

    rows: list[Result] = []
    with pytest.raises(InputError, match="other columns"):
        for row in cluster.run_on_cluster(failing(), config, dask_client, chunk_size=10):
            rows.append(row)
    assert sorted(row.index for row in rows) == list(range(30))
    assert all(row.status == 200 for row in rows)


def test_per_worker_figures_add_up(dask_client: Any, demo_server: DemoServer) -> None:
    from rich.console import Console

    from pooledfetch.engine import RunProgress
    from pooledfetch.stats import RunStats
    from pooledfetch.summary import render_summary, summary_data

    config = FetchConfig(workers=2)
    progress = RunProgress()
    lines = [f"{demo_server.base_url}/status/200?i={i}" for i in range(80)]
    rows = list(
        cluster.run_on_cluster(iter_targets(lines, config), config, dask_client, progress=progress, chunk_size=10)
    )
    accounting = progress.accounting
    assert set(accounting.by_worker) == {row.worker for row in rows}
    assert sum(figures.urls for figures in accounting.by_worker.values()) == 80
    assert accounting.requests_sent == sum(figures.requests_sent for figures in accounting.by_worker.values()) == 80
    # One pooled session per worker process, kept across chunks: a few connections, many reuses.
    assert accounting.connections_opened <= 2 * config.workers + 2
    with RunStats() as stats:
        for row in rows:
            stats.write(row)
    workers = summary_data(stats, accounting, config)["workers"]
    assert {name: figures["urls"] for name, figures in workers.items()} == Counter(row.worker for row in rows)
    assert sum(figures["connections_reused"] for figures in workers.values()) >= 80 - accounting.connections_opened
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(render_summary(stats, accounting, config))
    text = console.export_text()
    assert "Dask workers" in text and all(name in text for name in workers)


def _kept_transports() -> int:
    from pooledfetch import cluster

    return len(cluster._ENGINES)


def test_each_worker_process_keeps_its_transport_until_the_worker_stops(
    dask_client: Any, demo_server: DemoServer
) -> None:
    config = FetchConfig(workers=2)
    lines = [f"{demo_server.base_url}/status/200?i={i}" for i in range(40)]
    assert len(list(cluster.run_on_cluster(iter_targets(lines, config), config, dask_client, chunk_size=5))) == 40
    assert set(dask_client.run(_kept_transports).values()) == {1}
    # A worker stopping tears its plugins down; re-registering the plugin does the same.
    dask_client.register_plugin(cluster.TransportPlugin())
    assert set(dask_client.run(_kept_transports).values()) == {0}


def test_per_host_concurrency_holds_across_processes(
    dask_client: Any, server: RecordingServer, other_server: RecordingServer
) -> None:
    urls = [f"{host.base_url}/delay/0.05?i={i}" for i in range(30) for host in (server, other_server)]
    config = FetchConfig(per_host_concurrency=2, workers=8)
    rows = list(cluster.run_on_cluster(iter_targets(urls, config), config, dask_client, chunk_size=5))
    assert len(rows) == 60 and all(row.ok for row in rows)
    assert server.record.peak <= 2 and other_server.record.peak <= 2
    assert len({row.worker for row in rows}) == 2


def test_rate_is_shared_out_and_chunks_sized_to_it(dask_client: Any, server: RecordingServer) -> None:
    urls = [f"{server.base_url}/n{i}" for i in range(60)]
    config = FetchConfig(rate=20, workers=8)
    began = time.monotonic()
    rows = list(fetch_all(urls, config, client=dask_client))
    elapsed = time.monotonic() - began
    assert all(row.ok for row in rows)
    assert 2.5 <= elapsed <= 8.0
    assert most_in_one_second(server.starts()) <= 23
    assert len({row.worker for row in rows}) == 2


def test_a_host_paused_by_retry_after_stays_paused_for_its_next_chunk(
    dask_client: Any, server: RecordingServer
) -> None:
    urls = [f"{server.base_url}/retry-after/2"] + [f"{server.base_url}/n{i}" for i in range(6)]
    config = FetchConfig(pause_hosts=True, per_host_concurrency=1, retries=0, workers=2)
    rows = list(cluster.run_on_cluster(iter_targets(urls, config), config, dask_client, chunk_size=1))
    assert len(rows) == 7
    starts = server.starts()
    assert starts[1] - starts[0] >= 1.8  # the chunks after the 429 ran in either process, after its pause


@pytest.mark.skipif(importlib.util.find_spec("bokeh") is not None, reason="bokeh is installed")
def test_no_dashboard_link_without_bokeh(dask_client: Any) -> None:
    assert cluster.dashboard_link(dask_client) is None


# --- chunking, without a cluster ---------------------------------------------------------------------------------


def _targets(hosts: str) -> list[Target]:
    return [
        Target(index, f"http://{host}.test/{index}", f"http://{host}.test/{index}") for index, host in enumerate(hosts)
    ]


def test_host_chunks_keep_one_chunk_per_host_in_flight() -> None:
    chunks = cluster._HostChunks(Feed(_targets("aaaaabbbc")), size=2)
    taken = [chunks.next_chunk() for _ in range(4)]
    assert [(host, [t.index for t in targets]) for host, targets in taken[:3]] == [  # type: ignore[misc]
        ("a.test", [0, 1]),
        ("b.test", [5, 6]),
        ("c.test", [8]),
    ]
    assert taken[3] is None  # every host with targets left has a chunk out
    chunks.finished("a.test")
    assert [t.index for t in chunks.next_chunk()[1]] == [2, 3]  # type: ignore[index]
    assert sorted(t.index for t in chunks.drain()) == [4, 7]
    assert chunks.exhausted


@pytest.mark.timeout(20)
@pytest.mark.parametrize("by_host", [False, True], ids=["input-chunks", "host-chunks"])
def test_chunks_of_a_waiting_input_are_cut_from_what_has_come(by_host: bool) -> None:
    more = threading.Event()

    def piped() -> Iterator[Target]:
        yield from _targets("ab")
        more.wait()
        yield from _targets("abab")[2:]

    feed = ReadAhead(piped())
    chunks = cluster._HostChunks(feed, size=512) if by_host else cluster._InputChunks(feed, 512, 2, 25)
    wait_until(lambda: len(feed._buffer) == 2, what="the first two lines read")
    taken = []
    while (chunk := chunks.next_chunk()) is not None:
        taken.append([target.index for target in chunk[1]])
        chunks.finished(chunk[0])
    assert taken == ([[0], [1]] if by_host else [[0, 1]])
    assert not chunks.exhausted
    more.set()
    wait_until(lambda: len(feed._buffer) == 3, what="the rest of the input and its end")
    rest = []
    while not chunks.exhausted:
        if (chunk := chunks.next_chunk()) is not None:
            rest.extend(target.index for target in chunk[1])
            chunks.finished(chunk[0])
    assert sorted(rest) == [2, 3]


def test_input_chunks_shrink_towards_the_end_and_read_a_chunk_per_process_ahead() -> None:
    """So that the processes run out of work together, not one finishing a whole chunk alone."""
    read = 0

    def counted(targets: list[Target]) -> Iterator[Target]:
        nonlocal read
        for target in targets:
            read += 1
            yield target

    targets = _targets("a" * 1000)
    chunks = cluster._InputChunks(Feed(counted(targets)), size=100, processes=2, smallest=10)
    taken = []
    while (chunk := chunks.next_chunk()) is not None:
        taken.append(chunk[1])
        assert read <= 100 * len(taken) + 200
    assert [t.index for chunk in taken for t in chunk] == list(range(1000))  # in order, each once
    sizes = [len(chunk) for chunk in taken]
    assert sizes[:7] == [100] * 7
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes[-6:]) <= 20 and sizes[-2] == 10


def test_chunk_size_is_about_a_second_of_work_under_a_rate() -> None:
    assert cluster.chunk_size_for(FetchConfig()) == cluster.DEFAULT_CHUNK
    assert cluster.chunk_size_for(FetchConfig(rate=10)) == 10
    assert cluster.chunk_size_for(FetchConfig(per_host_rate=0.2)) == 1
    assert cluster.chunk_size_for(FetchConfig(workers=500)) == 1000


def test_limiter_holds_carry_a_pause_and_a_rate_slot_to_another_limiter() -> None:
    first = Limiter(FetchConfig(per_host_rate=1.0, pause_hosts=True, rate=1.0))
    first.release(first.acquire("http://a.test/", None))
    first.observe("b.test", 429, "30")
    holds = first.holds()
    assert set(holds) == {"a.test", "b.test"}
    assert holds["b.test"] - time.monotonic() > 29
    second = Limiter(FetchConfig(per_host_rate=1.0, rate=1.0))
    for host, until in holds.items():
        second.hold(host, until)
    second.hold_overall(first.overall_next() or 0.0)
    assert second.holds().keys() == {"a.test", "b.test"}
    assert (second.overall_next() or 0.0) >= (first.overall_next() or 0.0)


# --- the command line --------------------------------------------------------------------------------------------


def test_processes_on_the_command_line_feed_every_sink(tmp_path: Path, demo_server: DemoServer) -> None:
    """Exports, --summary-json and --resume in one run of `--processes 2`: the rows already in the
    resume file are not fetched again, the others are appended, each once."""
    lines = _lines(demo_server, 150)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    resume = tmp_path / "resume.jsonl"
    single = subprocess.run(
        [cli_command(), str(urls), "-q", "-o", str(resume)], env=offline_env(tmp_path), capture_output=True, timeout=60
    )
    assert single.returncode == ExitCode.SOME_FAILED  # the two invalid lines
    done = resume.read_text(encoding="utf-8").splitlines()
    resume.write_text("".join(line + "\n" for line in done[:40]), encoding="utf-8")
    summary = tmp_path / "summary.json"
    args = ["--processes", "2", "--chunk-size", "20", "-w", "4", "-q", "--resume", str(resume)]
    outcome = subprocess.run(
        [cli_command(), str(urls), *args, "--summary-json", str(summary), "-o", str(tmp_path / "out.jsonl")],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome.returncode == ExitCode.SOME_FAILED, outcome.stderr
    assert "Traceback" not in outcome.stderr
    rows = [json.loads(line) for line in resume.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(len(lines)))
    new = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(new) == len(lines) - 40
    assert len({row["worker"] for row in new if row["worker"]}) == 2
    workers = json.loads(summary.read_text(encoding="utf-8"))["workers"]
    assert sum(figures["urls"] for figures in workers.values()) == len(lines) - 40 - 2  # not the invalid lines


def test_a_cluster_run_says_nothing_when_port_8787_is_taken(tmp_path: Path, demo_server: DemoServer) -> None:
    """Another run (or anything) on Dask's default HTTP port: the scheduler must not warn on stderr."""
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{demo_server.base_url}/status/200\n", encoding="utf-8")
    with socket.socket() as taken:
        try:
            taken.bind((LOOPBACK, 8787))
            taken.listen()
        except OSError:
            pass  # taken already
        outcome = subprocess.run(
            [cli_command(), str(urls), "--processes", "2", "-q", "-o", str(tmp_path / "out.jsonl")],
            env=offline_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert outcome.returncode == ExitCode.OK, outcome.stderr
    assert outcome.stderr == ""


def test_no_dask_is_imported_without_a_cluster_option(tmp_path: Path, demo_server: DemoServer) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from pooledfetch.cli import cli\n"
        f"outcome = CliRunner().invoke(cli, ['-q', '-'], input='{demo_server.base_url}/status/200\\n')\n"
        "assert outcome.exit_code == 0, outcome.output\n"
        "print(sorted(name for name in ('dask', 'distributed', 'pooledfetch.cluster') if name in sys.modules))\n"
    )
    outcome = subprocess.run([sys.executable, "-c", code], env=offline_env(tmp_path), capture_output=True, text=True)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.strip() == "[]"


@pytest.mark.parametrize("demo", [[], ["--demo"]])
def test_a_cluster_without_dask_installed_is_one_line_exit_2(tmp_path: Path, demo: list[str]) -> None:
    """With --demo the demo server's line came first: Dask was looked for once it had started."""
    # A None entry in sys.modules makes `import distributed` fail as if it were not installed.
    code = "import sys\nsys.modules['distributed'] = None\nfrom pooledfetch.cli import main\nmain()\n"
    outcome = subprocess.run(
        [sys.executable, "-c", code, "--processes", "2", *(demo or ["-"])],
        input="http://127.0.0.1:9/\n",
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert outcome.returncode == ExitCode.USAGE
    assert outcome.stderr.strip().splitlines() == [
        "pooledfetch: error: --processes and --dask-scheduler need Dask: pip install 'pooledfetch[dask]'"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "'0' is not a number of processes"),
        (["--processes", "many"], "'many' is not a number of processes"),
        (["--processes", "2", "--dask-scheduler", "tcp://127.0.0.1:9"], "not both"),
        (["--chunk-size", "10"], "--chunk-size needs --processes or --dask-scheduler"),
    ],
)
def test_bad_cluster_options_are_usage_errors(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from pooledfetch.cli import cli

    outcome = CliRunner().invoke(cli, [*args, "-"], input="http://127.0.0.1:9/\n")
    assert outcome.exit_code == ExitCode.USAGE
    assert message in outcome.output


def test_processes_auto_is_one_per_core() -> None:
    import click

    from pooledfetch.cli import cli
    from pooledfetch.options import processes

    context = click.Context(cli)
    assert processes(context, cli.params[0], "auto") == (os.cpu_count() or 1)
    assert processes(context, cli.params[0], " 3 ") == 3


@pytest.mark.parametrize("listening", [False, True], ids=["nothing listening", "a listener that never answers"])
def test_a_scheduler_that_cannot_be_reached_is_one_line_within_the_connect_timeout(
    tmp_path: Path, closed_port: int, listening: bool
) -> None:
    """A listener that accepts and says nothing (an HTTP server, a stuck process) held the run
    forever, deaf to two Ctrl-Cs: distributed's timeout bounds the TCP connect, not its handshake."""
    with socket.socket() as mute:
        port = closed_port
        if listening:
            mute.bind((LOOPBACK, 0))
            mute.listen()
            port = mute.getsockname()[1]
        began = time.monotonic()
        outcome = subprocess.run(
            [cli_command(), "-", "--dask-scheduler", f"tcp://{LOOPBACK}:{port}", "--connect-timeout", "2"],
            input="http://127.0.0.1:9/\n",
            env=offline_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert outcome.returncode == ExitCode.SOME_FAILED
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pooledfetch: error: cannot reach the Dask scheduler at tcp://")
    assert time.monotonic() - began < 2 + 15  # the timeout (and the handshake's), plus interpreter and Dask import


# --- workers and schedulers that go away ---------------------------------------------------------------------


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers after `?s=` seconds; counts requests per path and method, and knows which client
    ports have a request in progress."""

    protocol_version = "HTTP/1.1"
    server: _SlowServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        port = self.client_address[1]
        with self.server.lock:
            self.server.seen[(self.command, self.path)] += 1
            self.server.busy_ports.add(port)
        try:
            delay = float(self.path.partition("s=")[2].partition("&")[0] or 0)
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")
        except OSError:
            pass  # the client was killed
        finally:
            with self.server.lock:
                self.server.busy_ports.discard(port)


class _SlowServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _SlowHandler)
        self.lock = threading.Lock()
        self.seen: Counter[tuple[str, str]] = Counter()
        self.busy_ports: set[int] = set()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"

    def requests(self) -> int:
        with self.lock:
            return sum(self.seen.values())

    def kill_a_client_mid_request(self) -> int:
        """SIGKILL the process holding a connection with a request in progress; its pid."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a request may end between two looks: look again
            with self.lock:
                ports = set(self.busy_ports)
            for connection in psutil.net_connections("tcp"):
                laddr, pid = connection.laddr, connection.pid
                if laddr and laddr.port in ports and pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    return pid
            time.sleep(0.02)
        raise AssertionError("no worker process found with a request in progress")


@pytest.fixture
def slow_server() -> Iterator[_SlowServer]:
    yield from serving(_SlowServer())


def _run_killing_a_worker(client: Any, server: _SlowServer, config: FetchConfig, count: int) -> list[Result]:
    """Fetch `count` slow URLs in chunks of 6 and SIGKILL a worker process part way through."""
    urls = [f"{server.base_url}/u{i}?s=0.15" for i in range(count)]
    killed: list[int] = []

    def kill() -> None:
        wait_until(lambda: server.requests() >= 12, 30, "12 requests")
        killed.append(server.kill_a_client_mid_request())

    killer = threading.Thread(target=kill)
    killer.start()
    rows = list(cluster.run_on_cluster(iter_targets(urls, config), config, client, chunk_size=6))
    killer.join(30)
    assert killed and not psutil.pid_exists(killed[0])
    return rows


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the signal mask from /proc")
def test_a_worker_restarted_after_a_death_still_ignores_ctrl_c(dask_client: Any) -> None:
    """Ctrl-C on a terminal signals the whole process group, so a worker the nanny starts again
    mid-run must ignore SIGINT as the first ones do (and wind down when the client says)."""
    before = set(dask_client.run(os.getpid).values())
    os.kill(next(iter(before)), signal.SIGKILL)

    def workers_again() -> set[int]:
        try:
            pids = set(dask_client.run(os.getpid).values())
        except Exception:  # noqa: BLE001 - a worker is gone or not back yet
            return set()
        return pids if len(pids) == 2 and pids != before else set()

    wait_until(lambda: bool(workers_again()), START_SECONDS, "the worker started again")
    assert all(_ignores_sigint(pid) for pid in workers_again())


@pytest.mark.skipif(localworkers.start_method() != "forkserver", reason="workers forked from a forkserver")
def test_this_process_keeps_its_ctrl_c_while_its_local_cluster_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers ignore SIGINT as their forkserver does. Ignoring it here as well while they
    started dropped a Ctrl-C that came then: the run went on to the end, exit 0."""
    seen: list[Any] = []
    real = distributed.LocalCluster

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(signal.getsignal(signal.SIGINT))
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", recording)
    with cluster.connect(1, None, START_SECONDS) as client:
        client.wait_for_workers(1, timeout=START_SECONDS)
        assert all(_ignores_sigint(pid) for pid in client.run(os.getpid).values())
    assert len(seen) == 1 and seen[0] is not signal.SIG_IGN


def _ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    ignored = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored, 16) & (1 << (signal.SIGINT - 1)))


def test_a_worker_killed_mid_run_loses_no_row_and_repeats_none(dask_client: Any, slow_server: _SlowServer) -> None:
    rows = _run_killing_a_worker(dask_client, slow_server, FetchConfig(workers=3, retries=0), 48)
    assert sorted(row.index for row in rows) == list(range(48))
    assert all(row.ok for row in rows)  # the lost worker's chunks ran again elsewhere


def test_a_post_is_sent_at_most_once_when_its_worker_is_killed(dask_client: Any, slow_server: _SlowServer) -> None:
    rows = _run_killing_a_worker(dask_client, slow_server, FetchConfig(workers=3, retries=0, method="POST"), 48)
    assert sorted(row.index for row in rows) == list(range(48))
    assert max(slow_server.seen.values()) == 1
    lost = [row for row in rows if row.error == rc.WORKER_LOST]
    assert lost and all("never sent twice" in row.error_detail for row in lost)
    assert all(row.ok for row in rows if row.error != rc.WORKER_LOST)
    assert dask_client.run_on_scheduler(_markers_held) == 0  # every marker released at the end


def _markers_held(dask_scheduler: Any) -> int:
    return sum(1 for holders in dask_scheduler.extensions["multi_locks"].locks.values() if holders)


def test_ctrl_c_on_a_local_cluster_keeps_finished_rows_and_leaves_no_process(
    tmp_path: Path, slow_server: _SlowServer
) -> None:
    """Ctrl-C as a terminal sends it, to the whole process group: the worker processes must not
    die of it but wind their chunks down when told, in the grace period, with no row lost."""
    urls, out, stderr = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "stderr"
    urls.write_text("".join(f"{slow_server.base_url}/u{i}?s=0.3\n" for i in range(200)), encoding="utf-8")
    args = [cli_command(), str(urls), "--processes", "2", "-w", "2", "--chunk-size", "4", "-q", "-o", str(out)]
    with stderr.open("wb") as errors_to:
        process = subprocess.Popen(args, env=offline_env(tmp_path), stderr=errors_to, start_new_session=True)
    try:
        wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 8, START_SECONDS, "the first rows")
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == ExitCode.INTERRUPTED, stderr.read_text()
        assert time.monotonic() - sent < DEFAULT_GRACE_SECONDS + 6  # chunks came back: no waiting for them
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in stderr.read_text()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(200))
    errors = Counter(row["error"] for row in rows)
    assert errors[""] >= 8 and errors[rc.CANCELLED] >= 100 and set(errors) == {"", rc.CANCELLED}
    assert slow_server.requests() < 100  # nothing was sent after the wind-down
    psutil.wait_procs(children, timeout=10)
    assert not [child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def test_a_third_ctrl_c_on_a_local_cluster_quits_at_once_and_leaves_no_process(
    tmp_path: Path, slow_server: _SlowServer
) -> None:
    """It landed in the LocalCluster's close, and Dask's exit handler then closed it again,
    waiting on its busy workers: ~10 s more than two Ctrl-Cs took, not less."""
    urls, out, stderr = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "stderr"
    urls.write_text("".join(f"{slow_server.base_url}/u{i}?s=20\n" for i in range(40)), encoding="utf-8")
    args = [cli_command(), str(urls), "--processes", "2", "-w", "2", "--chunk-size", "4", "-q", "-o", str(out)]
    with stderr.open("wb") as errors_to:
        process = subprocess.Popen(args, env=offline_env(tmp_path), stderr=errors_to, start_new_session=True)
    try:
        wait_until(lambda: slow_server.requests() >= 4, START_SECONDS, "requests on the wire")
        children = psutil.Process(process.pid).children(recursive=True)
        for _ in range(3):
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.3)
        third = time.monotonic()
        assert process.wait(60) == ExitCode.INTERRUPTED, stderr.read_text()
        assert time.monotonic() - third < 5.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in stderr.read_text()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(40))
    psutil.wait_procs(children, timeout=10)
    assert not [child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


class _DaskProcesses:
    """`dask scheduler` and `dask worker` subprocesses on 127.0.0.1, stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = (tmp_path / "dask.log").open("wb")

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        dask = str(Path(sys.executable).parent / "dask")
        process = subprocess.Popen([dask, *args], stdout=self.log, stderr=self.log, env=offline_env(self.tmp_path))
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()


def test_a_real_cluster_then_its_scheduler_lost_mid_run(tmp_path: Path, slow_server: _SlowServer) -> None:
    """`dask scheduler`, reached through POOLEDFETCH_DASK_SCHEDULER, then two `dask worker
    --nthreads 1` once the run has said it waits for them (it sat silent before); then the
    scheduler killed during a second run: every line still gets its row, exit 1."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    address = f"tcp://{LOOPBACK}:{port}"
    dask = _DaskProcesses(tmp_path)
    try:
        scheduler = dask.start("scheduler", "--host", LOOPBACK, "--port", str(port), "--no-dashboard")
        with distributed.Client(address, timeout=START_SECONDS, set_as_default=False):
            pass  # the scheduler is up
        env = offline_env(tmp_path, POOLEDFETCH_DASK_SCHEDULER=address)
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{slow_server.base_url}/u{i}?s=0.05\n" for i in range(40)), encoding="utf-8")
        out = tmp_path / "out.jsonl"
        stderr = tmp_path / "first.stderr"
        args = [cli_command(), str(urls), "--no-live", "--chunk-size", "5", "-w", "2", "-o", str(out)]
        with stderr.open("wb") as errors:
            first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            notice = f"the Dask scheduler at {address} has no workers yet"
            wait_until(lambda: notice in stderr.read_text(), START_SECONDS, "the notice that no worker is there")
            for name in ("first", "second"):
                dask.start("worker", address, "--nthreads", "1", "--name", name, "--no-dashboard", "--no-nanny")
            assert first.wait(120) == ExitCode.OK, stderr.read_text()
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(row["index"] for row in rows) == list(range(40))
        # Whichever joined first may have taken every chunk before the other was there.
        assert {row["worker"] for row in rows} in ({"first"}, {"second"}, {"first", "second"})

        lines = [f"{slow_server.base_url}/v{i}?s=0.3" for i in range(60)]
        summary = tmp_path / "summary.json"
        args = ["--dask-scheduler", address, "--chunk-size", "3", "-w", "2", "--connect-timeout", "3", "-o", str(out)]
        run = Run(tmp_path, lines, *args, "--summary-json", str(summary), name="lost")
        wait_until(lambda: slow_server.requests() >= 40 + 4, START_SECONDS, "the second run's first requests")
        scheduler.kill()
        assert run.wait(90) == ExitCode.SOME_FAILED, run.stderr
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(row["index"] for row in rows) == list(range(60))
        assert any(row["error"] == rc.WORKER_LOST for row in rows)
        assert "lost the Dask scheduler" in run.stderr and "Traceback" not in run.stderr
        # The rows are all in: their summary was skipped for the error's line, and no file written.
        assert json.loads(summary.read_text(encoding="utf-8"))["urls"] == 60
        assert "60 URLs:" in run.stderr
    finally:
        dask.stop()
