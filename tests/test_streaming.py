"""Input that arrives slowly, as from `tail -f log | pooledfetch -`: each URL's row goes out when
the URL is done, not when the next line comes; and pooledfetch.feed.ReadAhead, which reads such
an input on a thread of its own."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from hostile import HostileServer, cli_command, offline_env

from pooledfetch import results as rc
from pooledfetch.engine import DEFAULT_GRACE_SECONDS
from pooledfetch.errors import ExitCode, InputError
from pooledfetch.feed import REST_MAX_SECONDS, REST_QUIET_SECONDS, ReadAhead
from pooledfetch.sources import Target


class PipedRun:
    """The CLI reading its URLs from a pipe this test writes to, a line at a time."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.export = tmp_path / "out.jsonl"
        self.stderr_path = tmp_path / "stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [cli_command(), "-", "--no-live", "-o", str(self.export), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=offline_env(tmp_path),
            )

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def end_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def one_done_and_one_on_the_wire(self, server: HostileServer) -> None:
        """Send a URL and wait for its row, then one that never answers and wait for its request."""
        self.send(server.url("ok"))
        self.wait_for_rows(1)
        self.send(server.url("silent"))
        wait_until(lambda: len(server.requests) == 2, what="the second request on the wire")

    def wait_for_rows(self, count: int) -> None:
        wait_until(lambda: len(self.rows()) >= count, what=f"{count} rows with the input still open")

    def rows(self) -> list[dict[str, object]]:
        if not self.export.exists():
            return []
        lines = self.export.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[Callable[..., PipedRun]]:
    runs: list[PipedRun] = []

    def start(*args: str) -> PipedRun:
        runs.append(PipedRun(tmp_path, *args))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        if run.process.stdin is not None and not run.process.stdin.closed:
            run.process.stdin.close()


@pytest.mark.parametrize(
    "args",
    [(), ("--keep-order",), ("--per-host-concurrency", "2"), ("--processes", "2", "-w", "2")],
    ids=["input-order", "keep-order", "host-window", "cluster"],
)
def test_a_row_goes_out_before_the_next_line_arrives(
    hostile_server: Callable[..., HostileServer], piped: Callable[..., PipedRun], args: tuple[str, ...]
) -> None:
    server = hostile_server()
    run = piped(*args)
    for line in range(3):
        run.send(server.url(f"ok?line={line}"))
        run.wait_for_rows(line + 1)
    run.send("not a url")
    run.wait_for_rows(4)
    run.end_input()
    assert run.wait() == ExitCode.SOME_FAILED, run.stderr
    rows = run.rows()
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert [row["status"] for row in rows] == [200, 200, 200, None]
    assert rows[3]["error"] == rc.INVALID_URL
    assert "4 URLs:" in run.stderr


def test_ctrl_c_with_the_input_still_open_gives_every_line_a_row(
    hostile_server: Callable[..., HostileServer], piped: Callable[..., PipedRun]
) -> None:
    """Lines still to come when Ctrl-C lands are read to the end of the input and cancelled
    (in a terminal, Ctrl-C also ends the command writing to the pipe)."""
    server = hostile_server()
    # One worker: a target taken in the instant the signal lands waits unsent, and is cancelled.
    run = piped("--retries", "0", "-w", "1")
    run.one_done_and_one_on_the_wire(server)
    run.process.send_signal(signal.SIGINT)
    run.send(server.url("ok?after=1"))
    run.send(server.url("ok?after=2"))
    run.end_input()
    assert run.wait(DEFAULT_GRACE_SECONDS + 10) == ExitCode.INTERRUPTED, run.stderr
    assert "Traceback" not in run.stderr
    errors = {row["index"]: row["error"] for row in run.rows()}
    assert errors == {0: "", 1: rc.INTERRUPTED, 2: rc.CANCELLED, 3: rc.CANCELLED}
    assert len(server.requests) == 2  # nothing was sent after the signal


def test_sigterm_with_the_writer_still_going_ends_the_run(
    hostile_server: Callable[..., HostileServer], piped: Callable[..., PipedRun]
) -> None:
    """A SIGTERM to pooledfetch alone leaves the command writing to the pipe running: the run
    waited for that writer to end (with `tail -f`, forever). Lines that come within a quiet
    second are still read and cancelled; the pipe is left open here to the end."""
    server = hostile_server()
    run = piped("--retries", "0", "-w", "1")
    run.one_done_and_one_on_the_wire(server)
    sent = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    run.send(server.url("ok?after=1"))
    assert run.wait(DEFAULT_GRACE_SECONDS + REST_MAX_SECONDS + 5) == ExitCode.INTERRUPTED, run.stderr
    assert time.monotonic() - sent < DEFAULT_GRACE_SECONDS + REST_QUIET_SECONDS + 3
    errors = {row["index"]: row["error"] for row in run.rows()}
    assert errors == {0: "", 1: rc.INTERRUPTED, 2: rc.CANCELLED}
    assert len(server.requests) == 2


