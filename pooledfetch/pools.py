"""urllib3 pool and connection classes that bound the wait for a connection and account for
every connection honestly: opened, reused, time to connect, time queued, discarded.

urllib3's own `num_connections`/`num_requests` counters are not public API and vanish with
evicted pools, so the accounting is done here, by the classes the pools are built from.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass
from http.client import HTTPException
from typing import TYPE_CHECKING, Any

from urllib3 import HTTPConnectionPool, HTTPResponse, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError
from urllib3.response import BaseHTTPResponse
from urllib3.util.connection import is_connection_dropped

from pooledfetch.headers import FastHeadersResponse

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection


# A body that is not wanted (a redirect's, or a 503's before its retry) is read this far, and
# for this long, so the connection can go back to its pool; a longer, endless or dripping one
# costs the connection instead.
DRAIN_LIMIT = 64 * 1024
DRAIN_SECONDS = 0.5


def drain_bounded(response: BaseHTTPResponse) -> None:
    """Discard an unwanted body, reading at most DRAIN_LIMIT bytes for at most DRAIN_SECONDS."""
    give_up = time.monotonic() + DRAIN_SECONDS
    drained = 0
    sock = getattr(response.connection, "sock", None)
    usual_timeout = sock.gettimeout() if sock is not None else None
    try:
        while drained < DRAIN_LIMIT and not response.closed and sock is not None:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            # Each read waits at most what is left of the drain budget, however slow the server.
            sock.settimeout(remaining)
            chunk = response.read1(DRAIN_LIMIT - drained, decode_content=False)
            if not chunk:
                break
            drained += len(chunk)
        if sock is not None and response.closed:
            sock.settimeout(usual_timeout)  # the connection goes back to the pool for reuse
    except (HTTPError, HTTPException, OSError):
        pass  # the connection is closed below either way
    release(response)


def release(response: BaseHTTPResponse) -> None:
    """Give the response's connection back: as is when its body was read to the end, else closed."""
    if not response.closed:
        response.close()
    # close() leaves the (now closed) connection checked out: give the pool its slot back.
    response.release_conn()


class _BoundedDrainResponse(HTTPResponse):
    """urllib3 drains a retried response's body in full before retrying; here, only so far."""

    def drain_conn(self) -> None:
        drain_bounded(self)


class Deadlines:
    """Each worker thread's current --max-time deadline, and a watchdog that holds it to it.

    Timeouts bound each socket operation, not a whole response: a server that sends one
    header byte a second never trips them. While a request with a deadline is on a
    connection, the watchdog shuts that connection's socket down once the deadline passes,
    which ends whatever read is blocked on it.
    """

    _TICK_SECONDS = 0.05

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, HTTPConnection]] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> float | None:
        """This thread's deadline (time.monotonic()), if its URL has one."""
        deadline: float | None = getattr(self._local, "deadline", None)
        return deadline

    def set(self, deadline: float | None) -> None:
        self._local.deadline = deadline

    def arm(self, connection: HTTPConnection) -> None:
        """Watch `connection` until `disarm`, if this thread has a deadline."""
        deadline = self.current()
        if deadline is None:
            return
        with self._lock:
            self._armed[threading.get_ident()] = (deadline, connection)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pooledfetch-deadlines", daemon=True)
                self._thread.start()

    def disarm(self) -> None:
        if self.current() is None:
            return  # nothing was armed: no lock on the hot path of runs without --max-time
        self._local.deadline = None
        with self._lock:
            self._armed.pop(threading.get_ident(), None)

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self._TICK_SECONDS):
            now = time.monotonic()
            with self._lock:
                expired = [connection for deadline, connection in self._armed.values() if deadline <= now]
            for connection in expired:
                sock = connection.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """A plain copy of PoolAccounting's counters, which can travel between processes;
    `urls` is the number of rows fetched (counted per Dask worker in cluster mode)."""

    connections_opened: int = 0
    connections_discarded: int = 0
    requests_sent: int = 0
    limit_wait_seconds: float = 0.0
    urls: int = 0

    def __add__(self, other: PoolFigures) -> PoolFigures:
        return PoolFigures(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: PoolFigures) -> PoolFigures:
        return PoolFigures(*(mine - theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))


