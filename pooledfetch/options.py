"""Every option of the `pooledfetch` command, with the parsing and checks of their values.

Kept apart from cli.py, which turns the values into a FetchConfig and a run: one decorator,
`fetch_options`, stacks them all on the command, in the order `--help` lists them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pooledfetch import __version__
from pooledfetch import config as cfg

F = TypeVar("F", bound=Callable[..., Any])

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def size(value: str) -> int:
    """`100MB`, `512k`, `1GiB` or a plain number of bytes."""
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a size such as 1048576, 512k, 100MB or 1GiB")
    number, unit, suffix = match.groups()
    base = 1024 if suffix.lower().startswith("i") else 1000
    return int(float(number) * base ** _SIZE_POWERS[unit.lower()])


def header(value: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon or not name.strip():
        raise click.BadParameter(f"-H {value!r} is not 'Name: value' (use 'Name:' to remove a default header)")
    return name.strip(), rest.strip()


def cookie(value: str) -> tuple[str, str]:
    name, equals, rest = value.partition("=")
    if not equals or not name.strip():
        raise click.BadParameter(f"--cookie {value!r} is not 'name=value'")
    return name.strip(), rest.strip()


def statuses(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of status codes") from None


def body(value: str | None) -> bytes | None:
    if value is None:
        return None
    if not value.startswith("@"):
        return value.encode("utf-8")
    path = value[1:]
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read body file {path!r}: {exc.strerror}") from None


def read_config_file(ctx: click.Context, _: click.Parameter, path: str | None) -> str | None:
    """Eager: the file's values become defaults before any other option is read."""
    if path is not None:
        from pooledfetch.configfile import load_defaults

        ctx.default_map = {**(ctx.default_map or {}), **load_defaults(path, ctx.command)}
    return path


