"""The `pooledfetch` command: options → FetchConfig, inputs → engine → sinks, outcome → exit code.

Heavy modules (requests, urllib3, the demo server) are imported inside the command, so
`--help` and `--version` start fast.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from pooledfetch import config as cfg
from pooledfetch import options as opts
from pooledfetch.errors import DASK_MISSING, ExitCode, ExportError, PooledFetchError

if TYPE_CHECKING:
    from rich.console import Console

    from pooledfetch.baseline import Changes
    from pooledfetch.config import FetchConfig
    from pooledfetch.engine import RunProgress
    from pooledfetch.inputs import Input
    from pooledfetch.live import LiveView
    from pooledfetch.plain import PlainLines
    from pooledfetch.results import Result
    from pooledfetch.resume import ResumeState
    from pooledfetch.session import Transport
    from pooledfetch.sink import NullView, Sink
    from pooledfetch.sources import Target
    from pooledfetch.stats import RunStats


def _stdin_is_terminal() -> bool:
    return sys.stdin is None or sys.stdin.isatty()


def _fail(message: str, code: ExitCode) -> NoReturn:
    _error_line(message)
    sys.exit(code)


def _error_line(message: str) -> None:
    click.echo(f"pooledfetch: error: {message}", err=True)


@dataclass(frozen=True)
class _Stops:
    """A run's stops: `cancel` (send nothing more) and `hurry` (nor wait for what is on the wire)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)


def _notice(message: str) -> None:
    try:
        sys.stderr.write(f"\npooledfetch: {message}\n")
    except OSError:
        pass  # a terminal that hung up: the exports still get their rows and ends


@contextmanager
def _graceful_interrupts(stops: _Stops) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM, or a hang-up): stop submitting and wind down. Second: stop
    waiting for the requests in flight; every line still gets its row. Third: quit at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stops.hurry.is_set():
            raise KeyboardInterrupt
        if stops.cancel.is_set():
            stops.hurry.set()
            _notice("interrupted again: not waiting for requests in flight (Ctrl-C again to quit at once)")
        else:
            stops.cancel.set()
            _notice("interrupted: finishing requests in flight (Ctrl-C again not to wait for them)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # Every option can also be set as POOLEDFETCH_<OPTION>, e.g. POOLEDFETCH_POOL_MAXSIZE=50.
        "auto_envvar_prefix": "POOLEDFETCH",
    }
)
@opts.fetch_options
def cli(**options: Any) -> None:
    """Fetch every URL in INPUTS (files, '-' for stdin) through one pooled HTTP session.

    \b
    Prints one line per URL: status or error class, total ms, bytes, URL.
    Exit codes: 0 every URL got an HTTP response, 1 some failed, 2 usage error, 130 interrupted.
    """
    try:
        sys.exit(_run(options))
    except PooledFetchError as exc:
        _fail(str(exc), exc.exit_code)
    except click.ClickException:
        raise
    except Exception as exc:
        if options["debug"]:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)", ExitCode.SOME_FAILED)


