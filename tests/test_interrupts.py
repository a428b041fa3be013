"""Ending a run early, as a user or a machine does it: Ctrl-C once and twice, SIGTERM, SIGKILL then
--resume, and exports that cannot be written. Real subprocesses of the installed command against
tests/hostile.py; every export must still be a valid file with one row per URL line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from helpers import wait_until
from hostile import HostileServer, cli_command, offline_env

from pooledfetch import results as rc
from pooledfetch.engine import DEFAULT_GRACE_SECONDS
from pooledfetch.errors import ExitCode
from pooledfetch.results import FIELDS
from pooledfetch.resume import ResumeState

StartServer = Callable[..., HostileServer]


@pytest.fixture
def server(hostile_server: StartServer) -> HostileServer:
    return hostile_server()


class Run:
    """The CLI running in the background, its output going to files (a full pipe cannot block it)."""

    def __init__(self, tmp_path: Path, lines: Sequence[str], *args: str, name: str = "run") -> None:
        self.tmp_path = tmp_path
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.stderr_path = tmp_path / f"{name}.stderr"
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [cli_command(), str(urls), *args], env=offline_env(tmp_path), stdout=stdout, stderr=stderr
            )

    def signal(self, signum: int) -> float:
        self.process.send_signal(signum)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")


def read_exports(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    """Every export of the run, parsed: each must be a complete, valid file."""
    parsed: dict[str, list[dict[str, object]]] = {}
    parsed["json"] = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    parsed["jsonl"] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    with (tmp_path / "out.csv").open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames == list(FIELDS)
        parsed["csv"] = list(reader)
    return parsed


def exports(tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "out.json"), "-o", str(tmp_path / "out.jsonl"), "-o", str(tmp_path / "out.csv")]


def by_index(rows: list[dict[str, object]]) -> dict[int, dict[str, object]]:
    indexes = [int(row["index"]) for row in rows]  # type: ignore[call-overload]
    assert len(indexes) == len(set(indexes)), "an index appears twice"
    return dict(zip(indexes, rows, strict=True))


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_one_signal_winds_down_with_one_row_per_line(server: HostileServer, tmp_path: Path, signum: int) -> None:
    """4 workers: line 0 answers after 1 s (finishes in the grace period), lines 1-3 never answer
    (interrupted after it), lines 4-7 wait in the executor and the rest in the file (cancelled)."""
    lines = [server.url("delay?s=1")] + [server.url(f"silent?i={i}") for i in range(1, 20)]
    run = Run(tmp_path, lines, "-w", "4", "--retries", "0", "--read-timeout", "30", *exports(tmp_path))
    wait_until(lambda: len(server.requests) >= 4, what="4 requests in flight")
    sent = run.signal(signum)
    assert run.wait(DEFAULT_GRACE_SECONDS + 5) == ExitCode.INTERRUPTED, run.stderr
    assert time.monotonic() - sent < DEFAULT_GRACE_SECONDS + 2.0
    assert "Traceback" not in run.stderr
    assert "interrupted" in run.stderr
    assert "20 URLs:" in run.stderr  # the summary
    assert len(run.stdout.splitlines()) == 20  # the plain lines
    for name, rows in read_exports(tmp_path).items():
        rows_by_index = by_index(rows)
        assert sorted(rows_by_index) == list(range(20)), name
        errors = [rows_by_index[i]["error"] for i in range(20)]
        assert errors[0] == "", name
        assert errors[1:4] == [rc.INTERRUPTED] * 3, name
        assert errors[4:] == [rc.CANCELLED] * 16, name
    assert len(server.requests) == 4  # nothing was sent after the signal


def test_a_second_ctrl_c_stops_waiting_and_still_gives_every_line_a_row(server: HostileServer, tmp_path: Path) -> None:
    """It used to quit with the rows written so far: 4 of 20 lines had one."""
    lines = [server.url(f"silent?i={i}") for i in range(20)]
    run = Run(tmp_path, lines, "-w", "4", "--retries", "0", "--read-timeout", "30", *exports(tmp_path))
    wait_until(lambda: len(server.requests) >= 4, what="4 requests in flight")
    first = run.signal(signal.SIGINT)
    time.sleep(0.3)
    run.signal(signal.SIGINT)
    assert run.wait(DEFAULT_GRACE_SECONDS + 5) == ExitCode.INTERRUPTED, run.stderr
    assert time.monotonic() - first < DEFAULT_GRACE_SECONDS - 1.0, "the second Ctrl-C did not cut the grace short"
    assert "Traceback" not in run.stderr
    assert "20 URLs:" in run.stderr
    for name, rows in read_exports(tmp_path).items():
        errors = [row["error"] for _, row in sorted(by_index(rows).items())]
        assert errors == [rc.INTERRUPTED] * 4 + [rc.CANCELLED] * 16, name


def test_a_third_ctrl_c_quits_at_once_with_valid_exports(server: HostileServer, tmp_path: Path) -> None:
    """After the second, the rest of a long input is being given its rows: the third quits now."""
    lines = [server.url("silent")] + [f"http://127.0.0.1:9/never-sent?i={i}" for i in range(400_000)]
    run = Run(tmp_path, lines, "-q", "-w", "1", "--retries", "0", "--read-timeout", "30", *exports(tmp_path))
    wait_until(lambda: len(server.requests) == 1, what="the request in flight")
    run.signal(signal.SIGINT)
    time.sleep(0.3)
    run.signal(signal.SIGINT)
    time.sleep(0.3)
    third = run.signal(signal.SIGINT)
    assert run.wait(DEFAULT_GRACE_SECONDS + 30) == ExitCode.INTERRUPTED, run.stderr
    assert time.monotonic() - third < 5.0
    assert "Traceback" not in run.stderr
    for name, rows in read_exports(tmp_path).items():
        assert set(by_index(rows)) <= set(range(len(lines))), name
        assert {row["error"] for row in rows} <= {rc.CANCELLED, rc.INTERRUPTED}, name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_resume_file_is_read_still_gives_every_line_a_row(
    server: HostileServer, tmp_path: Path, signum: int
) -> None:
    """Signals were handled only once the run had started: one while a big --resume file was
    rewritten gave click's "Aborted!" (exit 1, the temporary file left, no rows), a SIGTERM a
    killed process and a JSON export holding only "["."""
    lines = [server.url(f"ok?i={i}") for i in range(5)]
    resumed = tmp_path / "resumed.jsonl"
    unfinished = '{"index": %d, "url": "http://127.0.0.1:9/gone?%d", "error": "cancelled"}\n'
    resumed.write_text("".join(unfinished % (i, i) for i in range(300_000)), encoding="utf-8")
    out = tmp_path / "out.json"
    run = Run(tmp_path, lines, "-q", "--resume", str(resumed), "-o", str(out))
    wait_until(lambda: any(tmp_path.glob("*.resume")), what="the --resume file being rewritten", timeout=20)
    run.signal(signum)
    assert run.wait(30) == ExitCode.INTERRUPTED, run.stderr
    assert "Aborted" not in run.stderr and "Traceback" not in run.stderr
    assert not any(tmp_path.glob("*.resume"))
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(by_index(rows)) == list(range(5))
    assert {row["error"] for row in rows} == {rc.CANCELLED}
    assert len(resumed.read_text(encoding="utf-8").splitlines()) == 5
    assert server.requests == []


# --- SIGKILL, then --resume --------------------------------------------------------------------------------------


def test_resume_after_sigkill_ends_with_exactly_one_row_per_line(server: HostileServer, tmp_path: Path) -> None:
    """Lines 4 and 5 hang the first time they are asked for; the run is killed while they hang."""
    lines = [server.url(f"ok?i={i}") for i in range(4)]
    lines += [server.url(f"slow?key=r{i}&times=1&i={i}") for i in (4, 5)]
    lines += [server.url(f"ok?i={i}") for i in range(6, 12)]
    out = tmp_path / "out.jsonl"
    common = ["-w", "2", "--retries", "0", "--read-timeout", "30"]

    first = Run(tmp_path, lines, *common, "-q", "-o", str(out), name="first")
    wait_until(lambda: len(server.requests_to("slow")) == 2, what="the slow lines in flight")
    wait_until(lambda: out.exists() and out.read_text(encoding="utf-8").count("\n") >= 4, what="4 rows written")
    first.process.kill()
    first.wait(5)
    written = out.read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["index"] for line in written} == {0, 1, 2, 3}
    # As if the kill had landed in the middle of a write.
    with out.open("a", encoding="utf-8") as stream:
        stream.write('{"index": 6, "url": "http://127.0.0.1:1/cut sho')

    second = Run(tmp_path, lines, *common, "-q", "--resume", str(out), name="second")
    assert second.wait(20) == ExitCode.OK, second.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rows_by_index = by_index(rows)
    assert sorted(rows_by_index) == list(range(12))
    assert all((row["error"], row["status"]) == ("", 200) for row in rows)
    assert [rows_by_index[i]["url"] for i in range(12)] == lines
    # The finished lines were not fetched again.
    assert sorted(request.query["i"] for request in server.requests_to("ok")) == sorted(
        str(i) for i in [*range(4), *range(6, 12)]
    )

    asked = len(server.requests)
    third = Run(tmp_path, lines, *common, "-q", "--resume", str(out), name="third")
    assert third.wait(20) == ExitCode.OK, third.stderr
    assert len(server.requests) == asked, "a resumed run with every row finished fetched again"
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == rows


def test_resume_after_ctrl_c_refetches_cancelled_and_interrupted_lines(server: HostileServer, tmp_path: Path) -> None:
    """-w 2: lines 3 and 4 hang the first time (interrupted), 5 and 6 wait in the executor and 7 in the
    file (cancelled); the resumed run fetches exactly those five again."""
    lines = [server.url(f"ok?i={i}") for i in range(3)]
    lines += [server.url(f"slow?key=c{i}&times=1&i={i}") for i in (3, 4)]
    lines += [server.url(f"ok?i={i}") for i in range(5, 8)]
    out = tmp_path / "out.jsonl"
    common = ["-w", "2", "--retries", "0", "--read-timeout", "30", "-q"]
    first = Run(tmp_path, lines, *common, "-o", str(out), name="first")
    wait_until(lambda: len(server.requests_to("slow")) == 2, what="the slow lines in flight")
    first.signal(signal.SIGINT)
    assert first.wait(DEFAULT_GRACE_SECONDS + 5) == ExitCode.INTERRUPTED
    errors = sorted(json.loads(line)["error"] for line in out.read_text(encoding="utf-8").splitlines())
    assert errors == ["", "", "", rc.CANCELLED, rc.CANCELLED, rc.CANCELLED, rc.INTERRUPTED, rc.INTERRUPTED]

    second = Run(tmp_path, lines, *common, "--resume", str(out), name="second")
    assert second.wait(20) == ExitCode.OK, second.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(by_index(rows)) == list(range(8))
    assert all(row["error"] == "" and row["status"] == 200 for row in rows)
    asked = sorted(request.query["i"] for request in server.requests if request.route in ("ok", "slow"))
    assert asked == ["0", "1", "2", "3", "3", "4", "4", "5", "6", "7"]


# --- exports that cannot be written ----------------------------------------------------------------------------


def test_an_export_in_a_missing_directory_fails_before_any_request(server: HostileServer, tmp_path: Path) -> None:
    run = Run(tmp_path, [server.url("ok")], "-o", "/nonexistent-dir/x.csv")
    assert run.wait(10) == ExitCode.SOME_FAILED
    printed = run.stderr.splitlines()
    assert len(printed) == 1, f"expected one clear line on stderr, got {printed}"
    message = printed[0]
    assert message.startswith("pooledfetch: error:") and "/nonexistent-dir/x.csv" in message
    assert run.stdout == ""
    assert server.accepted == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_an_export_to_a_full_disk_is_one_clear_error(server: HostileServer, tmp_path: Path, fmt: str) -> None:
    """CSV and JSON write a header at once, so they fail before any request; JSONL fails at its first row."""
    run = Run(tmp_path, [server.url("ok")], "-q", "-o", "/dev/full", "--format", fmt)
    assert run.wait(10) == ExitCode.SOME_FAILED
    assert "Traceback" not in run.stderr
    (message,) = [line for line in run.stderr.splitlines() if "error" in line]
    assert message == "pooledfetch: error: cannot write export '/dev/full': No space left on device"
    if fmt != "jsonl":
        assert server.accepted == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_export_failing_mid_run_does_not_wait_for_requests_in_flight(server: HostileServer, tmp_path: Path) -> None:
    """The first row cannot be written while another URL hangs on the wire: the run ends now,
    not when that request's read timeout (8 s here) runs out."""
    args = ["-q", "-o", "/dev/full", "--format", "jsonl", "--retries", "0", "--read-timeout", "8"]
    run = Run(tmp_path, [server.url("ok"), server.url("silent")], *args)
    start = time.monotonic()
    code = run.wait(30)
    elapsed = time.monotonic() - start
    assert code == ExitCode.SOME_FAILED
    assert "cannot write export '/dev/full'" in run.stderr
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s: it waited for the hanging request"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("keeper", ["another export", "the plain lines"])
def test_a_failed_export_leaves_every_row_to_the_outputs_left(
    server: HostileServer, tmp_path: Path, keeper: str
) -> None:
    """A full disk under one export ended the whole run: the other export kept 18 rows of 3,000.
    The run now goes on for the outputs left, as tee does, and reports the failure at the end."""
    lines = [server.url(f"delay?s=0.01&i={i}") for i in range(200)]
    kept = ["-q", "-o", str(tmp_path / "out.jsonl")] if keeper == "another export" else []
    run = Run(tmp_path, lines, *kept, "-o", "/dev/full", "--format", "jsonl", "-w", "4")
    assert run.wait(60) == ExitCode.SOME_FAILED
    if keeper == "another export":
        indexes = sorted(by_index([json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]))
        assert indexes == list(range(len(lines)))
    else:
        assert sorted(line.split("\t")[-1] for line in run.stdout.splitlines()) == sorted(lines)
        assert "200 URLs: 200 ok" in run.stderr  # the summary, before the error
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert errors == ["pooledfetch: error: cannot write export '/dev/full': No space left on device"]
    assert len(server.requests_to("delay")) == len(lines)


