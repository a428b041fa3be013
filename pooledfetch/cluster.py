"""Running the engine on Dask: chunks of targets out to worker processes, rows back, none lost.

    client: sources ─Target─▶ chunks ──▶ [Dask worker process: engine.run on one kept Transport]
            sinks  ◀─Result── rows of each chunk, once, when the chunk completes

The client reads the input lazily and keeps at most CHUNKS_PER_WORKER chunks per worker
process in flight, so its memory stays flat however long the input. A chunk's rows are
yielded only when the whole chunk comes back: Dask re-runs the chunks of a worker that dies,
and a chunk yielded once can never be yielded again.

Each worker process keeps one Transport and one set of fetch threads per config across chunks
(the pools are the point) and runs each chunk on them with exactly the engine a single process
runs; a chunk's tail overlaps the next chunk's start (see run_chunk).

Imported only when a cluster is asked for: importing distributed takes about a second.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

from pooledfetch import localworkers, tls
from pooledfetch import results as rc
from pooledfetch.config import FetchConfig
from pooledfetch.engine import DEFAULT_GRACE_SECONDS, KeepOrder, RunProgress, error_result, run
from pooledfetch.errors import DASK_MISSING, ClusterError, ConfigError
from pooledfetch.feed import Feed
from pooledfetch.limits import MAX_TRACKED_HOSTS, WINDOW, Limiter, host_key
from pooledfetch.pools import PoolAccounting, PoolFigures
from pooledfetch.results import Result
from pooledfetch.session import Transport
from pooledfetch.sources import Target

try:
    import dask
    import distributed
except ImportError:
    raise ConfigError(DASK_MISSING) from None

# Targets per chunk: enough that a chunk's start-up cost (a task, a pickled config) is small
# per URL and that its tail (threads idle while its last URLs finish) is a small part of it,
# few enough that a lost worker costs little and the input is spread evenly. Measured with
# 2 × 25 threads: 256 gave 0.86× a single process on the 40 ms bench, 512 gave 0.88×.
DEFAULT_CHUNK = 512
# A rate-limited chunk holds about this much work, so the last chunks are not run by one
# process at its share of the rate while the others sit idle.
CHUNK_SECONDS = 1.0
# How long a scheduler has to answer Dask's handshake once its port has taken the connection.
HANDSHAKE_SECONDS = 5.0
# Chunks in flight per worker process: one running and one ready to start.
CHUNKS_PER_WORKER = 2
# Only these methods may be sent again when a chunk is re-run (RFC 9110 idempotent, minus PUT
# and DELETE, whose repeat may still surprise: at most once is the promise for every other).
RESENDABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# How long the client waits after Ctrl-C for running chunks to wind down and return their rows.
CANCEL_WAIT_SECONDS = DEFAULT_GRACE_SECONDS + 10.0
# How long after a chunk's task is released its marker is (see _Dispatch._release).
MARKER_RELEASE_DELAY = 2.0
_POLL_SECONDS = 0.2
_DONE_POLL_SECONDS = 0.01
_CANCEL_POLL_SECONDS = 0.25
_MARKER = "pooledfetch-marker"
_MESSAGE_LOG_LENGTH = 8
# Per-process Transports kept for different configs (runs) at once.
_MAX_ENGINES = 4


# --- the client side ------------------------------------------------------------------------------------------


@contextmanager
def connect(
    processes: int | None, scheduler: str | None, connect_timeout: float, cancel: threading.Event | None = None
) -> Iterator[distributed.Client]:
    """A client of a new LocalCluster of `processes` workers, or of the cluster at `scheduler`.

    A LocalCluster started here is shut down on the way out, its worker processes with it.
    Dask's own log lines (a worker restarted, the scheduler gone, with tracebacks) are kept
    quiet meanwhile: what they tell, the rows and pooledfetch's one error line tell.
    """
    # Dask configures some of its loggers (distributed.client among them) with their own
    # handler and level, so each is quietened, not just the parent.
    names = ["distributed"] + [name for name in logging.root.manager.loggerDict if name.startswith("distributed.")]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        # Dask keeps each comm's last messages for debugging, 1,000 batches by default: with a
        # chunk of targets (or its rows) in each, that is a quarter of a million rows per comm.
        # Read again when a worker restarts, so it is set for the whole run.
        settings = {
            "distributed.admin.low-level-log-length": _MESSAGE_LOG_LENGTH,
            "distributed.worker.multiprocessing-method": localworkers.start_method(),
        }
        with dask.config.set(settings):
            with _connected(processes, scheduler, connect_timeout, cancel) as client:
                yield client
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _connected(
    processes: int | None, scheduler: str | None, connect_timeout: float, cancel: threading.Event | None
) -> Iterator[distributed.Client]:
    if scheduler is not None:
        with _client_of(scheduler, connect_timeout, cancel) as client:
            yield client
        return
    localworkers.start_server()  # unless the CLI started it already
    # Dask fills in a forkserver's preload list the first time it starts a worker, importing
    # numpy, pandas and lz4 into this process where they are installed (~0.5 s). The server is
    # running with its own list already, so that list would change nothing.
    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    # A forkserver's workers ignore SIGINT as the server does; spawned ones inherit it from here,
    # which then drops a Ctrl-C that comes while they start.
    ignoring = localworkers.sigint_ignored() if localworkers.start_method() == "spawn" else nullcontext()
    with ignoring:
        cluster = distributed.LocalCluster(
            n_workers=processes,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # A free port, so two runs never clash on 8787. The scheduler serves HTTP (its health
            # checks) even when told None, on 8787, with a warning on stderr if it is taken.
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield client


@contextmanager
def _client_of(scheduler: str, connect_timeout: float, cancel: threading.Event | None) -> Iterator[distributed.Client]:
    """A client of the scheduler at `scheduler`, connected within `connect_timeout` plus
    HANDSHAKE_SECONDS, or ClusterError. distributed's own timeout bounds the TCP connect but not
    its handshake after it: a listener that is no Dask scheduler (an HTTP server, a stuck
    process) held the run forever. A set `cancel` (Ctrl-C) ends the wait as an interrupt."""
    made: list[distributed.Client] = []
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            made.append(distributed.Client(scheduler, timeout=connect_timeout, set_as_default=False))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)

    # Named for the CLI's exit: a connection still hanging must not hold the interpreter.
    connecting = threading.Thread(target=connect, name="pooledfetch-connect", daemon=True)
    connecting.start()
    deadline = time.monotonic() + connect_timeout + HANDSHAKE_SECONDS
    while connecting.is_alive() and time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise KeyboardInterrupt
        connecting.join(_POLL_SECONDS)
    if connecting.is_alive():
        raise ClusterError(
            f"cannot reach the Dask scheduler at {scheduler}: no Dask scheduler answered within "
            f"{connect_timeout + HANDSHAKE_SECONDS:g} s (is it one?)"
        )
    if failed:
        exc = failed[0]
        if isinstance(exc, ValueError):
            raise ConfigError(f"--dask-scheduler {scheduler!r}: {exc}") from None
        if isinstance(exc, OSError | TimeoutError):
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        raise exc
    with made[0] as client:
        yield client


def dashboard_link(client: distributed.Client) -> str | None:
    """The Dask dashboard's address, when the scheduler serves one (it needs bokeh there: without
    it the same port only answers health checks)."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    try:
        # A lambda travels by value: the scheduler need not have pooledfetch installed.
        if not client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None):
            return None
    except Exception:  # noqa: BLE001 - a scheduler that will not run it keeps its dashboard to itself
        return None
    link: str = client.dashboard_link
    return link


