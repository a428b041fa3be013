"""Measure pooledfetch against its baselines on a local nginx, interleaved in one run.

    python bench/run.py                 # all scenarios, 3 rounds, 50 workers
    python bench/run.py --rounds 5 --scenario http-1host

Each client runs in its own process; the figures are its wall time (URLs/s), CPU time
(user+sys, from wait4), peak RSS, and the TCP connections nginx accepted during the run.
Ratios compare pooledfetch with each baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import pty
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx  # noqa: E402

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"


@dataclass(frozen=True)
class Measurement:
    client: str
    urls: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    connections: int

    @property
    def rate(self) -> float:
        return self.urls / self.wall_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.urls


LATENCY_SCENARIO = "https-20hosts-40ms"
# The same, with every client given a CA bundle the size of a real trust store (certifi's bundle
# plus the bench CA) instead of the bench's one-certificate CA: what a client does with its CA
# bundle on each new connection shows only then.
FULL_CA_SCENARIO = "https-20hosts-40ms-full-ca"
ONE_WAY_DELAY = 0.02


def scenarios(server: nginx.Nginx, count: int, delay_port: int) -> dict[str, list[str]]:
    latency_urls = [server.https_url("/small", host=1 + i % nginx.HOSTS, port=delay_port) for i in range(count // 5)]
    return {
        "http-1host": [server.http_url("/small")] * count,
        "https-1host": [server.https_url("/small")] * (count // 2),
        "http-20hosts": [server.http_url("/small", host=1 + i % nginx.HOSTS) for i in range(count)],
        "http-100KB": [server.http_url("/large")] * (count // 5),
        # Through a forwarder adding 20 ms each way: a 40 ms round trip to 20 TLS hosts.
        LATENCY_SCENARIO: latency_urls,
        FULL_CA_SCENARIO: latency_urls,
    }


def full_ca_bundle(server: nginx.Nginx, work: Path) -> str:
    import certifi  # requests' own dependency

    path = work / "full-ca.pem"
    path.write_text(Path(certifi.where()).read_text() + Path(server.ca_path).read_text())
    return str(path)


def start_delay_forwarder(server: nginx.Nginx) -> tuple[subprocess.Popen[bytes], int]:
    port = nginx._free_port()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "delay.py"), "--port", str(port),
         "--upstream-port", str(server.https_port), "--hosts", str(nginx.HOSTS), "--delay", str(ONE_WAY_DELAY)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    return process, port


def client_commands(url_file: Path, workers: int, ca: str, work: Path) -> dict[str, list[str]]:
    python = sys.executable
    commands = {
        "pooledfetch": [
            python, "-m", "pooledfetch", str(url_file), "-q", "-o", str(work / "out.jsonl"),
            "-w", str(workers), "--pool-maxsize", str(workers), "--ca-bundle", ca,
        ],
        "textbook": [python, str(CLIENTS_DIR / "textbook.py"), str(url_file), str(workers), ca],
        "urllib3": [python, str(CLIENTS_DIR / "raw_urllib3.py"), str(url_file), str(workers), ca],
    }  # fmt: skip
    if importlib.util.find_spec("aiohttp") is not None:
        commands["aiohttp"] = [python, str(CLIENTS_DIR / "aio.py"), str(url_file), str(workers), ca]
    if shutil.which("curl"):
        curl_config = work / "urls.curl"
        with open(url_file) as source, open(curl_config, "w") as target:
            for line in source:
                target.write(f'url = "{line.strip()}"\noutput = "/dev/null"\n')
        commands["curl"] = [
            "curl", "--silent", "--parallel", "--parallel-max", str(workers), "--cacert", ca,
            "--config", str(curl_config),
        ]  # fmt: skip
    return commands


def live_commands(url_file: Path, workers: int, ca: str) -> dict[str, list[str]]:
    """pooledfetch with its stderr on a terminal, with and without the live view (plain lines on)."""
    base = [
        sys.executable, "-m", "pooledfetch", str(url_file), "-w", str(workers), "--pool-maxsize", str(workers),
        "--ca-bundle", ca,
    ]  # fmt: skip
    return {"pooledfetch-live": base, "pooledfetch-nolive": [*base, "--no-live"]}


def measure(name: str, command: list[str], urls: int, server: nginx.Nginx) -> Measurement:
    before = server.accepted_connections()
    terminal = name.endswith("live")
    leader, follower = pty.openpty() if terminal else (-1, -1)
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=follower if terminal else subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120", "LINES": "40"},
    )
    if terminal:
        os.close(follower)
        # Keep reading the terminal so the client never blocks on a full pty buffer.
        threading.Thread(target=_discard, args=(leader,), daemon=True).start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        detail = process.stderr.read().decode()[-2000:] if process.stderr is not None else ""
        raise SystemExit(f"{name} failed ({process.returncode}): {detail}")
    return Measurement(
        client=name,
        urls=urls,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,
        connections=server.accepted_connections() - before,
    )


def _discard(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass  # the terminal closed with the client
    finally:
        os.close(fd)


def best(measurements: list[Measurement]) -> Measurement:
    return max(measurements, key=lambda m: m.rate)


def report(scenario: str, results: dict[str, list[Measurement]], workers: int) -> str:
    chosen = {name: best(runs) for name, runs in results.items()}
    ours = chosen["pooledfetch"]
    floor = ""
    if scenario in (LATENCY_SCENARIO, FULL_CA_SCENARIO):
        floor = f"; latency floor {workers / (2 * ONE_WAY_DELAY):,.0f} URLs/s before TLS handshakes"
    lines = [
        f"\n### {scenario} ({ours.urls} URLs, best of {len(results['pooledfetch'])}{floor})\n",
        "| client | URLs/s | CPU ms/req | connections | peak RSS MB | pooledfetch ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in chosen.items():
        if name == "pooledfetch-nolive":
            continue
        ratio = ours.rate / m.rate
        if name == "pooledfetch-live":
            # The live view is compared with the same run without it, not with the baselines.
            ratio = m.rate / chosen["pooledfetch-nolive"].rate
            name = "pooledfetch, live view on ÷ --no-live"
        lines.append(
            f"| {name} | {m.rate:,.0f} | {m.cpu_ms_per_request:.3f} | {m.connections} | {m.rss_mb:.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def memory_report(server: nginx.Nginx, work: Path, workers: int) -> str:
    """Peak RSS of pooledfetch over 100,000 and 1,000,000 URLs: memory must stay flat."""
    lines = ["\n### memory (pooledfetch, one run each)\n", "| URLs | URLs/s | peak RSS MB |", "|---|---|---|"]
    for count in (100_000, 1_000_000):
        url_file = work / f"memory-{count}.txt"
        with open(url_file, "w") as stream:
            for i in range(count):
                stream.write(server.http_url(f"/small?{i}", host=1 + i % nginx.HOSTS) + "\n")
        command = client_commands(url_file, workers, server.ca_path, work)["pooledfetch"]
        m = measure("pooledfetch", command, count, server)
        lines.append(f"| {count:,} | {m.rate:,.0f} | {m.rss_mb:.0f} |")
        url_file.unlink()
    return "\n".join(lines)


def startup_time(rounds: int) -> str:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pooledfetch", "--version"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return f"\n`pooledfetch --version` start-up: best {min(times) * 1000:.0f} ms of {rounds}\n"


def compile_package() -> None:
    """Byte-compile pooledfetch, as pip does when it installs a package.

    An editable install has no bytecode, and with PYTHONDONTWRITEBYTECODE set (as on the
    development machine) every run would compile pooledfetch's modules again (~40 ms), while the
    baselines' libraries in site-packages were compiled at install.
    """
    import compileall

    import pooledfetch

    compileall.compile_dir(os.path.dirname(pooledfetch.__file__), quiet=1)


@contextmanager
def environment(prefix: str) -> Iterator[tuple[nginx.Nginx, int, Path]]:
    """The package byte-compiled, a local nginx, the delay forwarder in front of its HTTPS port,
    and a work directory: (server, the forwarder's port, the directory), all gone at the end."""
    compile_package()
    server = nginx.start()
    forwarder, delay_port = start_delay_forwarder(server)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield server, delay_port, work
    finally:
        forwarder.terminate()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def heading(title: str) -> str:
    return (
        f"# {title} — {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--urls", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--client", action="append", help="run only these clients (pooledfetch always runs)")
    parser.add_argument("--no-live", action="store_true", help="skip the live-view comparison")
    parser.add_argument("--memory", action="store_true", help="also: peak RSS at 100,000 and 1,000,000 URLs")
    args = parser.parse_args()

    with environment("pooledfetch-bench-work-") as (server, delay_port, work):
        print(f"{heading('pooledfetch bench')}, {args.workers} workers")
        print(startup_time(5))
        for scenario, urls in scenarios(server, args.urls, delay_port).items():
            if args.scenario and scenario not in args.scenario:
                continue
            url_file = work / f"{scenario}.txt"
            url_file.write_text("\n".join(urls) + "\n")
            ca = full_ca_bundle(server, work) if scenario == FULL_CA_SCENARIO else server.ca_path
            commands = client_commands(url_file, args.workers, ca, work)
            if args.client:
                commands = {k: v for k, v in commands.items() if k == "pooledfetch" or k in args.client}
            if scenario == "http-1host" and not args.no_live:
                commands.update(live_commands(url_file, args.workers, server.ca_path))
            results: dict[str, list[Measurement]] = {name: [] for name in commands}
            for _ in range(args.rounds):
                for name, command in commands.items():  # interleaved: drift hits every client alike
                    results[name].append(measure(name, command, len(urls), server))
            print(report(scenario, results, args.workers), flush=True)
        if args.memory:
            print(memory_report(server, work, args.workers), flush=True)


if __name__ == "__main__":
    main()
