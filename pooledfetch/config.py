"""`FetchConfig`: every tunable of a run, frozen and validated once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from pooledfetch import __version__
from pooledfetch.errors import ConfigError
from pooledfetch.text import mask_credentials

DEFAULT_POOL_CONNECTIONS = 100
DEFAULT_POOL_MAXSIZE = 20
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_FACTOR = 0.5
DEFAULT_RETRY_STATUSES = (429, 500, 502, 503, 504)
DEFAULT_MAX_RETRY_WAIT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_REDIRECTS = 10
DEFAULT_MAX_BYTES = 100 * 1000 * 1000
DEFAULT_REORDER_WINDOW_PER_WORKER = 8
DEFAULT_USER_AGENT = f"pooledfetch/{__version__}"
FETCHABLE_SCHEMES = ("http", "https")

# RFC 9110 token: what a method or a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# The longest wait any setting may ask for (about 31 years): past ~9.2e9 s a socket timeout or
# a timed wait overflows the platform's time_t, and every request would fail with it.
MAX_SECONDS = 1e9
# What each field must hold (None too, where that is its default): the library API takes a
# FetchConfig from any caller, and a wrong type would otherwise fail deep in a request.
_WHOLE_NUMBERS = ("workers", "pool_connections", "pool_maxsize", "retries", "max_redirects", "max_bytes",
                  "reorder_window", "per_host_concurrency")  # fmt: skip
_NUMBERS = ("backoff_factor", "max_retry_wait", "connect_timeout", "read_timeout", "max_time", "rate", "per_host_rate")
_TEXTS = ("method", "user_agent", "default_scheme", "ca_bundle", "base_url", "client_cert", "client_key", "proxy",
          "save_dir")  # fmt: skip
_FLAGS = ("pool_block", "follow_redirects", "verify", "dedupe", "netrc", "show_credentials", "pause_hosts",
          "env_proxy", "keep_order")  # fmt: skip
_SECONDS = ("max_retry_wait", "connect_timeout", "read_timeout", "max_time")


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Everything the engine needs; plain values only, so it pickles to worker processes."""

    workers: int = 0  # 0 means "as many as --pool-maxsize"
    pool_connections: int = DEFAULT_POOL_CONNECTIONS
    pool_maxsize: int = DEFAULT_POOL_MAXSIZE
    pool_block: bool = True
    retries: int = DEFAULT_RETRIES
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    retry_statuses: tuple[int, ...] = DEFAULT_RETRY_STATUSES
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_time: float | None = None
    method: str = "GET"
    data: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    user_agent: str = DEFAULT_USER_AGENT
    follow_redirects: bool = True
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    verify: bool = True
    ca_bundle: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    base_url: str | None = None
    default_scheme: str = "https"
    dedupe: bool = False
    netrc: bool = False
    show_credentials: bool = False
    # Politeness limits (pooledfetch.limits); None means no limit.
    rate: float | None = None
    per_host_concurrency: int | None = None
    per_host_rate: float | None = None
    pause_hosts: bool = False
    # Sent with every request: (name, value) cookies, and a client certificate (and its key).
    cookies: tuple[tuple[str, str], ...] = ()
    client_cert: str | None = None
    client_key: str | None = None
    # An explicit proxy for every request; otherwise HTTP(S)_PROXY/NO_PROXY unless env_proxy is off.
    proxy: str | None = None
    env_proxy: bool = True
    # A directory to save each body in (made when the run starts); None saves nothing.
    save_dir: str | None = None
    # Results in input order, at most `reorder_window` of them held (0 means 8 × workers).
    keep_order: bool = False
    reorder_window: int = 0

    def __post_init__(self) -> None:
        self._check_types()
        if self.pool_maxsize < 1:
            raise ConfigError("--pool-maxsize must be at least 1")
        if self.workers == 0:
            object.__setattr__(self, "workers", self.pool_maxsize)
        if self.reorder_window == 0:
            object.__setattr__(self, "reorder_window", DEFAULT_REORDER_WINDOW_PER_WORKER * self.workers)
        object.__setattr__(self, "method", self.method.upper())
        self._validate()

    @property
    def max_in_flight(self) -> int:
        """Targets submitted but not yet consumed: bounded so memory stays flat."""
        return 2 * self.workers

    @property
    def client_certificate(self) -> str | tuple[str, str] | None:
        """The certificate in the form requests takes: a path, or (certificate, key)."""
        if self.client_cert is not None and self.client_key is not None:
            return (self.client_cert, self.client_key)
        return self.client_cert

    @property
    def tls_verify(self) -> bool | str:
        """What requests calls `verify`: the CA bundle (which wins over --insecure), else whether to verify."""
        return self.ca_bundle if self.ca_bundle else self.verify

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def _check_types(self) -> None:
        for names, kinds, what in (
            (_WHOLE_NUMBERS, int, "a whole number"),
            (_NUMBERS, int | float, "a number"),
            (_TEXTS, str, "text"),
            (_FLAGS, bool, "True or False"),
        ):
            for name in names:
                value = getattr(self, name)
                if value is None and name in _OPTIONAL:
                    continue
                if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
                    raise ConfigError(f"{_option(name)} must be {what}, not {value!r}")
        if self.data is not None and not isinstance(self.data, bytes):
            raise ConfigError(f"data must be bytes or None, not {type(self.data).__name__}")
        for name in ("retry_statuses", "headers", "cookies"):
            value = getattr(self, name)
            if not isinstance(value, tuple | list):
                raise ConfigError(f"{name} must be a tuple, not {type(value).__name__}")
            # A tuple, however given: a config is hashable (cluster workers key their pools by it).
            object.__setattr__(self, name, tuple(tuple(item) if isinstance(item, list) else item for item in value))
        if not all(isinstance(status, int) and not isinstance(status, bool) for status in self.retry_statuses):
            raise ConfigError("retry_statuses must hold whole numbers (HTTP statuses)")
        for name in ("headers", "cookies"):
            for pair in getattr(self, name):
                if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                    raise ConfigError(f"{name} must hold (name, value) pairs of text, not {pair!r}")

    def _validate(self) -> None:
        for name in ("workers", "pool_connections", "pool_maxsize", "max_bytes", "reorder_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_option(name)} must be at least 1")
        for name in ("retries", "max_redirects"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_option(name)} must be 0 or more")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_option(name)} must be more than 0 seconds")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError("--max-time must be more than 0 seconds")
        for name in _SECONDS:
            value = getattr(self, name)
            if value is not None and value > MAX_SECONDS:
                raise ConfigError(f"{_option(name)} must be at most {MAX_SECONDS:.0f} seconds (about 31 years)")
        for name in ("rate", "per_host_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"{_option(name)} must be more than 0 requests per second")
            if value is not None and 1 / value > MAX_SECONDS:
                raise ConfigError(f"{_option(name)} must be at least one request per {MAX_SECONDS:.0f} seconds")
        if self.per_host_concurrency is not None and self.per_host_concurrency < 1:
            raise ConfigError("--per-host-concurrency must be at least 1")
        for name in ("backoff_factor", "max_retry_wait"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{_option(name)} must be 0 or more")
        for status in self.retry_statuses:
            if not 100 <= status <= 599:
                raise ConfigError(f"--retry-status {status} is not an HTTP status (100-599)")
        if not _TOKEN.match(self.method):
            raise ConfigError(f"--method {self.method!r} is not a valid HTTP method")
        for name, value in self.headers:
            if not _TOKEN.match(name):
                raise ConfigError(f"header name {name!r} is not valid: use -H 'Name: value'")
            if any(ch in value for ch in "\r\n\0"):
                raise ConfigError(f"header {name!r} contains a line break or NUL byte")
            if not _latin1(value):
                raise ConfigError(f"header {name!r}: {_NOT_LATIN1}")
        if any(ch in self.user_agent for ch in "\r\n\0"):
            raise ConfigError("--user-agent contains a line break or NUL byte")
        if not _latin1(self.user_agent):
            raise ConfigError(f"--user-agent: {_NOT_LATIN1}")
        if self.default_scheme not in FETCHABLE_SCHEMES:
            raise ConfigError("--default-scheme must be http or https")
        if self.base_url is not None:
            if not absolute_http(self.base_url):
                raise ConfigError(
                    f"--base-url {mask_credentials(self.base_url)!r} must be an absolute http(s) URL, "
                    "e.g. https://example.com/"
                )
        if self.ca_bundle is not None and not os.path.exists(self.ca_bundle):
            raise ConfigError(f"--ca-bundle {self.ca_bundle!r} does not exist")
        for option, path in (("--cert", self.client_cert), ("--key", self.client_key)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{option} {path!r} is not a file")
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError("--key needs --cert: the client certificate it belongs to")
        # A directory not there yet is made when the run starts (pooledfetch.engine.run).
        if self.save_dir is not None and os.path.exists(self.save_dir) and not os.path.isdir(self.save_dir):
            raise ConfigError(f"--save-dir {self.save_dir!r} is not a directory")
        if self.proxy is not None and not absolute_http(self.proxy):
            raise ConfigError(
                f"--proxy {mask_credentials(self.proxy)!r} must be an http:// or https:// URL with a host "
                "(and a valid port)"
            )
        for name, value in self.cookies:
            if not _TOKEN.match(name) or any(ch in value for ch in ";\r\n\0"):
                raise ConfigError(f"cookie {name!r} is not valid: use --cookie 'name=value'")
            if not _latin1(value):
                raise ConfigError(f"cookie {name!r}: {_NOT_LATIN1}")


# HTTP/1.1 sends header values as bytes; http.client encodes text as Latin-1, and any other
# character failed every request of the run with a UnicodeEncodeError.
_NOT_LATIN1 = "the value must be Latin-1 (ISO-8859-1) text: percent-encode other characters"


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


# The fields None may stand for (no limit, no file, none given): those whose default it is.
_OPTIONAL = frozenset(field.name for field in fields(FetchConfig) if field.default is None)


def absolute_http(url: str) -> bool:
    """An http(s) URL with a host and, if it names one, a port in range."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:  # also an unclosed [IPv6 bracket
        return False
    return parts.scheme in FETCHABLE_SCHEMES and bool(parts.hostname)


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")
