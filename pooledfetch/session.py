"""Build the one tuned, pooled transport a run shares across its worker threads.

Everything here is decided once, before the first request, and never mutated afterwards:
requests does not promise a thread-safe `Session` (psf/requests#2766), so sharing one is
only safe while nothing writes to it.
"""

from __future__ import annotations

import http.client
import netrc
import os
import re
import ssl
import time
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookiePolicy, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import REDIRECT_STATI
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri, select_proxy, should_bypass_proxies
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ProtocolError, ResponseError, SSLError
from urllib3.response import BaseHTTPResponse
from urllib3.util import SKIP_HEADER, SKIPPABLE_HEADERS, Retry, Timeout, make_headers, parse_url

from pooledfetch.config import FETCHABLE_SCHEMES, FetchConfig, absolute_http
from pooledfetch.errors import ConfigError
from pooledfetch.pools import ConnectionBudget, Deadlines, PoolAccounting, pool_classes
from pooledfetch.sources import normalize_url
from pooledfetch.text import mask_credentials
from pooledfetch.tls import SharedContext

# Idempotent methods only: retrying a POST could repeat its side effects.
RETRYABLE_METHODS = Retry.DEFAULT_ALLOWED_METHODS
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_BODY_HEADERS = ("Content-Length", "Content-Type", "Transfer-Encoding")
_CREDENTIAL_HEADERS = ("Cookie", "Proxy-Authorization")


class DeadlineExceeded(Exception):
    """The URL's --max-time ran out."""


class BadRedirect(Exception):
    """A Location the fetcher refuses to follow (another scheme, no host, unparsable)."""


def _location(raw: BaseHTTPResponse) -> str:
    """A redirect's one Location, as text. RFC 9110 allows one: two that differ are refused (as
    browsers do), not joined with a comma; so is an empty one, which would lead back to the same
    URL until --max-redirects. Bytes that are not UTF-8 are percent-encoded, as curl does."""
    values = {value.strip() for value in raw.headers.getlist("Location")}
    if len(values) > 1:
        raise BadRedirect(f"redirect not followed: {len(values)} different Location headers")
    location = values.pop() if values else ""
    if not location:
        raise BadRedirect("redirect not followed: an empty Location header")
    sent = location.encode("iso-8859-1")  # how http.client decoded the bytes that came
    try:
        return sent.decode("utf-8")
    except UnicodeDecodeError:
        return quote(sent, safe=_URL_PUNCTUATION)


# What a Location may hold as it is: an existing %XX escape and the URL's own punctuation.
_URL_PUNCTUATION = "%!#$&'()*+,/:;=?@[]~"


class CappedRetry(Retry):
    """urllib3's Retry, except that it gives up rather than wait past a limit.

    The limit is `max_wait` (--max-retry-wait) and, when the worker thread has one, its URL's
    deadline (--max-time): a `Retry-After: 86400` would otherwise park a worker for a day.
    Giving up on a status returns that 429/503 response as the row (`raise_on_status=False`);
    giving up after an error reports that error.
    """

    max_wait: float = 60.0
    deadlines: Deadlines | None = None
    # Told of each try urllib3 is about to retry (its response, or None after an error), before
    # it waits: --pause-hosts pauses the host for every worker during that wait, not only once
    # the retries are over. It answers until when the host is paused: the retry waits that out.
    observer: RetryObserver | None = None
    # Until when (time.monotonic()) this retry's sleep lasts at least: its host's pause.
    held_until: float | None = None

    def new(self, **kw: Any) -> CappedRetry:
        retry = super().new(**kw)
        retry.max_wait = self.max_wait
        retry.deadlines = self.deadlines
        retry.observer = self.observer
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        """Only the statuses of --retry-status: urllib3 also retries any 413, 429 or 503 that
        carries a Retry-After, so `--retry-status 500` (or none) still retried those."""
        return status_code in (self.status_forcelist or ()) and super().is_retry(method, status_code, has_retry_after)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        super().sleep(response)
        if self.held_until is not None and (remaining := self.held_until - time.monotonic()) > 0:
            time.sleep(remaining)

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        """As urllib3's, except that a Retry-After it cannot read (`soon`, `1.5`) counts as none:
        the backoff applies, and the 429/503 is not lost to an InvalidHeader error."""
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> CappedRetry:
        held_until = self.observer(response) if self.observer is not None else None
        if error is not None and _fails_alike(error):
            given_up = RetriesCutShort(_pool, url, error)
            given_up.made = len(self.history)
            raise given_up
        following = super().increment(method, url, response, error, _pool, _stacktrace)
        retry_after = self.get_retry_after(response) if response is not None else None
        wait = retry_after if retry_after is not None and self.respect_retry_after_header else None
        if wait is None:
            wait = following.get_backoff_time()
        if held_until is not None:
            # Another URL's 429/503 paused the host: no retry goes to it before the pause ends.
            wait = max(wait, held_until - time.monotonic())
            following.held_until = held_until
        deadline = self.deadlines.current() if self.deadlines is not None else None
        if wait > self.max_wait:
            reason = f"a retry wait of {wait:.0f}s exceeds --max-retry-wait {self.max_wait:g}s"
        elif deadline is not None and time.monotonic() + wait >= deadline:
            reason = "no time left for another try before --max-time"
        else:
            return following
        cut_short = RetriesCutShort(_pool, url, error or ResponseError(reason))
        cut_short.made = len(self.history)
        raise cut_short


