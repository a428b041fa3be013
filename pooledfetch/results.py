"""The `Result` record every sink consumes, and the one place exceptions become error classes."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, fields

import requests.exceptions as rex
import urllib3.exceptions as uex

from pooledfetch.records import pickled_as_tuple

# Short, stable error classes: scripts match on these, so never rename one.
INVALID_URL = "invalid_url"
DNS = "dns"
CONNECT = "connect"
TIMEOUT = "timeout"
SSL = "ssl"
PROXY = "proxy"
POOL_TIMEOUT = "pool_timeout"
TOO_MANY_REDIRECTS = "too_many_redirects"
BAD_REDIRECT = "bad_redirect"
BODY_TOO_LARGE = "body_too_large"
PROTOCOL = "protocol"
DECODE = "decode"
SAVE = "save"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
OTHER = "other"
# Cluster mode: the Dask worker (or scheduler) running the URL's chunk was lost, and the URL was
# not fetched again (a non-idempotent method, or nothing left to run it on).
WORKER_LOST = "worker_lost"

_DETAIL_LIMIT = 300
# urllib3 prefixes messages with object reprs such as "<urllib3.connection.HTTPConnection object at 0x7f..>: ".
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-f]+>:?\s*")
# ...and with the pool that raised: "HTTPConnectionPool(host='h', port=80): ". The row has the URL already.
_POOL_PREFIX = re.compile(r"^\w+\(host=[^)]*\):\s*")


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class Result:
    """One row per input URL line. The export schema is this field list, in this order."""

    index: int
    url: str
    final_url: str
    method: str
    status: int | None
    reason: str
    ok: bool
    error: str
    error_detail: str
    ttfb_ms: float | None
    total_ms: float
    bytes: int
    content_type: str
    redirects: int
    retries: int
    started_at: str
    # Appended in 1.1: what the pool did for this request (None when no connection was used).
    conn_reused: bool | None = None
    connect_ms: float | None = None
    pool_wait_ms: float | None = None
    # Appended in 1.2: where --save-dir put the body ("" when it was not saved).
    saved_path: str = ""
    # Appended in 1.3: validators for a conditional re-fetch ("" when the response had none),
    # the Dask worker that fetched the row ("" in a single process), and the kind of change
    # since --baseline ("" without one).
    etag: str = ""
    last_modified: str = ""
    worker: str = ""
    change: str = ""
    # Appended in 1.3: the input row's values (CSV/TSV cells, JSONL values) carried from the
    # Target, empty for plain lists. Not a column itself: exporters spread it, under the
    # input's column names, in front of the other fields.
    input_row: tuple[object, ...] = ()

    @property
    def got_response(self) -> bool:
        """True when the server answered with a status, even if the body then failed."""
        return self.status is not None and not self.error


INPUT_ROW = "input_row"
# The result columns of an export, in order (the input's own columns go in front of them).
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result) if f.name != INPUT_ROW)


def classify(exc: BaseException) -> tuple[str, str]:
    """Map a requests/urllib3/OS exception to (error class, short detail)."""
    root = _root_cause(exc)
    detail = _short_detail(root if str(root) else exc)
    # The order matters: urllib3's classes nest (NameResolutionError is a NewConnectionError,
    # ConnectTimeoutError is a TimeoutError) and requests wraps them all.
    if isinstance(exc, rex.InvalidURL | rex.MissingSchema | rex.InvalidSchema) or isinstance(
        root, uex.LocationValueError
    ):
        return INVALID_URL, detail
    if isinstance(root, uex.EmptyPoolError):
        return POOL_TIMEOUT, "no free pooled connection in time: raise --pool-maxsize"
    if isinstance(root, uex.NameResolutionError):
        return DNS, detail
    if isinstance(root, uex.ProxyError) or isinstance(exc, rex.ProxyError):
        return PROXY, detail
    if isinstance(root, uex.SSLError) or isinstance(exc, rex.SSLError):
        return SSL, detail
    if isinstance(root, uex.ProtocolError) and isinstance(root.args[-1], TimeoutError):
        return TIMEOUT, detail  # e.g. sending a body to a server that never reads it
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, so it comes first.
    if isinstance(root, uex.NewConnectionError | ConnectionRefusedError):
        return CONNECT, detail
    if isinstance(root, uex.TimeoutError | TimeoutError) or isinstance(exc, rex.Timeout):
        return TIMEOUT, detail
    if isinstance(root, uex.DecodeError) or isinstance(exc, rex.ContentDecodingError):
        return DECODE, detail
    if isinstance(
        root,
        uex.ProtocolError
        | uex.HTTPError
        | http.client.HTTPException
        | ConnectionError
        | rex.InvalidHeader
        | rex.ChunkedEncodingError,
    ) or isinstance(exc, rex.ConnectionError):
        return PROTOCOL, detail
    return OTHER, f"{type(root).__name__}: {detail}"


def _root_cause(exc: BaseException) -> BaseException:
    """Unwrap requests' wrappers and urllib3's MaxRetryError down to the reason that matters."""
    current = exc
    for _ in range(8):
        if isinstance(current, uex.MaxRetryError) and current.reason is not None:
            current = current.reason
        elif isinstance(current, rex.RequestException) and current.args:
            inner = current.args[0]
            if not isinstance(inner, BaseException):
                break
            current = inner
        else:
            break
    return current


def _short_detail(exc: BaseException) -> str:
    if isinstance(exc, uex.ProtocolError) and len(exc.args) == 2:
        # ("Connection broken", IncompleteRead(...)) reads better without the tuple syntax.
        text = f"{exc.args[0]} {exc.args[1]!r}"
    elif len(exc.args) == 2 and isinstance(exc.args[0], str) and isinstance(exc.args[1], BaseException):
        # urllib3's ("Unable to connect to proxy", NewConnectionError(...)): the cause, told short.
        text = f"{exc.args[0]}: {_short_detail(exc.args[1])}"
    elif len(exc.args) > 1 and isinstance(exc.args[-1], str):
        # urllib3's (connection, message) pairs: the message is the part worth reading.
        text = exc.args[-1]
    else:
        text = str(exc)
    text = _POOL_PREFIX.sub("", _OBJECT_REPR.sub("", text)).strip() or type(exc).__name__
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"