def _run(options: dict[str, Any]) -> ExitCode:
    from pooledfetch import tls
    from pooledfetch.config import FetchConfig
    from pooledfetch.engine import RunProgress
    from pooledfetch.errors import ConfigError
    from pooledfetch.export import open_exporter
    from pooledfetch.inputs import Input
    from pooledfetch.saving import make_save_dir
    from pooledfetch.session import Transport, environment_proxies, load_netrc
    from pooledfetch.stats import RunStats

    inputs: tuple[str, ...] = options["inputs"]
    if options["processes"] is not None and options["dask_scheduler"] is not None:
        raise click.UsageError("use --processes (a cluster on this machine) or --dask-scheduler, not both")
    clustered = options["processes"] is not None or options["dask_scheduler"] is not None
    if options["chunk_size"] is not None and not clustered:
        raise click.UsageError("--chunk-size needs --processes or --dask-scheduler")
    if clustered and importlib.util.find_spec("distributed") is None:
        # Before anything starts (the demo server): the one line, without importing Dask.
        raise ConfigError(DASK_MISSING)
    if not inputs and not options["demo"]:
        if _stdin_is_terminal():
            raise click.UsageError("no input: give a file of URLs, '-' to read stdin, or --demo to try it out")
        inputs = ("-",)
    if options["reorder_window"] is not None and not options["keep_order"]:
        raise click.UsageError("--reorder-window needs --keep-order")
    _check_files(options, inputs)
    for stream in (sys.stdout, sys.stderr):
        # What the terminal's encoding cannot hold (a URL's é under LANG=C) goes out escaped, as
        # in an export file: with strict errors one such row ended the run.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    if options["insecure"]:
        # The user asked for it once; urllib3 would otherwise warn once per connection.
        import warnings

        from urllib3.exceptions import InsecureRequestWarning

        warnings.simplefilter("ignore", InsecureRequestWarning)

    stops = _Stops()
    interrupted = False
    failures: list[ExportError] = []
    try:
        # From the start: a Ctrl-C, SIGTERM or hang-up while the exports open or a --resume file
        # is read still gives every line its row (cancelled) and every export its end.
        with _graceful_interrupts(stops), ExitStack() as stack:
            base_url = options["base_url"]
            if options["demo"]:
                from pooledfetch.demo import DemoServer

                base_url = stack.enter_context(DemoServer()).base_url
                if not options["quiet"]:
                    click.echo(f"pooledfetch: demo server at {base_url}", err=True)
            data = opts.body(options["data"])
            try:
                config = FetchConfig(
                    workers=options["workers"] or 0,
                    pool_connections=options["pool_connections"],
                    pool_maxsize=options["pool_maxsize"],
                    pool_block=options["pool_block"],
                    retries=options["retries"],
                    backoff_factor=options["backoff_factor"],
                    retry_statuses=opts.statuses(options["retry_status"]),
                    max_retry_wait=options["max_retry_wait"],
                    connect_timeout=_seconds(options, "connect_timeout", cfg.DEFAULT_CONNECT_TIMEOUT),
                    read_timeout=_seconds(options, "read_timeout", cfg.DEFAULT_READ_TIMEOUT),
                    max_time=options["max_time"],
                    method=_method(options["method"], data),
                    data=data,
                    headers=tuple(opts.header(value) for value in options["headers"]),
                    user_agent=options["user_agent"],
                    follow_redirects=not options["no_follow"],
                    max_redirects=options["max_redirects"],
                    verify=not options["insecure"],
                    ca_bundle=options["ca_bundle"],
                    max_bytes=opts.size(options["max_bytes"]),
                    base_url=base_url,
                    default_scheme=options["default_scheme"],
                    dedupe=options["dedupe"],
                    netrc=options["use_netrc"],
                    show_credentials=options["show_credentials"],
                    rate=options["rate"],
                    per_host_concurrency=options["per_host_concurrency"],
                    per_host_rate=options["per_host_rate"],
                    pause_hosts=options["pause_hosts"],
                    cookies=tuple(opts.cookie(value) for value in options["cookies"]),
                    client_cert=options["client_cert"],
                    client_key=options["client_key"],
                    proxy=options["proxy"],
                    save_dir=options["save_dir"],
                    env_proxy=not options["no_env_proxy"],
                    keep_order=options["keep_order"],
                    reorder_window=options["reorder_window"] or 0,
                )
                # Before any export opens (and truncates a previous run's file).
                tls_context = tls.check_files(config)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
            progress = RunProgress()
            # One process fetches through the TLS context loaded above: the files are read once.
            transport = None if clustered else Transport(config, progress.accounting, tls_context)
            if transport is not None:
                stack.callback(transport.close)
            else:
                # What a Transport reads from this machine's environment, checked here as one
                # process checks it: on a LocalCluster the workers would fail every URL with it.
                load_netrc(config)
                environment_proxies(config)

            # Headers are read now: a missing column is reported before any export is opened.
            source = Input(inputs, options["input_format"], options["column"])
            if config.save_dir is not None:
                make_save_dir(config.save_dir)  # before any export opens, once every other check passed
            stats = stack.enter_context(RunStats())
            # Before any export or --resume opens (and may truncate, rewrite or append to) the same file.
            changes = _open_changes(stack, options, config)
            outputs = _open_outputs(stack, options, config, stats, progress, source.names, failures, changes)
            resume_state = None
            if options["resume"]:
                from pooledfetch import resume

                resume_state = resume.load(options["resume"])
                resumed = open_exporter(options["resume"], "jsonl", append=True, input_names=source.names)
                outputs.sinks.append(stack.enter_context(resumed))

            fetcher = transport or _cluster_client(stack, options, config, stops.cancel)
            _consume(source, options["demo"], config, stops, outputs, progress, resume_state, changes, fetcher)
    except KeyboardInterrupt:
        interrupted = True
    interrupted = interrupted or stops.cancel.is_set()

    for failure in failures:
        _error_line(str(failure))
    if interrupted:
        return ExitCode.INTERRUPTED
    if failures:
        return ExitCode.SOME_FAILED
    if stats.failed or (options["fail_on_http_error"] and stats.http_errors):
        return ExitCode.SOME_FAILED
    if changes is not None and changes.has_any(options["fail_on_change"]):
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _seconds(options: dict[str, Any], name: str, default: float) -> float:
    """--connect-timeout or --read-timeout, else --timeout, else `default`. Given both, the one
    from the higher place wins (command line, environment, --config file), the specific one
    from the same place: a `read-timeout` in the config file must not beat `--timeout` typed."""
    specific, general = options[name], options["timeout"]
    if specific is None or general is None:
        return specific or general or default
    context = click.get_current_context()
    specific_rank, general_rank = (
        _SOURCE_RANKS.index(context.get_parameter_source(option)) for option in (name, "timeout")
    )
    return float(specific if specific_rank >= general_rank else general)


