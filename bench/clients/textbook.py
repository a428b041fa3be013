"""Baseline: the textbook requests design, a Session with HTTPAdapter(10, 50) shared by 50 threads."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.adapters import HTTPAdapter


def main(url_file: str, workers: int, ca: str) -> None:
    with open(url_file) as stream:
        urls = [line.strip() for line in stream if line.strip()]
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=10, pool_maxsize=workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def fetch(url: str) -> int:
        try:
            return session.get(url, timeout=(10, 30), verify=ca).status_code
        except requests.RequestException:
            return 0

    with ThreadPoolExecutor(workers) as pool:
        ok = sum(1 for status in pool.map(fetch, urls) if status == 200)
    print(ok)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