def test_ctrl_c_with_urls_typed_at_a_terminal_does_not_wait_for_ctrl_d(
    hostile_server: Callable[..., HostileServer], tmp_path: Path
) -> None:
    """A terminal's input ends only with Ctrl-D: the lines typed so far get their rows, and the
    run ends without waiting for more."""
    server = hostile_server()
    export = tmp_path / "out.jsonl"
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [cli_command(), "-", "--no-live", "--retries", "0", "-o", str(export)],
            stdin=follower,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=offline_env(tmp_path),
            start_new_session=True,
        )
        try:
            os.write(leader, f"{server.url('ok')}\n{server.url('silent')}\n".encode())
            wait_until(lambda: len(server.requests) == 2, what="both typed URLs on the wire")
            process.send_signal(signal.SIGINT)
            assert process.wait(DEFAULT_GRACE_SECONDS + 5) == ExitCode.INTERRUPTED
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        os.close(leader)
        os.close(follower)
    errors = [json.loads(line)["error"] for line in export.read_text(encoding="utf-8").splitlines()]
    assert sorted(errors) == ["", rc.INTERRUPTED]


# --- ReadAhead --------------------------------------------------------------------------------------------------


def targets(count: int) -> Iterator[Target]:
    for index in range(count):
        yield Target(index, f"u{index}", f"http://127.0.0.1/{index}")


def take_all(feed: ReadAhead) -> list[int]:
    """Take as the engine does: when none is ready, wait to be woken (a lost wake-up hangs)."""
    arrived = threading.Event()
    feed.on_arrival(arrived.set)
    taken = []
    while not feed.exhausted:
        arrived.clear()
        target = feed.take()
        if target is not None:
            taken.append(target.index)
        elif not feed.exhausted:
            arrived.wait()
    return taken


@pytest.mark.timeout(20)
@pytest.mark.parametrize("depth", [1, 2, 7, 1024])
def test_read_ahead_gives_every_target_once_in_order(depth: int) -> None:
    """Past `depth`, the reading thread waits for room: a lost wake-up either way would hang here."""
    feed = ReadAhead(targets(5000), depth=depth)
    assert take_all(feed) == list(range(5000))
    assert feed.take() is None


@pytest.mark.timeout(20)
def test_read_ahead_rest_waits_for_the_end_of_the_input() -> None:
    gate = threading.Event()

    def slow() -> Iterator[Target]:
        yield from targets(2)
        gate.wait()
        yield Target(2, "u2", "http://127.0.0.1/2")

    feed = ReadAhead(slow())
    threading.Timer(0.3, gate.set).start()
    assert [target.index for target in feed.rest()] == [0, 1, 2]
    assert feed.exhausted


@pytest.mark.timeout(20)
def test_read_ahead_wakes_the_taker_when_a_target_arrives() -> None:
    gate = threading.Event()
    woken = threading.Event()

    def slow() -> Iterator[Target]:
        gate.wait()
        yield Target(0, "u0", "http://127.0.0.1/0")
        gate.wait()  # still set: the input then ends

    feed = ReadAhead(slow())
    feed.on_arrival(woken.set)
    assert feed.take() is None
    assert not feed.exhausted
    gate.set()
    assert woken.wait(5)
    wait_until(lambda: (target := feed.take()) is not None and target.index == 0, what="the target")
    wait_until(lambda: feed.take() is None and feed.exhausted, what="the end of the input")


@pytest.mark.timeout(20)
def test_an_input_error_is_raised_by_the_take_that_reaches_it() -> None:
    def failing() -> Iterator[Target]:
        yield from targets(3)
        raise InputError("cannot read input file 'gone.txt': No such file or directory")

    feed = ReadAhead(failing())
    taken: list[int] = []
    with pytest.raises(InputError, match="gone.txt"):
        while True:
            target = feed.take()
            if target is not None:
                taken.append(target.index)
    assert taken == [0, 1, 2]
    assert feed.exhausted


@pytest.mark.timeout(20)
def test_a_read_ahead_not_waiting_for_the_end_gives_the_rest_read_so_far() -> None:
    gate = threading.Event()

    def typed() -> Iterator[Target]:
        yield from targets(2)
        gate.wait()  # nothing more is typed

    feed = ReadAhead(typed(), until_end=False)
    wait_until(lambda: len(feed._buffer) == 2, what="the typed lines read")
    assert [target.index for target in feed.rest()] == [0, 1]
    gate.set()


@pytest.mark.timeout(20)
def test_closing_a_read_ahead_ends_its_thread_waiting_for_room() -> None:
    feed = ReadAhead(targets(100), depth=4)
    wait_until(lambda: feed.take() is not None, what="a first target")
    feed.close()
    feed._thread.join(5)
    assert not feed._thread.is_alive()