# Where an option's value came from, lowest first (None: not from a parameter at all).
_SOURCE_RANKS = (
    None,
    click.core.ParameterSource.DEFAULT,
    click.core.ParameterSource.DEFAULT_MAP,
    click.core.ParameterSource.ENVIRONMENT,
    click.core.ParameterSource.PROMPT,
    click.core.ParameterSource.COMMANDLINE,
)


def _method(method: str | None, data: bytes | None) -> str:
    """-X as given (an empty one is refused by FetchConfig, not taken for none), else GET, or POST with a body."""
    if method is not None:
        return method
    return "POST" if data is not None else "GET"


def _open_changes(stack: ExitStack, options: dict[str, Any], config: FetchConfig) -> Changes | None:
    """Index --baseline and --if-changed (once when they name the same file); None without either."""
    baseline_path, validators_path = options["baseline"], options["if_changed"]
    if baseline_path is None and validators_path is None:
        if options["fail_on_change"]:
            raise click.UsageError("--fail-on-change needs --baseline or --if-changed to compare with")
        return None
    from pooledfetch.baseline import Baseline, ChangeRules, Changes

    baseline = stack.enter_context(Baseline(baseline_path or validators_path))
    validators = None
    if validators_path is not None:
        same = baseline_path is None or os.path.realpath(baseline_path) == os.path.realpath(validators_path)
        validators = baseline if same else stack.enter_context(Baseline(validators_path))
    rules = ChangeRules(options["slower_ratio"], options["slower_ms"])
    return Changes(baseline, rules, validators=validators, keep_saved=config.save_dir is not None)


@dataclass
class _Outputs:
    """Where results go: every sink in order, and the view that wants a progress total.

    An export that cannot be written (a full disk) writes nothing more and its error is kept
    for the end, while the run goes on for the outputs left, as `tee` does: the rows of a long
    run are not lost to one bad file. With no output left that keeps rows, the error ends the run.
    """

    sinks: list[Sink]
    view: LiveView | NullView
    live: bool
    failures: list[ExportError]

    def write(self, result: Result) -> None:
        for sink in self.sinks:
            try:
                sink.write(result)
            except ExportError as exc:
                self._lost(sink, exc)

    def flush(self) -> None:
        for sink in self.sinks:
            try:
                sink.flush()
            except ExportError as exc:
                self._lost(sink, exc)

    def _lost(self, sink: Sink, exc: ExportError) -> None:
        self.failures.append(exc)
        # A new list: the row being written still goes to the sinks after this one.
        self.sinks = [other for other in self.sinks if other is not sink]
        if not any(other.keeps_rows for other in self.sinks):
            raise exc


