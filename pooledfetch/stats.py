"""Running statistics over the result stream, in bounded memory."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from pooledfetch.results import Result
from pooledfetch.sink import Sink


@dataclass
class RunStats(Sink):
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    total: int = 0
    ok: int = 0
    http_errors: int = 0
    failed: int = 0
    bytes_received: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def write(self, result: Result) -> None:
        self.total += 1
        self.bytes_received += result.bytes
        if result.error:
            self.failed += 1
            self.errors[result.error] += 1
        elif result.ok:
            self.ok += 1
        else:
            self.http_errors += 1

    def close(self) -> None:
        if self.finished is None:
            self.finished = time.monotonic()

    @property
    def duration(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    @property
    def rate(self) -> float:
        return self.total / self.duration if self.duration > 0 else 0.0

    def summary_line(self) -> str:
        errors = ", ".join(f"{name} {count}" for name, count in self.errors.most_common())
        failed = f"{self.failed} failed" + (f" ({errors})" if errors else "")
        return (
            f"{self.total} URLs: {self.ok} ok, {self.http_errors} HTTP errors, {failed}"
            f" in {self.duration:.2f} s ({self.rate:,.1f} URLs/s, {_human_bytes(self.bytes_received)})"
        )


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
