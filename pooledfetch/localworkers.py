"""How a local cluster's worker processes start: forked from a preloaded server, deaf to Ctrl-C.

Dask starts a LocalCluster's worker processes with `spawn` by default: each new interpreter
imports Dask and pooledfetch again before it fetches anything, about 0.6 s of a run's start on
a 2-core machine. A forkserver (multiprocessing's; the default start method from Python 3.14)
does those imports once, and each worker is forked from it already loaded. Unlike `fork` it
is safe: the server is a fresh process without threads, not the client with Dask's threads.

Imports nothing heavy, so the CLI can start the server before it imports Dask itself: the
server's imports then run alongside the client's, on another core.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# ImportError is all a forkserver forgives in its preload: pooledfetch.cluster raises
# ConfigError without Dask, so the parts it needs are named instead.
_PRELOAD = ["distributed", "pooledfetch.engine"]


def start_method() -> str:
    """The multiprocessing start method for local worker processes (Dask's config key)."""
    # Where Python 3.14 makes it the default: not on macOS, whose system frameworks are not
    # safe in a forked child, nor where the OS has no fork.
    if sys.platform != "darwin" and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def start_server() -> None:
    """Start this process's forkserver, loading Dask and the engine, unless one is running."""
    if start_method() != "forkserver":
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    # A forked worker takes the server's signal handlers, and the server keeps a SIGINT that
    # was ignored when it started.
    with sigint_ignored():
        multiprocessing.forkserver.ensure_running()


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Start processes that ignore SIGINT, as a child inherits an ignored signal.

    Ctrl-C on a terminal signals the whole process group: the workers must not die of it, but
    wind their chunks down when the client tells them, as a single process does.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