class PoolAccounting:
    """Run-wide transport counters, written by worker threads, read by anyone; also the time
    workers spent waiting for politeness limits (pooledfetch.limits), which the summary shows.

    In cluster mode the client's accounting adds up the figures each Dask worker sends back,
    and keeps them per worker in `by_worker` (empty in a single process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections_opened = 0
        self.connections_discarded = 0
        self.requests_sent = 0
        self.limit_wait_seconds = 0.0
        self.by_worker: dict[str, PoolFigures] = {}

    def figures(self) -> PoolFigures:
        with self._lock:
            return PoolFigures(
                self.connections_opened, self.connections_discarded, self.requests_sent, self.limit_wait_seconds
            )

    def add(self, worker: str, figures: PoolFigures) -> None:
        """Count a Dask worker's figures for one chunk, in the totals and under its name."""
        with self._lock:
            self.connections_opened += figures.connections_opened
            self.connections_discarded += figures.connections_discarded
            self.requests_sent += figures.requests_sent
            self.limit_wait_seconds += figures.limit_wait_seconds
            self.by_worker[worker] = self.by_worker.get(worker, PoolFigures()) + figures

    def waited_for_limits(self, seconds: float) -> None:
        with self._lock:
            self.limit_wait_seconds += seconds

    def opened(self) -> None:
        with self._lock:
            self.connections_opened += 1

    def discarded(self) -> None:
        with self._lock:
            self.connections_discarded += 1

    def sent(self) -> None:
        with self._lock:
            self.requests_sent += 1


# Once the run holds `workers + hosts / 2` sockets, a host with its share of the requests in
# flight or more (workers ÷ hosts with a request out) waits this long for one of its own
# connections to come back before it opens another. Over many hosts each pool would otherwise
# grow to the most requests its host ever had in flight at once, each extra connection a TCP
# (and TLS) handshake; a host slow to give one back still gets its new connection after the wait.
REUSE_WAIT_SECONDS = 0.05


class ConnectionBudget:
    """A run's sockets, its hosts (`hosts()`: the pools it keeps) and how many pools have a request
    out: what decides whether a host's next connection is worth opening or worth waiting for one
    of its own instead, and when idle connections of hosts with nothing out are closed.

    A pool keeps every connection it opened until it is closed, and urllib3 2 does not close the
    pools its manager forgets: on a list sorted by host, each host done with left its connections
    open (~37 for 50 workers), and past ~30 hosts a process with the usual limit of 1,024 open
    files failed to connect. Past `limit` sockets, the idle connections of the pools least
    recently used with nothing out are closed before another is opened.
    """

    def __init__(self, workers: int, hosts: Callable[[], int], limit: int) -> None:
        self._workers = workers
        self._hosts = hosts
        self._limit = limit
        # Reentrant: a pool collected while this is held (a finalizer runs at any allocation)
        # closes its connections, and each close counts itself out through this lock.
        self._lock = threading.RLock()
        self._pools: weakref.WeakSet[_AccountedHTTPPool] = weakref.WeakSet()
        self.sockets = 0
        self.busy_pools = 0

    def joined(self, pool: _AccountedHTTPPool) -> None:
        with self._lock:
            self._pools.add(pool)

    def make_room(self, asking: _AccountedHTTPPool) -> None:
        """Close idle connections of other pools with nothing out, least recently used first,
        until the run holds fewer than `limit` sockets (or none is left to close)."""
        if self.sockets < self._limit:
            return
        with self._lock:
            idle = sorted((pool for pool in self._pools if pool is not asking and not pool.out), key=_last_used)
        for pool in idle:
            pool.close_idle()
            if self.sockets < self._limit:
                return

    def add_sockets(self, count: int) -> None:
        with self._lock:
            self.sockets += count

    def taken(self, pool: _AccountedHTTPPool) -> None:
        """One more request of `pool`'s is out (waiting for, or holding, a connection)."""
        with self._lock:
            pool.out += 1
            if pool.out == 1:
                self.busy_pools += 1

    def returned(self, pool: _AccountedHTTPPool) -> None:
        with self._lock:
            pool.out -= 1
            if pool.out == 0:
                self.busy_pools -= 1

    def reserve(self, out_here: int) -> bool:
        """Count one more socket, unless the run holds `workers` plus half as many sockets as it
        has hosts (rounded up) and a host with `out_here` requests out (the asking one included)
        has its share of them or more: False then. Decided and counted at once, so threads asking
        together cannot all get past it.

        The bound to keep is `workers + hosts`. The budget stops half the hosts short of it
        because its edge is soft: a host under its share still opens, and so does a wait that
        runs out. Set at the bound, 50 workers over 20 hosts ended at 70-73 connections; set
        here, at 62-65, in the same wall time.
        """
        # Outside the lock: the pool manager's lock is taken first elsewhere.
        budget = self._workers + (self._hosts() + 1) // 2
        with self._lock:
            if self.sockets >= budget and out_here * max(1, self.busy_pools) >= self._workers:
                return False
            self.sockets += 1
            return True