def chunk_size_for(config: FetchConfig) -> int:
    """Targets per chunk of a worker process's `config` (its share of --rate): DEFAULT_CHUNK,
    or about CHUNK_SECONDS of work under a rate limit."""
    rates = [rate for rate in (config.rate, config.per_host_rate) if rate is not None]
    if rates:
        return max(1, min(DEFAULT_CHUNK, round(min(rates) * CHUNK_SECONDS)))
    return max(DEFAULT_CHUNK, config.max_in_flight)


def run_on_cluster(
    targets: Iterable[Target],
    config: FetchConfig,
    client: distributed.Client,
    *,
    cancel: threading.Event | None = None,
    hurry: threading.Event | None = None,
    progress: RunProgress | None = None,
    chunk_size: int | None = None,
    idle: Callable[[], None] | None = None,
) -> Generator[Result, None, None]:
    """engine.run's contract on a Dask cluster: one Result per target, in completion order
    (`idle`, `cancel` and `hurry` as engine.run's).

    Raises ClusterError after the last row when the scheduler was lost during the run (the rows
    it took with it are `worker_lost`).
    """
    dispatch = _Dispatch(targets, config, client, progress or RunProgress(), chunk_size, idle)
    results = dispatch.run(cancel or threading.Event(), hurry or threading.Event())
    return results if dispatch.keeper is None else _sorted(dispatch.keeper, results)


