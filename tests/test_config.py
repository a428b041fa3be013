"""config: FetchConfig defaults, normalisation and validation."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from pooledfetch import config as cfg
from pooledfetch.config import FetchConfig
from pooledfetch.errors import ConfigError, ExitCode


def test_defaults():
    config = FetchConfig()
    assert config.pool_maxsize == cfg.DEFAULT_POOL_MAXSIZE
    assert config.workers == config.pool_maxsize  # workers=0 means "as many as the pool"
    assert config.max_in_flight == 2 * config.workers
    assert config.timeout == (cfg.DEFAULT_CONNECT_TIMEOUT, cfg.DEFAULT_READ_TIMEOUT)
    assert config.method == "GET"
    assert config.retry_statuses == (429, 500, 502, 503, 504)
    assert config.default_scheme == "https"
    assert config.base_url is None
    assert config.dedupe is False
    assert config.verify is True
    assert config.user_agent.startswith("pooledfetch/")


def test_workers_zero_follows_pool_maxsize():
    config = FetchConfig(pool_maxsize=7)
    assert config.workers == 7
    assert config.max_in_flight == 14


def test_explicit_workers_kept():
    config = FetchConfig(workers=3, pool_maxsize=50)
    assert config.workers == 3
    assert config.max_in_flight == 6


def test_timeout_tuple_is_connect_then_read():
    assert FetchConfig(connect_timeout=1.5, read_timeout=4).timeout == (1.5, 4)


@pytest.mark.parametrize(
    ("given", "expected"), [("get", "GET"), ("Post", "POST"), ("HEAD", "HEAD"), ("purge", "PURGE")]
)
def test_method_is_uppercased(given, expected):
    assert FetchConfig(method=given).method == expected


def test_config_is_frozen_and_picklable():
    config = FetchConfig(workers=4, headers=(("X-A", "1"),), base_url="http://127.0.0.1:8000/")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config


def test_valid_extras_are_accepted(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here")
    config = FetchConfig(
        headers=(("Accept", "application/json"), ("X-Token", "a b c")),
        base_url="https://example.com/api/",
        default_scheme="http",
        ca_bundle=str(bundle),
        retries=0,
        max_redirects=0,
        backoff_factor=0,
        max_retry_wait=0,
        retry_statuses=(100, 599),
    )
    assert config.ca_bundle == str(bundle)
    assert config.retries == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": -1}, "--workers must be at least 1"),
        ({"workers": 4, "pool_maxsize": 0}, "--pool-maxsize must be at least 1"),
        ({"workers": 4, "pool_maxsize": -3}, "--pool-maxsize must be at least 1"),
        ({"pool_connections": 0}, "--pool-connections must be at least 1"),
        ({"max_bytes": 0}, "--max-bytes must be at least 1"),
        ({"retries": -1}, "--retries must be 0 or more"),
        ({"max_redirects": -1}, "--max-redirects must be 0 or more"),
        ({"connect_timeout": 0}, "--connect-timeout must be more than 0 seconds"),
        ({"read_timeout": -1.0}, "--read-timeout must be more than 0 seconds"),
        ({"read_timeout": float("nan")}, "--read-timeout must be more than 0 seconds"),
        ({"backoff_factor": -0.5}, "--backoff-factor must be 0 or more"),
        ({"max_retry_wait": -1}, "--max-retry-wait must be 0 or more"),
        ({"retry_statuses": (500, 600)}, "--retry-status 600 is not an HTTP status (100-599)"),
        ({"retry_statuses": (99,)}, "--retry-status 99"),
        ({"method": "GE T"}, "--method 'GE T' is not a valid HTTP method"),
        ({"method": ""}, "is not a valid HTTP method"),
        ({"method": "GET\r\n"}, "is not a valid HTTP method"),
        ({"headers": (("Bad Name", "x"),)}, "header name 'Bad Name' is not valid"),
        ({"headers": (("X-A", "1\r\nX-Injected: 2"),)}, "header 'X-A' contains a line break"),
        ({"headers": (("X-A", "a\nb"),)}, "line break"),
        ({"headers": (("X-A", "a\0b"),)}, "NUL"),
        ({"user_agent": "ua\nX-Evil: 1"}, "--user-agent contains a line break"),
        ({"default_scheme": "ftp"}, "--default-scheme must be http or https"),
        ({"default_scheme": ""}, "--default-scheme must be http or https"),
        ({"base_url": "ftp://example.com/"}, "--base-url 'ftp://example.com/' must be an absolute http(s) URL"),
        ({"base_url": "example.com/api"}, "must be an absolute http(s) URL"),
        ({"base_url": "/api/"}, "must be an absolute http(s) URL"),
        ({"base_url": "http:///nohost"}, "must be an absolute http(s) URL"),
        # Past ~9.2e9 s a socket timeout overflows time_t: every request failed as `other`.
        ({"read_timeout": 1e10}, "--read-timeout must be at most 1000000000 seconds"),
        ({"connect_timeout": float("inf")}, "--connect-timeout must be at most"),
        ({"max_time": 1e10}, "--max-time must be at most"),
        ({"rate": 1e-300}, "--rate must be at least one request per 1000000000 seconds"),
        ({"per_host_rate": 1e-12}, "--per-host-rate must be at least one request per"),
        # http.client sends header text as Latin-1: anything else failed every request.
        ({"headers": (("X-U", "中文"),)}, "header 'X-U': the value must be Latin-1"),
        ({"user_agent": "中文"}, "--user-agent: the value must be Latin-1"),
        ({"cookies": (("a", "中"),)}, "cookie 'a': the value must be Latin-1"),
        # The library API takes any value: a wrong type failed deep in a request, or not at all.
        ({"workers": "2"}, "--workers must be a whole number, not '2'"),
        ({"workers": 2.5}, "--workers must be a whole number"),
        ({"workers": True}, "--workers must be a whole number"),
        ({"pool_maxsize": None}, "--pool-maxsize must be a whole number, not None"),
        ({"read_timeout": "5"}, "--read-timeout must be a number"),
        ({"method": None}, "--method must be text, not None"),
        ({"verify": "no"}, "--verify must be True or False"),
        ({"headers": ["X-A: 1"]}, "headers must hold (name, value) pairs of text"),
        ({"retry_statuses": ("500",)}, "retry_statuses must hold whole numbers"),
        ({"data": "text"}, "data must be bytes or None"),
    ],
)
def test_validation_errors(changes, message):
    with pytest.raises(ConfigError) as info:
        FetchConfig(**changes)
    assert message in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_ca_bundle(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as info:
        FetchConfig(ca_bundle=str(missing))
    assert "--ca-bundle" in str(info.value)
    assert "does not exist" in str(info.value)
    assert "nope.pem" in str(info.value)


def test_workers_zero_is_not_an_error_but_negative_is():
    assert FetchConfig(workers=0).workers == cfg.DEFAULT_POOL_MAXSIZE
    with pytest.raises(ConfigError, match="--workers"):
        FetchConfig(workers=-5)


def test_replace_revalidates():
    config = FetchConfig()
    with pytest.raises(ConfigError):
        dataclasses.replace(config, read_timeout=0)


def test_bad_pool_maxsize_with_default_workers_names_pool_maxsize():
    # BUG: __post_init__ copies pool_maxsize (0) into workers before validating, and workers is
    # checked first, so the error blames "--workers", an option the caller never set.
    with pytest.raises(ConfigError) as info:
        FetchConfig(pool_maxsize=0)
    assert "--pool-maxsize" in str(info.value)


def test_lists_are_taken_as_tuples_so_the_config_stays_hashable():
    config = FetchConfig(headers=[["X-A", "1"]], retry_statuses=[500], cookies=[("a", "b")])
    assert (config.headers, config.retry_statuses, config.cookies) == ((("X-A", "1"),), (500,), (("a", "b"),))
    assert hash(config) == hash(FetchConfig(headers=(("X-A", "1"),), retry_statuses=(500,), cookies=(("a", "b"),)))