def change_kinds(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    from pooledfetch.baseline import CHANGE_KINDS

    kinds = tuple(part.strip() for part in value.split(",") if part.strip())
    if not kinds or any(kind not in CHANGE_KINDS for kind in kinds):
        raise click.BadParameter(f"{value!r}: the change kinds are {', '.join(CHANGE_KINDS)}")
    return kinds


def processes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """`--processes N`, or `auto` for one per CPU core."""
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_PROCESSES:
        raise click.BadParameter(f"{value!r} is not a number of processes (1 to {MAX_PROCESSES}) or 'auto'")
    return int(value)


class FiniteRange(click.FloatRange):
    """A FloatRange that refuses inf and nan: a timeout of inf overflowed a timestamp in every
    request, and nan passes every comparison."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class OnePerLine(click.types.StringParamType):
    """Text, given one value per line in its POOLEDFETCH_ variable: a header value or a path may
    hold spaces, which click's default splits on."""

    envvar_list_splitter = "\n"

    def split_envvar_value(self, rv: str) -> list[str]:
        # A trailing newline (`$(cat headers.txt)` keeps none, a heredoc does) is no empty value.
        return [line for line in super().split_envvar_value(rv) if line.strip()]


ONE_PER_LINE = OnePerLine()


# Threads per process (--workers), and connections per host (--pool-maxsize, whose pools hold
# a slot for each): far past what one process can use, short of what exhausts its memory.
MAX_THREADS = 10_000
# Worker processes (--processes): a LocalCluster of more is no longer "this machine".
MAX_PROCESSES = 1024


_DECLARATIONS: list[Callable[[Any], Any]] = [
    click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True)),
    click.option("--demo", is_flag=True, help="Start the built-in local server and fetch the sample list from it."),
    click.option(
        "-o",
        "--output",
        "outputs",
        multiple=True,
        type=ONE_PER_LINE,
        metavar="PATH",
        help="Export results (.csv, .json, .jsonl/.ndjson; '-' is JSONL on stdout). Repeatable.",
    ),
    click.option(
        "--format",
        "export_format",
        type=click.Choice(["csv", "json", "jsonl"]),
        help="Export format for every -o, instead of the file extension.",
    ),
    click.option("-q", "--quiet", is_flag=True, help="No per-URL lines and no summary."),
    click.option(
        "-w",
        "--workers",
        type=click.IntRange(min=1, max=MAX_THREADS),
        help="Worker threads.  [default: --pool-maxsize]",
    ),
    click.option(
        "--pool-connections",
        type=click.IntRange(min=1),
        default=cfg.DEFAULT_POOL_CONNECTIONS,
        show_default=True,
        help="Per-host connection pools kept (an LRU): more hosts than this churn connections.",
    ),
    click.option(
        "--pool-maxsize",
        type=click.IntRange(min=1, max=MAX_THREADS),
        default=cfg.DEFAULT_POOL_MAXSIZE,
        show_default=True,
        help="Connections kept open per host.",
    ),
    click.option(
        "--pool-block/--no-pool-block",
        default=True,
        show_default=True,
        help="Wait for a pooled connection instead of opening (and then discarding) extra ones.",
    ),
    click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=cfg.DEFAULT_RETRIES,
        show_default=True,
        help="Retries per request (connection errors and --retry-status; idempotent methods only).",
    ),
    click.option(
        "--backoff-factor",
        type=FiniteRange(min=0),
        default=cfg.DEFAULT_BACKOFF_FACTOR,
        show_default=True,
        help="Exponential backoff between retries: factor × 2^(retry-1) seconds.",
    ),
    click.option(
        "--retry-status",
        default=",".join(map(str, cfg.DEFAULT_RETRY_STATUSES)),
        show_default=True,
        metavar="CODES",
        help="Comma-separated statuses to retry (Retry-After is honoured).",
    ),
    click.option(
        "--max-retry-wait",
        type=FiniteRange(min=0),
        default=cfg.DEFAULT_MAX_RETRY_WAIT,
        show_default=True,
        metavar="S",
        help="Longest wait before a retry; a longer Retry-After gives up with that response.",
    ),
    click.option(
        "--connect-timeout",
        type=FiniteRange(min=0, min_open=True),
        metavar="S",
        help="Seconds to connect (also the longest wait for a free pooled connection)."
        f"  [default: {cfg.DEFAULT_CONNECT_TIMEOUT:g}]",
    ),
    click.option(
        "--read-timeout",
        type=FiniteRange(min=0, min_open=True),
        metavar="S",
        help=f"Seconds of silence allowed between bytes from the server.  [default: {cfg.DEFAULT_READ_TIMEOUT:g}]",
    ),
    click.option(
        "--timeout",
        type=FiniteRange(min=0, min_open=True),
        metavar="S",
        help="Set both --connect-timeout and --read-timeout.",
    ),
    click.option(
        "--max-time",
        type=FiniteRange(min=0, min_open=True),
        metavar="S",
        help="Deadline per URL: connect, redirects, retries and their waits, and the body (like curl -m).",
    ),
    click.option(
        "--rate",
        type=FiniteRange(min=0, min_open=True),
        metavar="N",
        help="At most N requests per second overall, evenly spaced (each redirect hop counts).",
    ),
    click.option(
        "--per-host-concurrency",
        type=click.IntRange(min=1),
        metavar="N",
        help="At most N requests in flight to any one host (host:port).  [default: no limit]",
    ),
    click.option(
        "--per-host-rate",
        type=FiniteRange(min=0, min_open=True),
        metavar="N",
        help="At most N requests per second to any one host, evenly spaced.",
    ),
    click.option(
        "--pause-hosts",
        is_flag=True,
        help="A 429/503 with Retry-After pauses its host for every worker (at most --max-retry-wait).",
    ),
    click.option("-X", "--method", help="HTTP method.  [default: GET, or POST with --data]"),
    click.option("-d", "--data", metavar="TEXT|@FILE", help="Request body, or @FILE to send a file's bytes."),
    click.option(
        "-H",
        "--header",
        "headers",
        multiple=True,
        type=ONE_PER_LINE,
        metavar="'NAME: VALUE'",
        help="Add or override a request header; 'Name:' removes a default one. Repeatable.",
    ),
    click.option("-A", "--user-agent", default=cfg.DEFAULT_USER_AGENT, show_default=True),
    click.option("--max-redirects", type=click.IntRange(min=0), default=cfg.DEFAULT_MAX_REDIRECTS, show_default=True),
    click.option("--no-follow", is_flag=True, help="Do not follow redirects: report the 3xx itself."),
    click.option(
        "-b",
        "--cookie",
        "cookies",
        multiple=True,
        type=ONE_PER_LINE,
        metavar="'NAME=VALUE'",
        help="Send this cookie with every request (never to another host on a redirect). Repeatable.",
    ),
    click.option("--cert", "client_cert", type=click.Path(dir_okay=False), help="Client certificate (PEM) for TLS."),
    click.option("--key", "client_key", type=click.Path(dir_okay=False), help="Private key of --cert, if not in it."),
    click.option(
        "--save-dir",
        type=click.Path(file_okay=False),
        help="Save each body in this directory (created if missing), named by index, host and path.",
    ),
    click.option("-x", "--proxy", metavar="URL", help="Send every request through this HTTP(S) proxy."),
    click.option("--no-env-proxy", is_flag=True, help="Ignore HTTP_PROXY/HTTPS_PROXY/NO_PROXY from the environment."),
    click.option("-k", "--insecure", is_flag=True, help="Do not verify TLS certificates."),
    click.option(
        "--ca-bundle", type=click.Path(exists=True), help="CA certificates (file or directory) to verify TLS with."
    ),
    click.option(
        "--max-bytes",
        default=f"{cfg.DEFAULT_MAX_BYTES // 1000**2}MB",
        show_default=True,
        metavar="SIZE",
        help="Stop reading a body past this size (decoded) and report body_too_large.",
    ),
    click.option("--base-url", metavar="URL", help="Resolve relative lines (/path, path) against this URL."),
    click.option(
        "--default-scheme",
        type=click.Choice(["http", "https"]),
        default="https",
        show_default=True,
        help="Scheme for lines that start with a host (example.com/a).",
    ),
    click.option(
        "--column",
        metavar="NAME|N",
        help="The column (CSV/TSV: a name or a 1-based number) or JSONL field holding the URLs.  [default: url]",
    ),
    click.option(
        "--input-format",
        type=click.Choice(["csv", "tsv", "jsonl", "lines"]),
        help="Read every input (stdin too) as this format, instead of by file extension.",
    ),
    click.option(
        "--keep-order",
        is_flag=True,
        help="Write rows in input order (a slow URL holds back the rows after it; see --reorder-window).",
    ),
    click.option(
        "--reorder-window",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --keep-order: at most N URLs past the oldest unfinished one.  [default: 8 × workers]",
    ),
    click.option("--dedupe", is_flag=True, help="Skip exact repeats of a line (their index is not reused)."),
    click.option("--netrc", "use_netrc", is_flag=True, help="Send credentials from ~/.netrc (or $NETRC) per host."),
    click.option("--show-credentials", is_flag=True, help="Show user:password in URLs instead of user:***."),
    click.option(
        "--resume",
        metavar="FILE.jsonl",
        help="Skip the URLs a previous JSONL export already has rows for, and append new rows to it.",
    ),
    click.option(
        "--baseline",
        metavar="PREV.jsonl",
        help="Compare each result with a previous run's JSONL export and fill in its `change` field.",
    ),
    click.option(
        "--if-changed",
        metavar="PREV.jsonl",
        help="Send If-None-Match/If-Modified-Since from a previous JSONL export (and diff against it).",
    ),
    click.option(
        "--slower-ratio",
        type=FiniteRange(min=1),
        default=2.0,
        show_default=True,
        metavar="R",
        help="`slower` means more than R times the baseline's total time...",
    ),
    click.option(
        "--slower-ms",
        type=FiniteRange(min=0),
        default=250.0,
        show_default=True,
        metavar="MS",
        help="...and more than this many ms slower.",
    ),
    click.option(
        "--fail-on-change",
        metavar="KINDS",
        callback=lambda _context, _option, value: change_kinds(value),
        help="Exit 1 when any row has one of these comma-separated change kinds (e.g. broken,status_changed).",
    ),
    click.option("--fail-on-http-error", is_flag=True, help="Exit 1 when any URL answers 4xx or 5xx."),
    click.option("--no-live", is_flag=True, help="No live table on a terminal (it is off anyway for pipes and -q)."),
    click.option("--summary-json", metavar="PATH", help="Write the run summary as JSON (also with -q)."),
    click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors."),
    click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=read_config_file,
        help="Option defaults from a TOML file (its [tool.pooledfetch] table, or its top level).",
    ),
    click.option(
        "--processes",
        metavar="N|auto",
        callback=processes,
        help="Fetch on N worker processes of this machine (a Dask LocalCluster; auto: one per CPU core),"
        " each with --workers threads. Needs pooledfetch[dask].",
    ),
    click.option(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="Fetch on the Dask cluster at ADDRESS (tcp://host:8786). Needs pooledfetch[dask].",
    ),
    click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        metavar="N",
        help="URLs per Dask task with --processes or --dask-scheduler."
        "  [default: 512, or about 1 s of work under --rate/--per-host-rate]",
    ),
    click.version_option(__version__, "-V", "--version", prog_name="pooledfetch"),
]


def fetch_options(function: F) -> F:
    """Apply every argument and option declaration to `function`, first declared first listed."""
    for declaration in reversed(_DECLARATIONS):
        function = declaration(function)
    for param in getattr(function, "__click_params__", []):
        _name_its_variable(param)
    return function


def _name_its_variable(param: click.Parameter) -> None:
    """`POOLEDFETCH_<OPTION>` as the option is spelt (`--header`: POOLEDFETCH_HEADER), where
    click's automatic name would be the parameter's (POOLEDFETCH_HEADERS), which still works."""
    spelt = next((opt[2:] for opt in param.opts if opt.startswith("--")), None)
    if spelt is None or param.name is None or spelt.replace("-", "_") == param.name:
        return
    param.envvar = [f"POOLEDFETCH_{name.replace('-', '_').upper()}" for name in (spelt, param.name)]
