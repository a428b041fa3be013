"""Baseline: aiohttp with a connector limited to 50 concurrent connections."""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp


async def run(urls: list[str], workers: int, ca: str) -> int:
    context = ssl.create_default_context(cafile=ca)
    connector = aiohttp.TCPConnector(limit=workers, ssl=context)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while not queue.empty():
            url = queue.get_nowait()
            try:
                async with session.get(url) as response:
                    async for _ in response.content.iter_chunked(65536):
                        pass
                    ok += response.status == 200
            except aiohttp.ClientError:
                pass

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return ok


def main(url_file: str, workers: int, ca: str) -> None:
    with open(url_file) as stream:
        urls = [line.strip() for line in stream if line.strip()]
    print(asyncio.run(run(urls, workers, ca)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