def test_resume_keeps_the_finished_rows_written_after_unfinished_ones(server: HostileServer, tmp_path: Path) -> None:
    """Cancelled rows are written before the rows of requests still in flight: every finished row
    after the first unfinished one was fetched again, and its line had two rows."""
    lines = [server.url(f"ok?i={i}") for i in range(4)]
    out = tmp_path / "out.jsonl"
    previous = [
        {"index": 0, "url": lines[0], "error": rc.CANCELLED, "status": None},
        {"index": 1, "url": lines[1], "error": "", "status": 200},
        {"index": 2, "url": lines[2], "error": rc.INTERRUPTED, "status": None},
        {"index": 3, "url": lines[3], "error": "", "status": 200},
    ]
    out.write_text("".join(json.dumps(row) + "\n" for row in previous), encoding="utf-8")
    run = Run(tmp_path, lines, "-q", "--resume", str(out))
    assert run.wait(20) == ExitCode.OK, run.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(by_index(rows)) == [0, 1, 2, 3]
    assert sorted(request.query["i"] for request in server.requests_to("ok")) == ["0", "2"]


def test_resume_state_keeps_four_bytes_per_index() -> None:
    """The array grew by four entries per index (extend() over zero bytes): 16 bytes each."""
    state = ResumeState()
    for index in range(1000):
        assert state.record(index, f"http://a.test/{index}")
    assert len(state._fingerprints) == 1000
    assert state.record(5_000_000_000, "http://a.test/far") and state.is_finished(5_000_000_000, "http://a.test/far")
    assert len(state._fingerprints) == 1000  # an index far past the rows does not grow the array
    assert not state.record(-1, "http://a.test/") and not state.record(7, "http://a.test/7")