def _open_outputs(
    stack: ExitStack,
    options: dict[str, Any],
    config: FetchConfig,
    stats: RunStats,
    progress: RunProgress,
    input_names: tuple[str, ...],
    failures: list[ExportError],
    changes: Changes | None = None,
) -> _Outputs:
    """Decide once what goes where: results on stdout, the live view and summary on stderr."""
    from pooledfetch.export import format_for, open_exporter
    from pooledfetch.sink import NullView

    stderr_terminal = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    stdout_on_its_terminal = _same_terminal(sys.stdout, sys.stderr)
    # JSONL rows on the terminal the view draws on would be torn by its frames, and it by them.
    rows_on_its_terminal = "-" in options["outputs"] and stdout_on_its_terminal
    live = stderr_terminal and not options["quiet"] and not options["no_live"] and not rows_on_its_terminal
    console = _stderr_console() if stderr_terminal else None

    def summarise(exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and issubclass(exc_type, PooledFetchError) and not stats.total:
            return  # nothing ran: the error is the one line to show
        # Otherwise the rows are in (a Dask scheduler lost mid-run, an input that failed part
        # way): their summary comes first, then the error's line.
        stats.close()
        if options["summary_json"]:
            from pooledfetch.summary import summary_data, write_summary_json

            try:
                write_summary_json(options["summary_json"], summary_data(stats, progress.accounting, config, changes))
            except ExportError as exc:
                failures.append(exc)  # told after the summary, as a failed export is
        if options["quiet"]:
            return
        try:
            if console is not None:
                from pooledfetch.summary import print_summary

                print_summary(console, stats, progress.accounting, config, changes)
            else:
                line = stats.summary_line()
                click.echo(line if changes is None else f"{line}; {changes.summary_line()}", err=True)
        except BrokenPipeError:
            pass  # `2>&1 | head`: stderr's reader has gone, and the run's outcome stands

    # Registered before the view is opened, so it runs after the view has cleared itself.
    stack.push(summarise)
    view: LiveView | NullView = NullView()
    sinks: list[Sink] = [stats]
    if live and console is not None:
        from pooledfetch.live import LiveView

        view = stack.enter_context(LiveView(console, stats, progress, config))
        sinks.append(view)
    for path in options["outputs"]:
        exporter = open_exporter(path, format_for(path, options["export_format"]), input_names=input_names)
        sinks.append(stack.enter_context(exporter))
    table_replaces_lines = live and stdout_on_its_terminal
    if not options["quiet"] and "-" not in options["outputs"] and not table_replaces_lines:
        sinks.append(stack.enter_context(_plain_lines()))
    return _Outputs(sinks, view, live, failures)


def _check_files(options: dict[str, Any], inputs: tuple[str, ...]) -> None:
    """Before any file opens: every export's format is known, no file is written by two outputs
    (they would truncate, interleave or overwrite each other's rows) and none is an input (an
    export would empty it before it is read)."""
    from pooledfetch.export import format_for

    for path in options["outputs"]:
        try:
            format_for(path, options["export_format"])
        except ExportError as exc:
            raise click.UsageError(str(exc)) from None
    for name in ("resume", "summary_json", "baseline", "if_changed"):
        if options[name] == "":
            raise click.UsageError(f"--{name.replace('_', '-')} needs a file name")
    if options["outputs"].count("-") > 1:
        raise click.UsageError("-o - is given twice: stdout carries one JSONL stream")
    summary = options["summary_json"]
    if summary and (os.path.isdir(summary) or not os.path.isdir(os.path.dirname(os.path.abspath(summary)))):
        raise click.UsageError(f"--summary-json {summary!r}: name a file in an existing directory")
    seen = {os.path.realpath(path): f"input {path}" for path in inputs if path != "-" and os.path.isfile(path)}
    written = [(f"-o {path}", path) for path in options["outputs"] if path != "-"]
    written += [(f"--{name.replace('_', '-')}", options[name]) for name in ("resume", "summary_json") if options[name]]
    for flag, path in written:
        if os.path.exists(path) and not os.path.isfile(path):
            continue  # /dev/null, a terminal or a pipe: not a file of rows to spoil
        where = os.path.realpath(path)
        if where in seen:
            hint = " (--resume appends the new rows to its file)" if "--resume" in (seen[where], flag) else ""
            raise click.UsageError(f"{seen[where]} and {flag} name the same file: give each its own{hint}")
        seen[where] = flag


def _stderr_console() -> Console:
    # rich is imported only when stderr is a terminal: a piped or quiet run starts faster without it.
    from rich.console import Console

    return Console(stderr=True)


def _same_terminal(first: Any, second: Any) -> bool:
    try:
        return bool(first.isatty()) and os.path.samestat(os.fstat(first.fileno()), os.fstat(second.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _plain_lines() -> PlainLines:
    from pooledfetch.plain import PlainLines

    # no-color.org: NO_COLOR set and not empty, as rich reads it for the view and the summary.
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return PlainLines(sys.stdout, colour)


def _cluster_client(
    stack: ExitStack, options: dict[str, Any], config: FetchConfig, cancel: threading.Event
) -> _ClusterClient:
    """For --processes or --dask-scheduler: a connected Dask client (kept open until the run ends)."""
    processes, scheduler = options["processes"], options["dask_scheduler"]
    if processes is not None:
        from pooledfetch import localworkers

        localworkers.start_server()  # its imports run while this process imports Dask
    from pooledfetch import cluster

    client = stack.enter_context(cluster.connect(processes, scheduler, config.connect_timeout, cancel))
    link = cluster.dashboard_link(client)
    if link is not None and not options["quiet"]:
        click.echo(f"pooledfetch: Dask dashboard at {link}", err=True)
    if scheduler is not None and not client.scheduler_info().get("workers"):
        # Chunks wait on the scheduler until a worker joins: without a word, the run looks hung.
        click.echo(
            f"pooledfetch: the Dask scheduler at {scheduler} has no workers yet; the run starts when one joins "
            f"(dask worker {scheduler} --nthreads 1)",
            err=True,
        )
    return _ClusterClient(client, options["chunk_size"])


@dataclass(frozen=True)
class _ClusterClient:
    client: Any  # distributed.Client, whose import waits until a cluster is asked for
    chunk_size: int | None


def _consume(
    source: Input,
    demo: bool,
    config: FetchConfig,
    stops: _Stops,
    outputs: _Outputs,
    progress: RunProgress,
    resume_state: ResumeState | None,
    changes: Changes | None,
    fetcher: Transport | _ClusterClient,
) -> None:
    from pooledfetch.engine import run
    from pooledfetch.sources import iter_targets

    targets: Iterable[Target]
    if demo and not source.paths:
        from pooledfetch.demo import sample_lines

        sample = sample_lines()
        targets = iter_targets(sample, config)
        count: int | None = sum(1 for line in sample if line.strip() and not line.startswith("#"))
        counter = None
    else:
        targets = source.targets(config)
        count = None
        # A total for the progress bar; with --dedupe the count would include the repeats.
        counter = source.counter() if outputs.live and not config.dedupe else None
    already = 0
    if resume_state is not None:
        # A URL the resumed file already has a row for is in this run, not missing from it.
        seen = (lambda target: changes.baseline.mark_seen(target.raw)) if changes is not None else None
        targets = resume_state.pending(targets, seen)
        already = resume_state.finished
    # Conditional requests are for reading: a POST with If-None-Match could get a 412 instead.
    if changes is not None and changes.validators is not None and config.method in ("GET", "HEAD"):
        from pooledfetch.baseline import with_conditions

        targets = with_conditions(targets, changes.validators, need_saved_file=config.save_dir is not None)
    if count is not None:
        outputs.view.set_total(count)
    if source.streams:
        from pooledfetch.feed import ReadAhead

        # Rows of finished URLs go out while a pipe or terminal waits for its next line.
        targets = ReadAhead(targets, until_end=not source.interactive)
    if isinstance(fetcher, _ClusterClient):
        from pooledfetch.cluster import run_on_cluster

        results = run_on_cluster(
            targets,
            config,
            fetcher.client,
            cancel=stops.cancel,
            hurry=stops.hurry,
            progress=progress,
            chunk_size=fetcher.chunk_size,
            idle=outputs.flush,
        )
    else:
        results = run(
            targets,
            config,
            cancel=stops.cancel,
            hurry=stops.hurry,
            progress=progress,
            transport=fetcher,
            idle=outputs.flush,
        )
    annotated = results if changes is None else changes.track(results)
    try:
        for result in annotated:
            outputs.write(result)
            if counter is not None and counter.total is not None:
                outputs.view.set_total(max(counter.total - already, 0))
                counter = None
    finally:
        results.close()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="pooledfetch")
    except SystemExit as exit_:
        abandoned = any(thread.name.startswith("pooledfetch") and thread.is_alive() for thread in threading.enumerate())
        if abandoned or exit_.code == ExitCode.INTERRUPTED:
            # Worker threads abandoned by an interrupt or an error may sit in a socket read
            # until their timeout, and a LocalCluster whose close a third Ctrl-C cut short is
            # closed again by Dask's exit handler, slowly (its workers end with this process
            # anyway). The exports are closed and the summary printed: nothing is left to wait for.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_.code if isinstance(exit_.code, int) else ExitCode.SOME_FAILED)
        # What is left dies with the process: frozen, it is not walked by the interpreter's last
        # collections (with Dask loaded, a cluster run's exit took ~85 ms, ~25 ms frozen).
        gc.freeze()
        raise