def _sorted(keeper: KeepOrder, results: Generator[Result, None, None]) -> Generator[Result, None, None]:
    try:
        yield from keeper.sort(results)
    finally:
        results.close()


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a worker is sent: targets (whole records, whatever fields they carry) and, per host,
    the wall-clock time (time.time()) before which it must not be sent to (pause, rate slot)."""

    run_id: str
    targets: list[Target]
    holds: dict[str, float]


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """What comes back: a row per target, who fetched them, the pool figures of the chunk and
    the hosts' holds when it ended (wall clock)."""

    results: list[Result]
    worker: str
    figures: PoolFigures
    holds: dict[str, float]


@dataclass(slots=True)
class _Sent:
    targets: list[Target]
    host: str | None


class _Dispatch:
    """One run's client side: chunks out, rows back, markers released, the cancel event set."""

    def __init__(
        self,
        targets: Iterable[Target],
        config: FetchConfig,
        client: distributed.Client,
        progress: RunProgress,
        chunk_size: int | None,
        idle: Callable[[], None] | None,
    ) -> None:
        # The workers load these files for themselves; a bad one is better told here, once.
        tls.check_files(config)
        self._client = client
        self._progress = progress
        self._idle = idle
        self._config = config
        processes = max(1, len(client.nthreads()))  # the workers (scheduler_info() may list only a few)
        # --rate is shared out: each process runs one chunk at a time at its share.
        self._worker_config = replace(config, rate=config.rate / processes) if config.rate is not None else config
        size = chunk_size or chunk_size_for(self._worker_config)
        self._max_in_flight = CHUNKS_PER_WORKER * processes
        # --keep-order: rows are released in input order, and no chunk goes out while the
        # window is full (unless none is out, which could never free it); chunks shrink so
        # that the window still spans a chunk for every slot and the chunk per process read ahead.
        self.keeper = KeepOrder(config.reorder_window) if config.keep_order else None
        if self.keeper is not None:
            size = min(size, max(1, config.reorder_window // (self._max_in_flight + processes)))
        self._invalid: deque[Target] = deque()
        self._feed = _Fetchable(targets if isinstance(targets, Feed) else Feed(targets), self.keeper, self._invalid)
        # Set when a target arrives from an input that made the client wait (a pipe).
        self._arrived = threading.Event()
        self._feed.on_arrival(self._arrived.set)
        by_host = config.per_host_concurrency is not None or config.per_host_rate is not None or config.pause_hosts
        self._chunks: _HostChunks | _InputChunks = (
            _HostChunks(self._feed, size) if by_host else _InputChunks(self._feed, size, processes, config.workers)
        )
        self._in_flight: dict[distributed.Future[ChunkDone], _Sent] = {}
        self._holds: dict[str, float] = {}
        self._run_id = uuid.uuid4().hex
        self._keys = (f"pooledfetch-{self._run_id}-{number}" for number in itertools.count())
        self._markers = config.method not in RESENDABLE_METHODS
        self._spent: deque[tuple[float, str]] = deque()  # (when its task was released, marker holder)
        self._cancel_event = distributed.Event(_cancel_event_name(self._run_id), client=client)
        # Re-registering replaces the plugin on every worker; the Transports it closes reopen on use.
        client.register_plugin(TransportPlugin())

    def run(self, cancel: threading.Event, hurry: threading.Event) -> Generator[Result, None, None]:
        lost: str | None = None
        try:
            while not cancel.is_set():
                yield from self._invalid_rows()
                sent = self._room() and self._submit_next()
                yield from self._invalid_rows()
                if sent:
                    continue
                if not self._in_flight and self._chunks.exhausted:
                    yield from self._invalid_rows()  # any read by that last look at the input
                    break
                yield from self._collect(_POLL_SECONDS)
            else:
                yield from self._wind_down(hurry)
        except _SchedulerLost as exc:
            lost = str(exc)
            yield from self._abandon(rc.WORKER_LOST, f"the Dask scheduler was lost: {lost}")
        finally:
            self._finish()
        if lost is not None:
            raise ClusterError(f"lost the Dask scheduler during the run: {lost}")
        if self._feed.error is not None:
            raise self._feed.error

    def _room(self) -> bool:
        if len(self._in_flight) >= self._max_in_flight:
            return False
        return self.keeper is None or not self.keeper.full or not self._in_flight

    def _invalid_rows(self) -> Iterator[Result]:
        while self._invalid:
            target = self._invalid.popleft()
            yield error_result(target, self._config, rc.INVALID_URL, target.invalid_reason or "invalid URL")

    def _submit_next(self) -> bool:
        taken = self._chunks.next_chunk()
        if taken is None:
            return False
        host, targets = taken
        holds = {host: self._holds[host]} if host is not None and host in self._holds else {}
        chunk = Chunk(self._run_id, targets, holds)
        try:
            future = self._client.submit(run_chunk, chunk, self._worker_config, key=next(self._keys), pure=False)
        except (OSError, CancelledError, RuntimeError) as exc:
            self._chunks.finished(host)
            raise _SchedulerLost(_message(exc)) from None
        self._in_flight[future] = _Sent(targets, host)
        self._count_in_flight()
        return True

    def _collect(self, timeout: float) -> Iterator[Result]:
        """The rows of every chunk that has finished, waiting up to `timeout` for the first."""
        if self._client.status not in ("running", "connecting", "newly-created"):
            raise _SchedulerLost(f"the client is {self._client.status}")
        # distributed.wait() needs a default client; a future's done() is a local look.
        deadline = time.monotonic() + timeout
        while not (done := [future for future in self._in_flight if future.done()]):
            if time.monotonic() >= deadline:
                if self._idle is not None:
                    self._idle()
                return
            if self._arrived.is_set():
                self._arrived.clear()
                return  # a target to send
            time.sleep(_DONE_POLL_SECONDS)
        for future in done:
            yield from self._rows_of(future)

    def _rows_of(self, future: distributed.Future[ChunkDone]) -> Iterator[Result]:
        sent = self._in_flight.pop(future)
        self._count_in_flight()
        self._chunks.finished(sent.host)
        try:
            outcome: ChunkDone = future.result()
        except distributed.KilledWorker as exc:
            outcome = _unsent(
                sent.targets, self._config, rc.WORKER_LOST, f"Dask gave up on this chunk: {_message(exc)}"
            )
        except (CancelledError, OSError) as exc:
            if self._client.status != "running":
                self._in_flight[future] = sent  # still the scheduler's to answer for
                raise _SchedulerLost(_message(exc)) from None
            outcome = _unsent(sent.targets, self._config, rc.WORKER_LOST, _message(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in a chunk must not lose its rows
            outcome = _unsent(sent.targets, self._config, rc.OTHER, _message(exc))
        self._release(future)
        if outcome.figures.urls or outcome.figures.requests_sent:
            self._progress.accounting.add(outcome.worker, outcome.figures)
        self._keep_holds(outcome.holds)
        rows = {result.index: result for result in outcome.results}
        for target in sent.targets:
            row = rows.get(target.index)
            yield row if row is not None else error_result(target, self._config, rc.OTHER, "no row came back")

    def _keep_holds(self, holds: dict[str, float]) -> None:
        self._holds.update(holds)
        if len(self._holds) > MAX_TRACKED_HOSTS:
            now = time.time()
            self._holds = {host: until for host, until in self._holds.items() if until > now}

    def _release(self, future: distributed.Future[ChunkDone]) -> None:
        """Release the chunk's task, and later its at-most-once marker.

        The task's release travels on the client's batched stream, the marker's on an RPC of its
        own: the marker waits MARKER_RELEASE_DELAY so the scheduler has surely forgotten the task
        (and cannot run it again) by the time the marker is free.
        """
        try:
            holder = self._holder(future) if self._markers else None
            future.release()
            if holder is not None:
                self._spent.append((time.monotonic(), holder))
            while self._spent and time.monotonic() - self._spent[0][0] > MARKER_RELEASE_DELAY:
                self._release_marker(self._spent.popleft()[1])
        except (OSError, TimeoutError):
            pass  # the scheduler is gone, and its markers with it

    def _holder(self, future: distributed.Future[ChunkDone]) -> str | None:
        """The id of the MultiLock that claimed the chunk's marker, if a run of it did."""
        holder: str | None = self._client.get_metadata([future.key, _MARKER], default=None)
        return holder

    def _release_marker(self, holder: str | None) -> None:
        scheduler = self._client.scheduler
        if holder is not None and scheduler is not None:
            self._client.sync(scheduler.multi_lock_release, id=holder)

    def _wind_down(self, hurry: threading.Event) -> Iterator[Result]:
        """Ctrl-C: no more chunks; running ones stop starting requests and return their rows
        (not waited for once `hurry` is set)."""
        try:
            self._cancel_event.set()
        except (OSError, TimeoutError):
            pass  # no scheduler, no chunks to stop: their rows are given below
        for target in self._chunks.drain():
            yield error_result(target, self._config, rc.CANCELLED, "run interrupted before this URL was sent")
        yield from self._invalid_rows()
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while self._in_flight and time.monotonic() < deadline and not hurry.is_set():
            try:
                yield from self._collect(_POLL_SECONDS)
            except _SchedulerLost:
                break
        yield from self._abandon(rc.INTERRUPTED, "run interrupted while this URL's chunk was on a Dask worker")

    def _abandon(self, error: str, detail: str) -> Iterator[Result]:
        """A row for every target still out or never sent, and no waiting for any of them (`_finish`
        forgets the chunks out, stopping any still running and releasing their markers)."""
        for sent in self._in_flight.values():
            for target in sent.targets:
                yield error_result(target, self._config, error, detail)
        for target in self._chunks.drain():
            yield error_result(target, self._config, error, detail)
        yield from self._invalid_rows()

    def _finish(self) -> None:
        """Forget the chunks still out (an abandoned run: the scheduler lost, a second Ctrl-C, the
        consumer gone), stopping any still running, and release every marker left."""
        self._feed.close()
        futures = list(self._in_flight)
        self._in_flight.clear()
        self._count_in_flight()
        if self._client.status != "running":
            return
        try:
            while self._spent:
                self._release_marker(self._spent.popleft()[1])
            if not futures:
                self._cancel_event.clear()  # removes it from the scheduler
                return
            # Set, and left set: chunks still running must stop starting requests.
            self._cancel_event.set()
            # Holders are read before the tasks are forgotten (their metadata goes with them),
            # and released after, when no re-run can claim a marker again.
            holders = [self._holder(future) for future in futures] if self._markers else []
            self._client.cancel(futures)
            for holder in holders:
                self._release_marker(holder)
        except (OSError, TimeoutError):
            pass  # the scheduler is gone, and its markers with it

    def _count_in_flight(self) -> None:
        self._progress.in_flight = sum(len(sent.targets) for sent in self._in_flight.values())


class _SchedulerLost(Exception):
    pass


def _message(exc: BaseException) -> str:
    """The exception's name and the first line of its message (Dask's run to several)."""
    first = str(exc).strip().partition("\n")[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _Fetchable(Feed):
    """The targets of `feed` that have a URL, each counted in the keeper's window (if any) as it
    is taken; the others are set aside in `invalid`, to get their rows on the client.

    An input that fails part way (a file that cannot be read, a later file's other header) ends
    here, its error kept in `error`: the chunks of what was read are sent and their rows given
    before the run raises it.
    """

    def __init__(self, feed: Feed, keeper: KeepOrder | None, invalid: deque[Target]) -> None:
        super().__init__(())
        self._feed = feed
        self._keeper = keeper
        self._invalid = invalid
        self.error: Exception | None = None

    @property
    def exhausted(self) -> bool:
        return self.error is not None or self._feed.exhausted

    def take(self) -> Target | None:
        try:
            while self.error is None and (target := self._feed.take()) is not None:
                if self._fetchable(target):
                    return target
        except Exception as exc:  # noqa: BLE001 - raised by the run once the rows read are in
            self.error = exc
        return None

    def rest(self) -> Iterator[Target]:
        if self.error is not None:
            return
        try:
            for target in self._feed.rest():
                if self._fetchable(target):
                    yield target
        except Exception as exc:  # noqa: BLE001 - as in take()
            self.error = exc

    def on_arrival(self, wake: Callable[[], None]) -> None:
        self._feed.on_arrival(wake)

    def close(self) -> None:
        self._feed.close()

    def _fetchable(self, target: Target) -> bool:
        if self._keeper is not None:
            self._keeper.note(target)
        if target.url is None:
            self._invalid.append(target)
            return False
        return True


class _InputChunks:
    """The input cut in order into chunks of `size`, smaller towards its end.

    The last chunks decide when a run ends: a process handed a whole chunk while the others run
    out of work finishes it alone. So the input is read a chunk per process ahead, and once its
    end is in sight each chunk takes a share of what is left (guided self-scheduling), down to
    `smallest`: the processes run out of work at about the same time. An input that keeps the
    client waiting (a pipe) is sent on in chunks of what has come.
    """

    def __init__(self, feed: Feed, size: int, processes: int, smallest: int) -> None:
        self._feed = feed
        self._size = size
        self._shares = 2 * processes
        self._smallest = min(size, smallest)
        self._lookahead = size * processes
        self._ahead: deque[Target] = deque()

    @property
    def exhausted(self) -> bool:
        self._fill()
        return not self._ahead and self._feed.exhausted

    def next_chunk(self) -> tuple[str | None, list[Target]] | None:
        self._fill()
        if not self._ahead:
            return None
        size = self._size
        if self._feed.exhausted:
            size = min(size, max(self._smallest, -(-len(self._ahead) // self._shares)))
        return None, [self._ahead.popleft() for _ in range(min(size, len(self._ahead)))]

    def finished(self, host: str | None) -> None:
        pass

    def drain(self) -> Iterator[Target]:
        while self._ahead:
            yield self._ahead.popleft()
        yield from self._feed.rest()

    def _fill(self) -> None:
        while len(self._ahead) < self._lookahead and (target := self._feed.take()) is not None:
            self._ahead.append(target)


class _HostChunks:
    """Chunks of one host's targets each, at most one chunk per host in flight.

    With a per-host limit that makes the limit exact across processes: a host's requests are
    only ever made by the one process running its chunk. A bounded look-ahead (at least WINDOW
    targets) is read and grouped by host, as limits.HostWindow does for threads.
    """

    def __init__(self, feed: Feed, size: int, window: int = WINDOW) -> None:
        self._feed: Feed | None = feed
        self._size = size
        self._window = max(window, size)
        self._buffered = 0
        self._queues: OrderedDict[str, deque[Target]] = OrderedDict()
        self._busy: set[str] = set()

    @property
    def exhausted(self) -> bool:
        self._fill()
        return not self._queues and self._feed is None

    def next_chunk(self) -> tuple[str | None, list[Target]] | None:
        self._fill()
        for host, queue in self._queues.items():
            if host in self._busy:
                continue
            chunk = [queue.popleft() for _ in range(min(self._size, len(queue)))]
            self._buffered -= len(chunk)
            self._busy.add(host)
            # The host goes to the back of the line, so hosts take turns.
            del self._queues[host]
            if queue:
                self._queues[host] = queue
            return host, chunk
        return None

    def finished(self, host: str | None) -> None:
        if host is not None:
            self._busy.discard(host)

    def drain(self) -> Iterator[Target]:
        for queue in self._queues.values():
            yield from queue
        self._queues.clear()
        self._buffered = 0
        feed, self._feed = self._feed, None
        if feed is not None:
            yield from feed.rest()

    def _fill(self) -> None:
        while self._feed is not None and self._buffered < self._window:
            target = self._feed.take()
            if target is None:
                if self._feed.exhausted:
                    self._feed = None
                return
            assert target.url is not None
            host = host_key(target.url)
            queue = self._queues.get(host)
            if queue is None:
                queue = self._queues[host] = deque()
            queue.append(target)
            self._buffered += 1


def _cancel_event_name(run_id: str) -> str:
    return f"pooledfetch-cancel-{run_id}"


# --- the worker side ------------------------------------------------------------------------------------------


@dataclass
class _ProcessEngine:
    """A worker process's Transport for one config, and what carries over between its chunks:
    the fetch threads (starting `--workers` threads per chunk would cost a few ms a chunk, ~5%
    of a fast chunk's work), the rate's next slot, and the pool figures reported so far."""

    transport: Transport
    executor: ThreadPoolExecutor
    # Held by the chunk handing out targets: the next chunk starts once this one's are all out.
    turn: threading.Lock = field(default_factory=threading.Lock)
    reporting: threading.Lock = field(default_factory=threading.Lock)
    overall_next: float | None = None
    reported: PoolFigures = field(default_factory=PoolFigures)

    def close(self) -> None:
        self.transport.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


_ENGINES: OrderedDict[FetchConfig, _ProcessEngine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()


def _engine_for(config: FetchConfig) -> _ProcessEngine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(config)
        if engine is not None:
            _ENGINES.move_to_end(config)
            return engine
        executor = ThreadPoolExecutor(config.workers, thread_name_prefix="pooledfetch")
        engine = _ENGINES[config] = _ProcessEngine(Transport(config, PoolAccounting()), executor)
        evicted = _ENGINES.popitem(last=False)[1] if len(_ENGINES) > _MAX_ENGINES else None
    if evicted is not None:
        with evicted.turn:  # not while one of its chunks is handing out targets
            evicted.close()
    return engine


def close_engines() -> None:
    """Close every Transport this process keeps (the worker is stopping)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()


class TransportPlugin(distributed.WorkerPlugin):
    """Closes the worker process's kept Transports when the worker stops."""

    name = "pooledfetch-transports"

    def teardown(self, worker: distributed.Worker) -> None:
        close_engines()


def run_chunk(chunk: Chunk, config: FetchConfig) -> ChunkDone:
    """Run on a Dask worker: fetch the chunk with engine.run on this process's kept Transport.

    Chunks take turns handing out targets to the process's fetch threads. Without limits, a
    chunk whose targets are all out leaves the worker's task slot (Dask's secede) and passes
    the turn on, so the next chunk fills the threads its tail frees: no thread idles between
    chunks. With limits, the turn is held to the end, so the process's share of --rate and
    its host holds pass from one chunk to the next exactly.
    """
    worker = distributed.get_worker()
    name = worker.name if isinstance(worker.name, str) else worker.address
    cancelled = distributed.Event(_cancel_event_name(chunk.run_id))
    engine = _engine_for(config)
    turn = _Turn(engine.turn)
    with turn:
        if cancelled.is_set():
            return _unsent(chunk.targets, config, rc.CANCELLED, "run interrupted before this URL was sent")
        if config.method not in RESENDABLE_METHODS and not _claim_marker(worker):
            detail = f"the Dask worker running this chunk was lost; a {config.method} is never sent twice"
            return _unsent(chunk.targets, config, rc.WORKER_LOST, detail)
        accounting = engine.transport.accounting
        limiter = Limiter.for_config(config, accounting)
        if limiter is not None:
            _apply_holds(limiter, chunk.holds, engine.overall_next)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(cancelled, stop), name="pooledfetch-cancel", daemon=True)
        watcher.start()
        try:
            rows = list(
                run(
                    chunk.targets if limiter is not None else _then(chunk.targets, turn.pass_on),
                    config,
                    cancel=stop,
                    progress=RunProgress(accounting=accounting),
                    transport=engine.transport,
                    limiter=limiter,
                    executor=engine.executor,
                )
            )
        finally:
            stop.set()
        holds: dict[str, float] = {}
        if limiter is not None:
            offset = time.time() - time.monotonic()
            holds = {host: until + offset for host, until in limiter.holds().items()}
            engine.overall_next = limiter.overall_next()
    # Chunks overlap, so each reports what the process's pools did since the last report:
    # per worker, the reports add up to the process's figures exactly.
    with engine.reporting:
        now = accounting.figures()
        figures = replace(now - engine.reported, urls=len(rows))
        engine.reported = now
    return ChunkDone([replace(row, worker=name) for row in rows], name, figures, holds)


class _Turn:
    """A chunk's turn at handing out targets: held from the start, passed on early or at the end."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._held = False

    def __enter__(self) -> _Turn:
        self._lock.acquire()
        self._held = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def pass_on(self) -> None:
        """This chunk's targets are all out: let the next chunk start, on a task slot of its own."""
        self._release()
        distributed.secede()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


def _then(targets: list[Target], handed_out: Callable[[], None]) -> Iterator[Target]:
    yield from targets
    handed_out()


def _apply_holds(limiter: Limiter, holds: dict[str, float], overall_next: float | None) -> None:
    offset = time.monotonic() - time.time()
    for host, until in holds.items():
        limiter.hold(host, until + offset)
    if overall_next is not None:
        limiter.hold_overall(overall_next)


def _claim_marker(worker: distributed.Worker) -> bool:
    """Claim this chunk's at-most-once marker on the scheduler; False if a run before took it.

    A MultiLock is held until released by id, whatever becomes of its holder (a Lock's or a
    Semaphore's lease lapses when its holder dies). The holder's id is kept as the task's
    metadata, so the client can release it once the chunk's rows are in.
    """
    key = worker.get_current_task()
    marker = distributed.MultiLock([str(key)])
    if not marker.acquire(blocking=False):
        return False
    marker.client.set_metadata([key, _MARKER], marker.id)
    return True


def _watch(cancelled: distributed.Event, stop: threading.Event) -> None:
    """Stop the chunk's engine once the client sets the run's cancel event."""
    # is_set() polls rather than wait() blocks on the scheduler: a wait still pending there
    # when the cluster shuts down is logged as an error.
    while not stop.wait(_CANCEL_POLL_SECONDS):
        try:
            if cancelled.is_set():
                stop.set()
        except Exception:  # noqa: BLE001 - the scheduler is unreachable for now (OSError, or
            # AttributeError from a client without its scheduler): the watch goes on, or the
            # chunk could no longer be cancelled.
            pass


def _unsent(targets: list[Target], config: FetchConfig, error: str, detail: str) -> ChunkDone:
    """A chunk's rows when no worker fetched it (so none is named), or none is known to have."""
    rows = [error_result(target, config, error, detail) for target in targets]
    return ChunkDone(rows, "", PoolFigures(), {})