class _AccountedConnection(HTTPConnection):
    """Times `connect()` (TCP plus TLS for https) and counts the requests sent on each socket."""

    response_class = FastHeadersResponse
    accounting: PoolAccounting
    deadlines: Deadlines
    budget: ConnectionBudget
    connect_ms = 0.0
    pool_wait_ms = 0.0
    requests_on_socket = 0
    # Counted in the budget from its making (so threads deciding at once see it) until closed,
    # and again when a closed one connects anew.
    counted = False

    def count(self) -> None:
        if not self.counted:
            self.counted = True
            self.budget.add_sockets(1)

    def connect(self) -> None:
        self.count()
        start = time.perf_counter()
        super().connect()
        self.connect_ms = (time.perf_counter() - start) * 1000.0
        self.requests_on_socket = 0
        self.accounting.opened()

    def close(self) -> None:
        if self.counted:
            self.counted = False
            self.budget.add_sockets(-1)
        super().close()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self.deadlines.arm(self)
        # Counted after sending: for plain HTTP, connect() runs inside request() and resets the count.
        super().request(*args, **kwargs)
        self.requests_on_socket += 1
        self.accounting.sent()

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        response = super().getresponse()
        # urllib3 builds a plain HTTPResponse here (the pool's ResponseCls is not used for it);
        # the subclass differs only in how it drains, so switching the class is safe.
        response.__class__ = _BoundedDrainResponse
        return response

    @property
    def reused(self) -> bool:
        return self.requests_on_socket > 1


class _AccountedHTTPSConnection(_AccountedConnection, HTTPSConnection):
    pass


class _AccountedQueue(queue.LifoQueue[Any]):
    """The pool's queue: a connection that does not fit back in is one urllib3 discards."""

    accounting: PoolAccounting

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            super().put(item, block, timeout)
        except queue.Full:
            self.accounting.discarded()
            raise

    def _init(self, maxsize: int) -> None:
        # A deque: empty slots go in at the bottom, which a list does in time growing with the
        # pool (urllib3 fills a pool of --pool-maxsize 1000000 slot by slot: quadratic).
        self.queue: deque[Any] = deque()  # type: ignore[assignment]

    def _put(self, item: Any) -> None:
        # Empty slots go under the idle connections, so taking an empty slot off the top means
        # no connection is idle (urllib3 puts one back on top after an error, and the next taker
        # opened a new connection with idle ones beneath it).
        if item is None:
            self.queue.appendleft(item)
        else:
            self.queue.append(item)

    def take_returned(self, timeout: float) -> Any:
        """An idle connection, waiting up to `timeout` for one to be put back; None if none came."""
        deadline = time.monotonic() + timeout
        with self.not_empty:
            while not self.queue or self.queue[-1] is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.not_empty.wait(remaining)
            connection = self.queue.pop()
            self.not_full.notify()
            return connection


