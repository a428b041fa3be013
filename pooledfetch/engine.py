"""The bounded thread-pool pipeline: Targets in, Results out as they complete.

The engine knows nothing about terminals or files, and holds no global state, so a worker
process can run it on a chunk of targets and hand the results back.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any

import requests
import urllib3.exceptions as uex
from urllib3.response import BaseHTTPResponse

from pooledfetch import results as rc
from pooledfetch.config import FetchConfig
from pooledfetch.feed import Feed
from pooledfetch.limits import Abandoned, HostWindow, Limiter
from pooledfetch.pools import PoolAccounting, connection_facts, drain_bounded, release
from pooledfetch.results import Result, classify
from pooledfetch.saving import BodyFile, SaveError, make_save_dir
from pooledfetch.session import BadRedirect, DeadlineExceeded, RetriesCutShort, Transport
from pooledfetch.sources import Target, iter_targets
from pooledfetch.text import mask_credentials

BODY_CHUNK = 64 * 1024
# After Ctrl-C: how long requests already on the wire may finish before they are abandoned.
DEFAULT_GRACE_SECONDS = 3.0
_POLL_SECONDS = 0.2


@dataclass
class RunProgress:
    """What a run exposes while it goes, for live views and summaries.

    `in_flight` is written by the engine on the consuming thread; `accounting` by worker threads.
    """

    accounting: PoolAccounting = field(default_factory=PoolAccounting)
    in_flight: int = 0


class _Stopped(Exception):
    """Raised inside a body read when the run is being torn down."""


class _BodyTooLarge(Exception):
    pass


def fetch_all(
    urls: Iterable[str | bytes],
    config: FetchConfig | None = None,
    *,
    cancel: threading.Event | None = None,
    client: Any = None,
) -> Iterator[Result]:
    """Fetch every URL line and yield one `Result` per line, in completion order
    (in input order with `config.keep_order`).

    Blank lines and `#` comments are skipped; every other line yields exactly one result,
    an invalid one included. Setting `cancel` stops submitting: the remaining lines come
    back as `cancelled` rows and requests already on the wire get a short grace period.
    With a Dask `client` (distributed.Client), the URLs are fetched in chunks on its workers.
    """
    if isinstance(urls, str | bytes):
        # Iterated, one would be a URL per character.
        raise TypeError("fetch_all takes an iterable of URLs (a list, a file, a generator), not one URL")
    if config is not None and not isinstance(config, FetchConfig):
        raise TypeError(f"config must be a FetchConfig, not {type(config).__name__}")
    config = config or FetchConfig()
    if client is not None:
        from pooledfetch.cluster import run_on_cluster

        return run_on_cluster(iter_targets(urls, config), config, client, cancel=cancel)
    return run(iter_targets(urls, config), config, cancel=cancel)


def run(
    targets: Iterable[Target],
    config: FetchConfig,
    *,
    cancel: threading.Event | None = None,
    hurry: threading.Event | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    progress: RunProgress | None = None,
    transport: Transport | None = None,
    limiter: Limiter | None = None,
    executor: ThreadPoolExecutor | None = None,
    idle: Callable[[], None] | None = None,
) -> Generator[Result, None, None]:
    """Fetch `targets`, yielding one Result per target as each completes.

    Given a `pooledfetch.feed.ReadAhead`, results go on being yielded while its input waits
    for the next target (a pipe, a terminal).

    `idle` is called on the consuming thread when no result has come for a poll interval
    (the CLI flushes its sinks then).

    Once `cancel` is set, requests on the wire get `grace_seconds` to finish; setting `hurry`
    too ends that wait at once (their rows are `interrupted`), and the rest are still `cancelled`.

    A `transport` given by the caller (a Dask worker's, kept across chunks) is used and left
    open; so is its `limiter`, made for this run with the same config and accounting, and its
    `executor` (at least `config.workers` threads), whose threads then outlive the run.
    """
    if config.save_dir is not None:
        make_save_dir(config.save_dir)  # where the run is: a Dask worker on another machine makes its own
    cancel = cancel or threading.Event()
    hurry = hurry or threading.Event()
    progress = progress or RunProgress()
    abandon = threading.Event()
    # What this run makes it also closes (the last made, the first closed); a caller's is left open.
    owned = ExitStack()
    if transport is None:
        transport = Transport(config, progress.accounting)
        owned.callback(transport.close)
    if limiter is None:
        limiter = Limiter.for_config(config, progress.accounting)
    keeper = KeepOrder(config.reorder_window) if config.keep_order else None
    feed = targets if isinstance(targets, Feed) else Feed(targets)
    owned.callback(feed.close)
    # In input order, targets go out as they come: a host window would reorder them.
    window = _host_window(feed, config, limiter) if keeper is None else None
    if executor is None:
        executor = ThreadPoolExecutor(config.workers, thread_name_prefix="pooledfetch")
        owned.callback(executor.shutdown, wait=False, cancel_futures=True)

    def start_loop(inbox: _Inbox, outbox: _Outbox) -> None:
        executor.submit(_work, transport, abandon, limiter, inbox, outbox)

    flight = _InFlight(progress, idle, start_loop, config.workers, window)
    feed.on_arrival(flight.wake)
    try:
        source = window or _InputOrder(feed, keeper)
        results = _stages(source, flight, config, cancel, limiter, keeper, abandon, grace_seconds, hurry)
        yield from results if keeper is None else keeper.sort(results)
    finally:
        if limiter is not None:
            limiter.stop()
        abandon.set()
        flight.close()
        owned.close()


def _stages(
    source: HostWindow | _InputOrder,
    flight: _InFlight,
    config: FetchConfig,
    cancel: threading.Event,
    limiter: Limiter | None,
    keeper: KeepOrder | None,
    abandon: threading.Event,
    grace_seconds: float,
    hurry: threading.Event,
) -> Iterator[Result]:
    input_error: Exception | None = None
    try:
        yield from _submit(source, flight, config, cancel, limiter, keeper)
    except Exception as exc:  # noqa: BLE001 - raised below, once the URLs sent have their rows
        # The input failed part way (a file that cannot be read, a later file's other header).
        input_error = exc
    if not cancel.is_set():
        # Every target is handed out: a worker loop that finds the inbox empty now ends, and
        # its thread of a shared executor is free for the next run's loops (a Dask worker
        # overlaps the next chunk with this one's tail).
        flight.close()
    while flight.pending and not cancel.is_set():
        yield from flight.collect(_POLL_SECONDS)
    if flight.pending:
        if limiter is not None:
            limiter.stop()  # nor during the grace period given to requests on the wire
        yield from _wind_down(flight, config, abandon, grace_seconds, hurry)
    if input_error is not None:
        raise input_error
    # Only once nothing is in flight: in input order, these rows then go out at once, not held.
    for target in source.drain():
        yield error_result(target, config, rc.CANCELLED, "run interrupted before this URL was sent")


def _host_window(feed: Feed, config: FetchConfig, limiter: Limiter | None) -> HostWindow | None:
    """A window interleaving the input by host when a per-host limit is set; None otherwise.

    A paused host's targets stay in the window until its pause is over, so no worker sits
    waiting with one while other hosts have work.
    """
    if config.per_host_concurrency is None and config.per_host_rate is None and not config.pause_hosts:
        return None
    return HostWindow(feed, config.per_host_concurrency, paused=limiter.paused if limiter is not None else None)


class _InputOrder:
    """The input as it comes: where targets are taken from when no per-host limit needs a window.

    With a keeper (--keep-order), each target counts in its window from when it is taken.
    """

    def __init__(self, feed: Feed, keeper: KeepOrder | None) -> None:
        self._feed = feed
        self._keeper = keeper

    @property
    def exhausted(self) -> bool:
        return self._feed.exhausted

    def next_ready(self) -> Target | None:
        target = self._feed.take()
        if target is not None and self._keeper is not None:
            self._keeper.note(target)
        return target

    def drain(self) -> Iterator[Target]:
        for target in self._feed.rest():
            if self._keeper is not None:
                self._keeper.note(target)
            yield target


def _submit(
    source: HostWindow | _InputOrder,
    flight: _InFlight,
    config: FetchConfig,
    cancel: threading.Event,
    limiter: Limiter | None,
    keeper: KeepOrder | None,
) -> Iterator[Result]:
    """Hand targets to the workers while keeping at most `max_in_flight` of them unconsumed
    (`workers` with a host window).

    With a host window, only targets whose host has room are sent: when every buffered host is
    at its limit, results are collected (which frees room) rather than a target sent to wait
    in a worker. With a keeper (--keep-order), no target is taken while its window is full.
    Once cancelled, the targets not sent yet are left in `source`.
    """
    # A host window decides per target whether its host may be sent to now (its limit, a pause):
    # a target queued behind busy workers would be held to a decision made before a pause began,
    # so with a window no more targets are handed out than there are workers to take them.
    depth = config.max_in_flight if isinstance(source, _InputOrder) else config.workers
    while not cancel.is_set():
        if keeper is not None and keeper.full:
            yield from flight.collect(_POLL_SECONDS)
            continue
        target = source.next_ready()
        if target is None:
            if source.exhausted:
                return
            yield from flight.collect(_POLL_SECONDS)
        elif target.url is None:
            yield error_result(target, config, rc.INVALID_URL, target.invalid_reason or "invalid URL")
        else:
            flight.submit(target)
            while len(flight.pending) >= depth and not cancel.is_set():
                yield from flight.collect(_POLL_SECONDS)
    if limiter is not None:
        limiter.stop()  # URLs waiting for a limit are never sent once the run is cancelled


class KeepOrder:
    """Results released in input order (--keep-order), with a bounded number held back.

    A target counts from when it is taken from the input until its result is released, so while
    the oldest unfinished one is outstanding at most `window - 1` results wait behind it. Used
    by the consuming thread only; target indexes must be unique (every source's are).
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._order: deque[int] = deque()  # indexes taken and not released, in input order
        self._held: dict[int, Result] = {}

    @property
    def full(self) -> bool:
        return len(self._order) >= self._window

    def note(self, target: Target) -> None:
        """`target` is taken from the input: its result is released after those taken before it."""
        self._order.append(target.index)

    def sort(self, results: Iterable[Result]) -> Iterator[Result]:
        for result in results:
            self._held[result.index] = result
            while self._order and self._order[0] in self._held:
                yield self._held.pop(self._order.popleft())


_Job = tuple[int, Target]
_Inbox = SimpleQueue[_Job | None]
# None in the outbox wakes the consuming thread for a target the input has just given.
_Outbox = SimpleQueue[tuple[int, Result] | None]


def _work(
    transport: Transport,
    abandon: threading.Event,
    limiter: Limiter | None,
    inbox: _Inbox,
    outbox: _Outbox,
) -> None:
    """One worker thread's loop: fetch targets from the inbox until told to stop."""
    while (job := inbox.get()) is not None:
        token, target = job
        try:
            result = fetch_one(transport, target, abandon, limiter)
        except BaseException as exc:  # noqa: BLE001 - a bug in one fetch must not lose the row
            result = error_result(target, transport.config, rc.OTHER, f"{type(exc).__name__}: {exc}")
        if target.input_row:
            result = replace(result, input_row=target.input_row)
        outbox.put((token, result))


class _InFlight:
    """Targets handed to the workers and not yet consumed (and, with a host window, its
    per-host in-flight counts kept).

    Long-lived worker loops fed by queues cost far less per URL than a Future per URL
    (a Condition, a lock and a waiter list each): the consuming thread shares the GIL
    with every worker, so its per-URL cost is the pipeline's ceiling.
    """

    def __init__(
        self,
        progress: RunProgress,
        idle: Callable[[], None] | None,
        start_loop: Callable[[_Inbox, _Outbox], None],
        most_loops: int,
        window: HostWindow | None,
    ) -> None:
        self.pending: dict[int, Target] = {}
        self.inbox: _Inbox = SimpleQueue()
        self.outbox: _Outbox = SimpleQueue()
        self._tokens = itertools.count()
        self._progress = progress
        self._idle = idle
        self._start_loop = start_loop
        self._most_loops = most_loops
        self._loops = 0
        self._closed = False
        self._window = window

    def close(self) -> None:
        """Tell the worker loops to end once they find the inbox empty (nothing more comes)."""
        if not self._closed:
            self._closed = True
            for _ in range(self._loops):
                self.inbox.put(None)

    def submit(self, target: Target) -> None:
        token = next(self._tokens)
        self.pending[token] = target
        self._progress.in_flight = len(self.pending)
        self.inbox.put((token, target))
        if self._window is not None:
            self._window.started(target)
        # A worker loop starts when there are more targets out than loops to take them: the first
        # URL leaves as its thread starts, not once every worker's has (50 take ~7 ms), and a
        # short or slow input starts no more threads than it keeps busy.
        if len(self.pending) > self._loops < self._most_loops:
            self._start_loop(self.inbox, self.outbox)
            self._loops += 1

    def wake(self) -> None:
        """End a wait in `collect` early (called from any thread)."""
        self.outbox.put(None)

    def collect(self, timeout: float) -> Iterator[Result]:
        """The results that have finished, waiting up to `timeout` for the first of them
        (or until `wake`)."""
        try:
            done = self.outbox.get(timeout=timeout)
        except Empty:
            if self._idle is not None:
                self._idle()
            return
        while True:
            # A result for a target already given a row (abandoned after the grace period) is dropped.
            if done is not None and self.pending.pop(done[0], None) is not None:
                self._progress.in_flight = len(self.pending)
                if self._window is not None:
                    self._window.finished(done[1].index)
                yield done[1]
            try:
                done = self.outbox.get_nowait()
            except Empty:
                return

    def unstarted(self) -> list[Target]:
        """Take back the targets no worker has picked up yet."""
        taken = []
        stops = 0
        while True:
            try:
                job = self.inbox.get_nowait()
            except Empty:
                break
            if job is None:
                stops += 1
            elif self.pending.pop(job[0], None) is not None:
                taken.append(job[1])
        for _ in range(stops):
            self.inbox.put(None)  # the loops still need them to end
        self._progress.in_flight = len(self.pending)
        return taken

    def abandon_rest(self) -> list[Target]:
        targets = list(self.pending.values())
        self.pending.clear()
        self._progress.in_flight = 0
        return targets


def _wind_down(
    flight: _InFlight, config: FetchConfig, abandon: threading.Event, grace_seconds: float, hurry: threading.Event
) -> Iterator[Result]:
    """Cancel what has not started; give what is on the wire `grace_seconds` (unless `hurry` is
    set), then abandon it."""
    for target in flight.unstarted():
        yield error_result(target, config, rc.CANCELLED, "run interrupted before this URL was sent")
    deadline = time.monotonic() + grace_seconds
    while flight.pending and time.monotonic() < deadline and not hurry.is_set():
        yield from flight.collect(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    abandon.set()
    # Body loops notice `abandon` between reads; a thread blocked in a read is left behind.
    if flight.pending:
        yield from flight.collect(_POLL_SECONDS)
    for target in flight.abandon_rest():
        yield error_result(target, config, rc.INTERRUPTED, "run interrupted while this URL was in flight")


def fetch_one(transport: Transport, target: Target, abandon: threading.Event, limiter: Limiter | None = None) -> Result:
    """Fetch one URL, following redirects by hand, and never raise.

    With a `limiter`, each hop waits for its permit (within the URL's deadline) before it is
    sent, and holds its host's slot until its body is read or drained.
    """
    config = transport.config
    started_at = _now_iso()
    start = time.perf_counter()
    deadline = time.monotonic() + config.max_time if config.max_time else None
    assert target.url is not None
    raw: BaseHTTPResponse | None = None
    final_url = target.url
    method = config.method  # as sent: a 303 (and a 301/302 to a POST) turns the next hop into a GET
    redirects = retries = 0
    ttfb_ms: float | None = None
    reused: bool | None = None
    connect_ms = pool_wait_ms = 0.0
    body = _BodyProgress()
    error = detail = ""
    host: str | None = None
    try:
        prepared = transport.prepare(target.url)
        if target.conditions:
            # A copy: prepare() may hand back the header dict every request shares.
            prepared.headers = prepared.headers.copy()
            prepared.headers.update(target.conditions)
        while True:
            final_url = prepared.url or final_url
            method = prepared.method or method
            if limiter is not None:
                # The previous hop's body is drained: its host slot goes back before this hop waits.
                limiter.release(host)
                host = None
                host = limiter.acquire(final_url, deadline)
            raw = transport.send(prepared, deadline, limiter.retry_observer(host) if limiter is not None else None)
            if deadline is not None and time.monotonic() >= deadline:
                # The watchdog shuts the socket at the deadline, and http.client takes that for the
                # end of a head still arriving: what came is no response to report.
                release(raw)
                raw = None
                raise DeadlineExceeded
            if limiter is not None and host is not None:
                limiter.observe(host, raw.status, raw.headers.get("Retry-After"))
            retries += _retries_used(raw)
            if facts := connection_facts(raw.connection):
                reused = facts[0]
                connect_ms += facts[1]
                pool_wait_ms += facts[2]
            redirect = transport.redirect_response(prepared, raw) if config.follow_redirects else None
            if redirect is None:
                break
            if redirects >= config.max_redirects:
                error, detail = rc.TOO_MANY_REDIRECTS, f"more than {config.max_redirects} redirects"
                break
            drain_bounded(raw)
            prepared = transport.redirect_request(prepared, redirect)
            # The validators belong to the URL's previous final response: the first hop only.
            for name, _ in target.conditions:
                prepared.headers.pop(name, None)
            redirects += 1
        ttfb_ms = _ms_since(start)
        if not error:
            # A 304 to a conditional request has no body: the previous run's file is kept instead.
            if config.save_dir is not None and not (target.conditions and raw.status == 304):
                body.file = BodyFile(config.save_dir, target.index, final_url)
            _read_body(raw, config.max_bytes, abandon, body, deadline)
        if deadline is not None and time.monotonic() >= deadline:
            # A head or body cut short by the watchdog can look complete to http.client.
            raise DeadlineExceeded
    except _BodyTooLarge:
        error, detail = rc.BODY_TOO_LARGE, f"body larger than --max-bytes {config.max_bytes}"
    except DeadlineExceeded:
        error, detail = rc.TIMEOUT, f"--max-time {config.max_time:g}s exceeded"
    except _Stopped:
        error, detail = rc.INTERRUPTED, "run interrupted while the body was being read"
    except Abandoned:
        # Nothing of this hop was sent; a URL with no hop sent at all is simply cancelled.
        error = rc.CANCELLED if raw is None else rc.INTERRUPTED
        detail = "run interrupted while waiting for a rate or host limit"
    except BadRedirect as exc:
        error, detail = rc.BAD_REDIRECT, str(exc)
    except SaveError as exc:
        error, detail = rc.SAVE, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified row
        error, detail = classify(exc)
        retries += _retries_made(exc, config.retries)
        if deadline is not None and time.monotonic() >= deadline:
            # The watchdog cut the connection, or the last retry ran into the deadline.
            error, detail = rc.TIMEOUT, f"--max-time {config.max_time:g}s exceeded ({detail})"
    finally:
        saved_path, error, detail = _finish_saving(body.file, error, detail)
        transport.deadlines.disarm()
        if raw is not None:
            # A fully read response already gave its connection back; one with unread body closes it.
            release(raw)
        if limiter is not None:
            limiter.release(host)
    status = raw.status if raw is not None else None
    return Result(
        index=target.index,
        url=_shown(target.raw, config),
        final_url=_shown(final_url, config),
        method=method,
        status=status,
        reason=(raw.reason or "") if raw is not None else "",
        ok=not error and status is not None and status < 400,
        error=error,
        error_detail=_shown(detail, config),
        ttfb_ms=ttfb_ms,
        total_ms=_ms_since(start),
        bytes=body.received,
        content_type=raw.headers.get("Content-Type", "") if raw is not None else "",
        redirects=redirects,
        retries=retries,
        started_at=started_at,
        conn_reused=reused,
        connect_ms=round(connect_ms, 3) if reused is not None else None,
        pool_wait_ms=round(pool_wait_ms, 3) if reused is not None else None,
        saved_path=saved_path,
        etag=raw.headers.get("ETag", "") if raw is not None else "",
        last_modified=raw.headers.get("Last-Modified", "") if raw is not None else "",
    )


def _finish_saving(file: BodyFile | None, error: str, detail: str) -> tuple[str, str, str]:
    """(saved path, error, detail): a whole body keeps its file, anything less leaves none."""
    if file is None:
        return "", error, detail
    if error:
        file.discard()
        return "", error, detail
    try:
        return file.commit(), error, detail
    except SaveError as exc:
        return "", rc.SAVE, str(exc)


class _BodyProgress:
    """Bytes counted so far, kept outside the read loop so a failed read still reports them,
    and the file the body is being saved to (--save-dir)."""

    __slots__ = ("received", "file")

    def __init__(self) -> None:
        self.received = 0
        self.file: BodyFile | None = None


def _read_body(
    raw: BaseHTTPResponse,
    max_bytes: int,
    abandon: threading.Event,
    body: _BodyProgress,
    deadline: float | None,
) -> None:
    """Count the decoded body without keeping it; stop past `max_bytes` (decoded or on the wire).

    read1() makes at most one socket read per call, so a server dripping a byte a second
    cannot hold a call for long: the deadline and the abandon flag are checked between reads.
    """
    # Without a content coding nothing is buffered past the socket: once the response is
    # closed the body is complete, which saves a last empty read per URL.
    plain = "content-encoding" not in raw.headers
    while chunk := raw.read1(BODY_CHUNK, decode_content=True):
        body.received += len(chunk)
        if body.received > max_bytes or raw.tell() > max_bytes:
            raise _BodyTooLarge
        if body.file is not None:
            body.file.write(chunk)
        if plain and raw.closed:
            break
        if abandon.is_set():
            raise _Stopped
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded


def _retries_used(raw: BaseHTTPResponse) -> int:
    return len(raw.retries.history) if raw.retries is not None else 0


def _retries_made(exc: BaseException, allowed: int) -> int:
    """The retries behind a request that failed with `exc`: all `allowed` when urllib3 ran out
    of them after errors, as many as were made when a wait was cut short, else none."""
    while True:
        if isinstance(exc, RetriesCutShort):
            return exc.made
        if isinstance(exc, uex.MaxRetryError):
            return 0 if isinstance(exc.reason, uex.ResponseError) else allowed
        if isinstance(exc, requests.RequestException) and exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            return 0


def error_result(target: Target, config: FetchConfig | None, error: str, detail: str) -> Result:
    return Result(
        index=target.index,
        url=_shown(target.raw, config),
        final_url=_shown(target.url or "", config),
        method=config.method if config is not None else "",
        status=None,
        reason="",
        ok=False,
        error=error,
        error_detail=_shown(detail, config),
        ttfb_ms=None,
        total_ms=0.0,
        bytes=0,
        content_type="",
        redirects=0,
        retries=0,
        started_at=_now_iso(),
        conn_reused=None,
        connect_ms=None,
        pool_wait_ms=None,
        input_row=target.input_row,
    )


def _shown(text: str, config: FetchConfig | None) -> str:
    """What a row may carry of a URL or message: credentials masked unless --show-credentials."""
    return text if config is not None and config.show_credentials else mask_credentials(text)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)
