"""The exception tree and exit codes users and scripts rely on.

    PooledFetchError        anything pooledfetch reports as one clear line
     ├── ConfigError        an option value or combination that cannot work (exit 2)
     ├── InputError         an input file that cannot be opened or read (exit 2)
     ├── ExportError        an export that cannot be opened or written (exit 1)
     └── ClusterError       a Dask scheduler that cannot be reached, or was lost mid-run (exit 1)

Per-URL failures are never exceptions: they become `Result` rows with an error class.
"""

from __future__ import annotations

from enum import IntEnum

# What asking for a cluster says where Dask is not installed.
DASK_MISSING = "--processes and --dask-scheduler need Dask: pip install 'pooledfetch[dask]'"


class ExitCode(IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


class PooledFetchError(Exception):
    exit_code: ExitCode = ExitCode.SOME_FAILED


class ConfigError(PooledFetchError):
    exit_code = ExitCode.USAGE


class InputError(PooledFetchError):
    exit_code = ExitCode.USAGE


class ExportError(PooledFetchError):
    exit_code = ExitCode.SOME_FAILED


class ClusterError(PooledFetchError):
    exit_code = ExitCode.SOME_FAILED
