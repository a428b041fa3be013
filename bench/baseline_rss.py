"""Peak RSS and time of --baseline against a 1,000,000-row previous run.

    python bench/baseline_rss.py                  # 1,000,000 baseline rows, 2,000 URLs fetched
    python bench/baseline_rss.py --rows 200000 --urls 500

Writes a JSONL baseline of `--rows` rows shaped like a real export (every field, with etag,
last_modified and saved_path), whose first `--urls` rows are URLs of the built-in demo server,
then runs the installed `pooledfetch` on those `--urls` URLs in a child process, three ways:
without a baseline, with `--baseline`, and with `--if-changed`. For each it reports the wall
time and the child's peak RSS (wait4). It also times indexing alone, in a child process of its
own (peak RSS of a process that only imports pooledfetch and indexes the file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pooledfetch.demo import DemoServer

ROW = {
    "index": 0,
    "url": "",
    "final_url": "",
    "method": "GET",
    "status": 200,
    "reason": "OK",
    "ok": True,
    "error": "",
    "error_detail": "",
    "ttfb_ms": 4.2,
    "total_ms": 5.1,
    "bytes": 120,
    "content_type": "application/octet-stream",
    "redirects": 0,
    "retries": 0,
    "started_at": "2026-11-25T23:00:00.000+00:00",
    "conn_reused": True,
    "connect_ms": 0.0,
    "pool_wait_ms": 0.01,
    "saved_path": "",
    "etag": "",
    "last_modified": "Wed, 21 Oct 2026 07:28:00 GMT",
    "worker": "",
    "change": "",
}

_INDEX_ONLY = """
import resource, sys, time
from pooledfetch.baseline import Baseline
start = time.perf_counter()
with Baseline(sys.argv[1]) as baseline:
    took = time.perf_counter() - start
    print(baseline.rows, took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_baseline(path: Path, rows: int, fetched: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for index in range(rows):
            url = (
                fetched[index] if index < len(fetched) else f"https://host{index % 5000}.example/item/{index}?ref=list"
            )
            stream.write(json.dumps({**ROW, "index": index, "url": url, "final_url": url, "etag": f'"{index:x}"'}))
            stream.write("\n")


def measure(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit code of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        sys.exit(f"{args} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return wall, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--urls", type=int, default=2000)
    options = parser.parse_args()
    command = shutil.which("pooledfetch", path=os.path.dirname(sys.executable)) or "pooledfetch"
    directory = Path(tempfile.mkdtemp(prefix="pooledfetch-bench-"))
    try:
        with DemoServer() as server:
            fetched = [f"{server.base_url}/bytes/120?n={n}" for n in range(options.urls)]
            urls = directory / "urls.txt"
            urls.write_text("".join(f"{url}\n" for url in fetched), encoding="utf-8")
            baseline = directory / "baseline.jsonl"
            start = time.perf_counter()
            write_baseline(baseline, options.rows, fetched)
            size = baseline.stat().st_size
            print(
                f"baseline: {options.rows:,} rows, {size / 1e6:,.0f} MB, written in {time.perf_counter() - start:.1f} s"
            )

            out = subprocess.run(
                [sys.executable, "-c", _INDEX_ONLY, str(baseline)], check=True, capture_output=True, text=True
            ).stdout.split()
            print(f"index only: {int(out[0]):,} rows in {float(out[1]):.1f} s, peak RSS {float(out[2]):.0f} MB")

            run = [command, str(urls), "-q", "-w", "20", "-o", str(directory / "out.jsonl")]
            for label, extra in (
                ("no baseline", []),
                ("--baseline", ["--baseline", str(baseline)]),
                ("--if-changed", ["--if-changed", str(baseline)]),
            ):
                wall, rss, code = measure(run + extra)
                print(f"{label:>13}: {options.urls:,} URLs in {wall:.1f} s (exit {code}), peak RSS {rss:.0f} MB")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