def _as_sent(url: str | None) -> str:
    """`url` as the request line will carry it: urllib3 removes dot segments from the path, and
    requoting can make new ones (`%2e%2e` is `..`). The row's final_url (and --save-dir's file
    name) then name what was asked for, not `/x/../ok` for a request for `/ok`."""
    assert url is not None
    return str(parse_url(url).url)


def _server(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)


DEFAULT_PORTS = {"http": 80, "https": 443}


def _fails_alike(error: Exception) -> bool:
    """An error that a request sent again would meet again, so it is reported at once rather
    than after each retry's backoff (curl does not retry these either): a certificate that does
    not verify, or a response that breaks HTTP (a bad status line, a malformed or too long header
    line, too many headers). A connection reset or closed, as a stale keep-alive one is, is not."""
    if isinstance(error, SSLError):
        return any(isinstance(cause, ssl.SSLCertVerificationError) for cause in error.args)
    if isinstance(error, ProtocolError) and len(error.args) == 2:
        cause = error.args[1]
        return isinstance(cause, http.client.HTTPException) and not isinstance(cause, ConnectionError)
    return False


class RetriesCutShort(MaxRetryError):
    """Given up before the retries ran out: a wait past --max-retry-wait or --max-time, or an
    error that would come again (_fails_alike)."""

    made = 0  # the retries made before


RetryObserver = Callable[[BaseHTTPResponse | None], float | None]