class _AccountedHTTPPool(HTTPConnectionPool):
    """Bounds the wait for a free connection by `pool_wait` seconds and times it.

    requests never passes `pool_timeout`, so with `pool_block` a thread would wait forever,
    outside every timeout; here the wait ends in EmptyPoolError, reported as `pool_timeout`.
    """

    pool_wait: float
    budget: ConnectionBudget

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = 0  # requests out: waiting for, or holding, one of its connections
        self.last_used = time.monotonic()
        self.budget.joined(self)

    def close_idle(self) -> None:
        """Close the connections waiting in the pool, keeping their slots."""
        slots = self.pool
        if slots is None:
            return
        for _ in range(slots.qsize()):
            try:
                conn = slots.get_nowait()
            except queue.Empty:
                return
            if conn is not None:
                conn.close()
            slots.put(None)

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        start = time.perf_counter()
        self.budget.taken(self)
        try:
            conn = super()._get_conn(self.pool_wait if timeout is None else timeout)
        except BaseException:
            self.budget.returned(self)
            raise
        if isinstance(conn, _AccountedConnection):
            conn.pool_wait_ms = (time.perf_counter() - start) * 1000.0
        return conn

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        self.last_used = time.monotonic()
        self.budget.returned(self)
        super()._put_conn(conn)

    def _new_conn(self) -> Any:  # an HTTPConnection, or an HTTPSConnection for the HTTPS pool
        slots = self.pool
        if isinstance(slots, _AccountedQueue) and not self.budget.reserve(self.out):
            conn = slots.take_returned(REUSE_WAIT_SECONDS)
            if conn is not None:
                slots.put(None)  # the empty slot this thread took goes back
                if is_connection_dropped(conn):
                    conn.close()  # it connects again when used, as urllib3 does it
                return conn
            self.budget.add_sockets(1)  # none came back in time: a new one after all
        self.budget.make_room(self)
        try:
            conn = super()._new_conn()
        except BaseException:
            self.budget.add_sockets(-1)
            raise
        if isinstance(conn, _AccountedConnection):  # always, with this pool's ConnectionCls
            conn.counted = True  # reserved above
        return conn


def _last_used(pool: _AccountedHTTPPool) -> float:
    return pool.last_used


class _AccountedHTTPSPool(_AccountedHTTPPool, HTTPSConnectionPool):
    pass


def pool_classes(
    pool_wait: float, accounting: PoolAccounting, deadlines: Deadlines, budget: ConnectionBudget
) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes for a PoolManager's `pool_classes_by_scheme`, bound to one run's settings.

    Pool managers build pools (and pools build connections and queues) from classes, so the
    run's wait bound and accounting travel as class attributes of classes made for the run.
    """
    queue_class = type("AccountedQueue", (_AccountedQueue,), {"accounting": accounting})
    run = {"accounting": accounting, "deadlines": deadlines, "budget": budget}
    http_conn = type("AccountedConnection", (_AccountedConnection,), run)
    https_conn = type("AccountedHTTPSConnection", (_AccountedHTTPSConnection,), run)
    shared = {"pool_wait": pool_wait, "QueueCls": queue_class, "budget": budget}
    return {
        "http": type("AccountedHTTPPool", (_AccountedHTTPPool,), {**shared, "ConnectionCls": http_conn}),
        "https": type("AccountedHTTPSPool", (_AccountedHTTPSPool,), {**shared, "ConnectionCls": https_conn}),
    }


def connection_facts(connection: object) -> tuple[bool, float, float] | None:
    """(reused, connect ms, pool wait ms) of the connection a response arrived on, if known."""
    if not isinstance(connection, _AccountedConnection):
        return None
    return connection.reused, (0.0 if connection.reused else connection.connect_ms), connection.pool_wait_ms
