"""Cluster mode against one process, on the local nginx: does `--processes` pay on this machine?

    python bench/cluster.py                       # 20,000 URLs, 3 rounds, RSS over 1,000,000 lines
    python bench/cluster.py --urls 2000 --rounds 1 --rss-lines 20000   # a quick check that it works

Scenarios (equal total concurrency in each pair, interleaved round by round):
- `cpu`: 20,000 × 200 B from one host over HTTP: `--processes 2 -w 25` against `-w 50`, CPU-bound.
- `latency`: HTTPS to 20 hosts through a forwarder adding a 40 ms round trip (bench/delay.py).

Throughput is URLs ÷ the whole process's wall time, cluster start-up included; the start-up is
also reported on its own (a one-URL run with --processes 2, less a one-URL run without).
CPU time is sampled per process (psutil) while the run goes: the client's, and each Dask
worker's. Per-process CPU ms per URL is what predicts scaling: each worker process adds about
1000 / (worker ms per URL) URLs/s until the cores or the client (1000 / client ms per URL) run out.

Client RSS: the peak RSS of the client process alone (sampled) over a long input in cluster mode.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx  # noqa: E402
from run import environment, heading  # noqa: E402

_SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class Sampled:
    """One run: wall time, and per process the last CPU time and the peak RSS seen."""

    wall_s: float
    client_cpu_s: float
    client_rss_mb: float
    worker_cpu_s: dict[int, float]


def run_sampled(command: list[str]) -> Sampled:
    """Run `command`, sampling the CPU time and RSS of it and of every process under it."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu: dict[int, float] = {}
    servers: set[int] = set()
    peak_rss = 0
    while process.poll() is None:
        try:
            times = process.cpu_times()
            cpu[process.pid] = times.user + times.system
            peak_rss = max(peak_rss, process.memory_info().rss)
            for child in process.children(recursive=True):
                child_times = child.cpu_times()
                cpu[child.pid] = child_times.user + child_times.system
                if child.children():
                    servers.add(child.pid)  # the forkserver the workers are forked from
        except psutil.Error:
            pass  # a process ended between two looks
        time.sleep(_SAMPLE_SECONDS)
    wall = time.perf_counter() - start
    if process.returncode not in (0, 1):
        detail = process.stderr.read().decode()[-2000:] if process.stderr is not None else ""
        raise SystemExit(f"{command} failed ({process.returncode}): {detail}")
    client = cpu.pop(process.pid, 0.0)
    # Nannies only watch their worker and the forkserver only forks: the busy processes
    # under the client are the workers.
    workers = {pid: seconds for pid, seconds in cpu.items() if seconds > 0.5 and pid not in servers}
    return Sampled(wall, client, peak_rss / 2**20, workers)


def commands(
    url_file: Path, work: Path, ca: str, workers: int, processes: int, chunk_size: int | None = None
) -> dict[str, list[str]]:
    base = [sys.executable, "-m", "pooledfetch", str(url_file), "-q", "-o", str(work / "out.jsonl"), "--ca-bundle", ca]
    per_process = max(1, workers // processes)
    chunking = ["--chunk-size", str(chunk_size)] if chunk_size else []
    return {
        f"one process -w {workers}": [*base, "-w", str(workers), "--pool-maxsize", str(workers)],
        f"--processes {processes} -w {per_process}": [
            *base, "--processes", str(processes), "-w", str(per_process), "--pool-maxsize", str(per_process),
            *chunking,
        ],
    }  # fmt: skip


def startup(server: nginx.Nginx, work: Path, processes: int, rounds: int) -> float:
    """Seconds a cluster run spends more than a one-process run on a single URL (best of rounds)."""
    url_file = work / "one.txt"
    url_file.write_text(server.http_url("/small") + "\n")
    single, cluster = commands(url_file, work, server.ca_path, 1, processes).values()
    best_single = min(run_sampled(single).wall_s for _ in range(rounds))
    best_cluster = min(run_sampled(cluster).wall_s for _ in range(rounds))
    return best_cluster - best_single


def compare(name: str, urls: list[str], server: nginx.Nginx, work: Path, args: argparse.Namespace) -> str:
    url_file = work / f"{name}.txt"
    url_file.write_text("\n".join(urls) + "\n")
    runs: dict[str, list[Sampled]] = {}
    for _ in range(args.rounds):
        for label, command in commands(
            url_file, work, server.ca_path, args.workers, args.processes, args.chunk_size
        ).items():
            runs.setdefault(label, []).append(run_sampled(command))  # interleaved: drift hits both alike
    lines = [
        f"\n### {name} ({len(urls):,} URLs, best of {args.rounds})\n",
        "| run | URLs/s | client CPU ms/URL | worker CPU ms/URL (each) | client peak RSS MB | ÷ one process |",
        "|---|---|---|---|---|---|",
    ]
    best = {label: min(samples, key=lambda s: s.wall_s) for label, samples in runs.items()}
    baseline = next(iter(best.values()))
    for label, sample in best.items():
        count = len(urls)
        each = " · ".join(f"{seconds * 1000 / count:.3f}" for seconds in sample.worker_cpu_s.values()) or "-"
        lines.append(
            f"| {label} | {count / sample.wall_s:,.0f} | {sample.client_cpu_s * 1000 / count:.3f} | {each} "
            f"| {sample.client_rss_mb:.0f} | {baseline.wall_s / sample.wall_s:.2f} |"
        )
    return "\n".join(lines)


def client_rss(server: nginx.Nginx, work: Path, args: argparse.Namespace) -> str:
    """Peak client RSS in cluster mode at a tenth of the lines and at all of them: flat means equal."""
    lines = [
        "\n### client memory, cluster mode (one run each)\n",
        "| lines | URLs/s | client peak RSS MB |",
        "|---|---|---|",
    ]
    for count in sorted({max(1, args.rss_lines // 10), args.rss_lines}):
        url_file = work / f"rss-{count}.txt"
        with open(url_file, "w") as stream:
            for i in range(count):
                stream.write(server.http_url(f"/small?{i}", host=1 + i % nginx.HOSTS) + "\n")
        command = list(commands(url_file, work, server.ca_path, args.workers, args.processes).values())[1]
        sample = run_sampled(command)
        lines.append(f"| {count:,} | {count / sample.wall_s:,.0f} | {sample.client_rss_mb:.0f} |")
        url_file.unlink()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=50, help="total fetch threads, shared out among processes")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--rss-lines", type=int, default=1_000_000, help="input size for the client RSS check (0: skip)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the 40 ms HTTPS scenario")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU-bound scenario")
    parser.add_argument("--chunk-size", type=int, help="--chunk-size for the cluster runs (default: pooledfetch's)")
    args = parser.parse_args()

    with environment("pooledfetch-bench-cluster-") as (server, delay_port, work):
        print(heading("pooledfetch cluster bench"))
        print(f"\ncluster start-up (--processes {args.processes}): {startup(server, work, args.processes, 2):.2f} s")
        if not args.no_cpu:
            print(compare("cpu", [server.http_url("/small")] * args.urls, server, work, args), flush=True)
        if not args.no_latency:
            hosts = [server.https_url("/small", host=1 + i % nginx.HOSTS, port=delay_port) for i in range(args.urls)]
            print(compare("latency", hosts, server, work, args), flush=True)
        if args.rss_lines:
            print(client_rss(server, work, args), flush=True)


if __name__ == "__main__":
    main()