class _NoCookies(DefaultCookiePolicy):
    """One server's Set-Cookie must never ride along to unrelated URLs of the same run."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


def build_headers(config: FetchConfig) -> CaseInsensitiveDict[str | bytes]:
    headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(
        {
            "User-Agent": config.user_agent,
            # Only the codings this installation can decode (gzip, deflate; br and zstd if present).
            "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
            "Accept": "*/*",
            "Connection": "keep-alive",
        }
    )
    if config.cookies:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in config.cookies)
    for name, value in config.headers:
        if value:
            headers[name] = value
        elif name.lower() in SKIPPABLE_HEADERS:
            # urllib3 would fill these in itself; SKIP_HEADER makes it send none.
            headers[name] = SKIP_HEADER
        else:
            # curl's convention: `-H 'Name:'` removes a default header.
            headers.pop(name, None)
    return headers


# URLs that requests' prepare_url returns unchanged (but for a "/" when the path is empty): a
# lowercase http(s) scheme and host name or IPv4 address, a port without a leading zero, and a
# path and query made only of characters requote_uri keeps as they are. No "%" (requoting would
# rewrite escapes of unreserved characters), no fragment, no userinfo, no dot segments (urllib3
# removes them). prepare_url costs ~16 µs a URL; most URLs in a bulk list look like this.
_CANONICAL_URL = re.compile(
    r"(?P<origin>https?://[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[1-9][0-9]{0,4})?)"
    r"(?P<rest>[/?](?!.*/\.)[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)?"
)


def canonical_url(url: str) -> str | None:
    """`url` as requests would prepare it, when it is already in canonical form; else None."""
    match = _CANONICAL_URL.fullmatch(url)
    if match is None or url.endswith("?"):  # requests drops an empty query, "?" and all
        return None
    rest = match.group("rest") or "/"
    return match.group("origin") + (rest if rest.startswith("/") else "/" + rest)


def load_netrc(config: FetchConfig) -> netrc.netrc | None:
    """With --netrc, the file requests would use: $NETRC, else ~/.netrc or ~/_netrc; None when
    there is none. One that cannot be read raises ConfigError."""
    if not config.netrc:
        return None
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        path = os.path.expanduser(candidate)
        if os.path.exists(path):
            try:
                return netrc.netrc(path)
            except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot use --netrc file {path!r}: {exc}") from exc
    return None


def environment_proxies(config: FetchConfig) -> dict[str, str]:
    """The proxies HTTP_PROXY, HTTPS_PROXY and ALL_PROXY name (none with --proxy or
    --no-env-proxy). One that is no http(s) proxy URL raises ConfigError: requests would fail
    every URL with it as an `invalid_url`, and --resume would then count them done."""
    if not config.env_proxy or config.proxy is not None:
        return {}
    proxies = {scheme: url for scheme, url in urllib.request.getproxies().items() if scheme in ("http", "https", "all")}
    for scheme, url in proxies.items():
        # requests reads a proxy without a scheme as http:// (prepend_scheme_if_needed).
        if not absolute_http(url if "://" in url else "http://" + url):
            raise ConfigError(
                f"the {scheme}_proxy environment variable ({mask_credentials(url)!r}) is not an http:// or "
                "https:// proxy URL with a host and a valid port: fix it, or give --no-env-proxy"
            )
    return proxies


class _SharedTlsAdapter(HTTPAdapter):
    """An HTTPAdapter whose pools, proxied ones included, share one TLS context (pooledfetch.tls)
    and are built from the run's pool classes (pooledfetch.pools), so a proxied connection is
    accounted (opened, reused, time to connect) and budgeted like any other.
    """

    def __init__(self, tls: SharedContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls = tls

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, settings = super().build_connection_pool_key_attributes(request, verify, cert)
        return host, self.tls.pool_settings(settings, host["scheme"])

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # A SOCKS manager's pools make SOCKS connections of their own: those keep urllib3's classes.
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = self.poolmanager.pool_classes_by_scheme
        return manager

    def pool_count(self) -> int:
        """The pools kept, one per origin (a proxy's tunnels and the proxy itself included)."""
        # list(): another thread may be adding a proxy manager (a dict copy holds the GIL throughout).
        return len(self.poolmanager.pools) + sum(len(manager.pools) for manager in list(self.proxy_manager.values()))


class Transport:
    """The shared session, its one adapter and everything each request reuses."""

    def __init__(
        self, config: FetchConfig, accounting: PoolAccounting | None = None, tls_context: ssl.SSLContext | None = None
    ) -> None:
        """`tls_context`: what tls.check_files(config) gave, if the caller has it already."""
        self.config = config
        self.accounting = accounting or PoolAccounting()
        # Each worker thread's --max-time deadline, read by the shared CappedRetry and the connections.
        self.deadlines = Deadlines()
        self.session = requests.Session()
        # Environment settings are resolved here once, not re-read per request.
        self.session.trust_env = False
        policy: CookiePolicy = _NoCookies()
        self.session.cookies.set_policy(policy)
        self._retry_policy = self._retry()
        self.adapter = _SharedTlsAdapter(
            SharedContext(config, tls_context),
            pool_connections=config.pool_connections,
            pool_maxsize=config.pool_maxsize,
            max_retries=self._retry_policy,
            pool_block=config.pool_block,
        )
        # The connect timeout also bounds the wait for a free pooled connection.
        self.budget = ConnectionBudget(
            config.workers, hosts=self.adapter.pool_count, limit=config.workers + config.pool_connections
        )
        self.adapter.poolmanager.pool_classes_by_scheme = pool_classes(
            config.connect_timeout, self.accounting, self.deadlines, self.budget
        )
        for scheme in FETCHABLE_SCHEMES:
            self.session.mount(f"{scheme}://", self.adapter)
        self.headers = build_headers(config)
        self._wire_headers = dict(self.headers)
        self._pools: dict[tuple[str, str, int | None], HTTPConnectionPool] = {}
        self._body_needed = config.data is not None or config.method not in ("GET", "HEAD")
        self._timeout = Timeout(connect=config.connect_timeout, read=config.read_timeout)
        # An explicit value, so a REQUESTS_CA_BUNDLE in the environment cannot override -k/--ca-bundle.
        self.verify = config.tls_verify
        # A pool's settings depend on --insecure/--ca-bundle/--cert only, not the URL (an http
        # URL asks for them without the TLS context, which _pool_for adds for https).
        probe = requests.PreparedRequest()
        probe.prepare_url("http://pool-settings.invalid/", None)
        self._pool_settings = self.adapter.build_connection_pool_key_attributes(
            probe, self.verify, config.client_certificate
        )[1]
        # Read once: requests would re-read ~/.netrc for every request (and by default at all).
        self._netrc = load_netrc(config)
        # Read once: an explicit --proxy beats the environment, and --no-env-proxy ignores it.
        self.env_proxies = environment_proxies(config)

    def _retry(self) -> CappedRetry:
        retry = CappedRetry(
            total=self.config.retries,
            backoff_factor=self.config.backoff_factor,
            backoff_max=self.config.max_retry_wait,
            status_forcelist=self.config.retry_statuses,
            allowed_methods=RETRYABLE_METHODS,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        retry.max_wait = self.config.max_retry_wait
        retry.deadlines = self.deadlines
        return retry

    def proxies_for(self, url: str) -> dict[str, str]:
        if self.config.proxy is not None:
            return {urlsplit(url).scheme: self.config.proxy}
        if not self.env_proxies or should_bypass_proxies(url, no_proxy=None):
            return {}
        proxy = select_proxy(url, self.env_proxies)
        return {urlsplit(url).scheme: proxy} if proxy else {}

    def prepare(self, url: str) -> requests.PreparedRequest:
        """Fill a PreparedRequest directly: Request.prepare() spends ~60 µs on hooks and cookies.

        The shared header dict is used as is unless this request adds to it: nothing downstream
        (urllib3, http.client) writes to the headers it is given.
        """
        prepared = requests.PreparedRequest()
        prepared.method = self.config.method
        prepared.url = canonical_url(url)
        if prepared.url is None:  # it has no dot segment either
            prepared.prepare_url(url, None)  # IDNA, requoting, validation
            prepared.url = _as_sent(prepared.url)
        prepared.headers = self.headers
        if self._body_needed:
            prepared.headers = self.headers.copy()
            prepared.prepare_body(self.config.data, None)
        if "@" in url:
            prepared.headers = prepared.headers.copy()
            prepared.prepare_auth(None, url)
        self._apply_netrc(prepared)
        return prepared

    def _apply_netrc(self, prepared: requests.PreparedRequest) -> None:
        """With --netrc, credentials for the request's host, unless it already carries some."""
        if self._netrc is None or "Authorization" in prepared.headers or prepared.url is None:
            return
        entry = self._netrc.authenticators(urlsplit(prepared.url).hostname or "")
        if entry is not None and any(entry):
            login, _, password = entry
            prepared.headers = prepared.headers.copy()
            prepared.prepare_auth((login, password or ""))

    def send(
        self, prepared: requests.PreparedRequest, deadline: float | None = None, observer: RetryObserver | None = None
    ) -> BaseHTTPResponse:
        """Send one hop through the adapter's pools; the body is left to stream.

        This is the adapter's own pool path (`get_connection_with_tls_context` + `urlopen`, as
        `HTTPAdapter.send` does) without building a requests Response for every URL: that costs
        ~40 µs a request, a fifth of urllib3's whole cost. Exceptions stay urllib3's, classified
        in results.classify. With a `deadline` (time.monotonic()), no timeout or retry wait runs past it.
        An `observer` sees every response urllib3 retries, before its wait.
        """
        assert prepared.url is not None and prepared.method is not None
        timeout = self._timeout
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded
            connect, read = self.config.timeout
            timeout = Timeout(connect=min(connect, remaining), read=min(read, remaining))
        self.deadlines.set(deadline)
        proxies = self.proxies_for(prepared.url)
        if proxies:
            pool = self.adapter.get_connection_with_tls_context(
                prepared, self.verify, proxies=proxies, cert=self.config.client_certificate
            )
            target = self.adapter.request_url(prepared, proxies)
        else:
            # What get_connection_with_tls_context does without a proxy, with one URL parse
            # instead of six and the TLS pool settings worked out once.
            parts = parse_url(prepared.url)
            assert parts.host is not None and parts.scheme is not None
            pool = self._pool_for(parts.scheme, parts.host, parts.port)
            target = parts.request_uri
        # urllib3 copies the headers of every request: a plain dict copies ~10x faster than
        # requests' CaseInsensitiveDict, and case no longer matters past this point.
        headers = self._wire_headers if prepared.headers is self.headers else dict(prepared.headers)
        return pool.urlopen(
            method=prepared.method,
            url=target,
            body=prepared.body,  # type: ignore[arg-type]
            headers=headers,  # type: ignore[arg-type]
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=self._retries_told(observer),
            timeout=timeout,
            chunked=not (prepared.body is None or "Content-Length" in prepared.headers),
        )

    def _pool_for(self, scheme: str, host: str, port: int | None) -> HTTPConnectionPool:
        """The pool for an origin: the pool manager's, remembered per origin.

        connection_from_host() builds and normalises a pool key on every call (~10 µs, a twentieth
        of a whole request). Its LRU (--pool-connections) must still see every use once it is
        full, so the memo is only read while the manager has room for every origin; a pool it
        has closed (evicted, or at the end of the run) is looked up again.
        """
        origin = (scheme, host, port)
        pool = self._pools.get(origin)
        if pool is None or pool.pool is None or len(self.adapter.poolmanager.pools) >= self.config.pool_connections:
            settings = self.adapter.tls.pool_settings(self._pool_settings, scheme)
            pool = self.adapter.poolmanager.connection_from_host(host, port, scheme, pool_kwargs=settings)
            if len(self._pools) >= self.config.pool_connections:
                self._pools.clear()  # origins of pools long evicted
            self._pools[origin] = pool
        return pool

    def _retries_told(self, observer: RetryObserver | None) -> CappedRetry:
        if observer is None:
            return self._retry_policy
        # A copy per request (a few µs), made only when someone listens.
        retries = self._retry_policy.new()
        retries.observer = observer
        return retries

    def redirect_response(self, prepared: requests.PreparedRequest, raw: BaseHTTPResponse) -> requests.Response | None:
        """A requests Response for a redirect (a 3xx with a Location), which its helpers need; else None."""
        if raw.status not in REDIRECT_STATI or "location" not in raw.headers:
            return None
        return self.adapter.build_response(prepared, raw)

    def redirect_request(
        self, previous: requests.PreparedRequest, response: requests.Response
    ) -> requests.PreparedRequest:
        """The next hop, built with requests' own helpers so its credential stripping applies."""
        assert previous.url is not None
        location = _location(response.raw)
        if location.startswith("//"):
            location = f"{urlsplit(previous.url).scheme}:{location}"
        absolute = location if _HAS_SCHEME.match(location) else urljoin(previous.url, location)
        # The same rules as for input lines: http(s) only, a host, a usable port.
        url, reason = normalize_url(absolute, None, "https")
        if url is None:
            raise BadRedirect(f"redirect not followed: {reason}: {location[:200]!r}")
        url = requote_uri(url)
        following = previous.copy()
        following.prepare_url(url, None)
        following.url = _as_sent(following.url)
        self.session.rebuild_method(following, response)
        if response.status_code not in (307, 308):
            for header in _BODY_HEADERS:
                following.headers.pop(header, None)
            following.body = None
        assert following.url is not None
        if self.session.should_strip_auth(previous.url, following.url):
            for header in _CREDENTIAL_HEADERS:
                following.headers.pop(header, None)
        if _server(previous.url) != _server(following.url):
            # A -H Host named the first server's virtual host: another gets its own, as from curl.
            following.headers.pop("Host", None)
        self.session.rebuild_auth(following, response)
        self._apply_netrc(following)
        self.session.rebuild_proxies(following, self.proxies_for(following.url))
        return following

    def close(self) -> None:
        self.deadlines.stop()
        # urllib3's pool manager forgets its pools without closing them (their connections close
        # when the pools are collected): close them now, the worker process may live on.
        manager = self.adapter.poolmanager
        pools = [*self._pools.values(), *(manager.pools[key] for key in manager.pools.keys())]
        self.session.close()
        for pool in pools:
            pool.close()  # a second close of the same pool does nothing
