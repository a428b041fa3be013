"""Baseline: raw urllib3, one PoolManager with enough pools, shared by 50 threads."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import urllib3


def main(url_file: str, workers: int, ca: str) -> None:
    with open(url_file) as stream:
        urls = [line.strip() for line in stream if line.strip()]
    manager = urllib3.PoolManager(num_pools=100, maxsize=workers, block=True, ca_certs=ca)

    def fetch(url: str) -> int:
        try:
            response = manager.request("GET", url, preload_content=False, timeout=urllib3.Timeout(10, 30))
            for _ in response.stream(65536):
                pass
            response.release_conn()
            return response.status
        except urllib3.exceptions.HTTPError:
            return 0

    with ThreadPoolExecutor(workers) as pool:
        ok = sum(1 for status in pool.map(fetch, urls) if status == 200)
    print(ok)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