def test_resume_survives_rows_with_indexes_no_input_has(server: HostileServer, tmp_path: Path) -> None:
    """Index 99999999999 was a MemoryError, 3000000000 grew the process to 24 GB, -1 an IndexError."""
    lines = [server.url(f"ok?i={i}") for i in range(3)]
    out = tmp_path / "out.jsonl"
    previous = [
        {"index": index, "url": "http://127.0.0.1:9/x", "error": ""} for index in (-1, 3_000_000_000, 99999999999)
    ]
    previous.append({"index": 1, "url": lines[1], "error": "", "status": 200})
    out.write_text("".join(json.dumps(row) + "\n" for row in previous), encoding="utf-8")
    run = Run(tmp_path, lines, "-q", "--resume", str(out))
    assert run.wait(20) == ExitCode.OK, run.stderr
    assert sorted(request.query["i"] for request in server.requests_to("ok")) == ["0", "2"]


def test_resume_matches_rows_whether_or_not_credentials_are_shown(server: HostileServer, tmp_path: Path) -> None:
    """A finished row is found again when --show-credentials differs between the run and its resume."""
    lines = [f"http://alice:s3cret@127.0.0.1:{server.port}/ok?i=0", server.url("ok?i=1")]
    out = tmp_path / "out.jsonl"
    first = Run(tmp_path, lines, "-q", "--resume", str(out), name="first")
    assert first.wait(20) == ExitCode.OK, first.stderr
    asked = len(server.requests)
    second = Run(tmp_path, lines, "-q", "--resume", str(out), "--show-credentials", name="second")
    assert second.wait(20) == ExitCode.OK, second.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(by_index(rows)) == [0, 1]
    assert len(server.requests) == asked, "a finished line was fetched again"
