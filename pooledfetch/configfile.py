"""`--config FILE`: option defaults from a TOML file, below the command line and the environment.

The file is either a `pooledfetch.toml` whose top-level keys are options, or any TOML file with
a `[tool.pooledfetch]` table (a project's `pyproject.toml`). Keys are the long option names
(`pool-maxsize` or `pool_maxsize`), values what the command line takes; repeatable options take
a list. click applies them through its `default_map`, so the command line and
`POOLEDFETCH_<OPTION>` variables still win, and every value goes through the option's own checks.
"""

from __future__ import annotations

import datetime
import tomllib
from typing import Any

import click

# Options that make no sense as a default: they act at once, or name this file.
_NOT_FROM_A_FILE = frozenset({"help", "version", "config"})


def load_defaults(path: str, command: click.Command) -> dict[str, Any]:
    """The `default_map` for `command` from the TOML file at `path`; click.BadParameter if it is wrong."""
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path!r} is not valid TOML (UTF-8): {exc}") from None
    table = _options_table(document, path)
    names = option_names(command)
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        found = names.get(key.replace("_", "-"))
        if found is None:
            raise click.BadParameter(f"{path!r}: {key!r} is not a pooledfetch option (see pooledfetch --help)")
        parameter, negated = found
        value = _checked_value(path, key, value, parameter)
        defaults[parameter.name or key] = not value if negated else value
    return defaults


def option_names(command: click.Command) -> dict[str, tuple[click.Option, bool]]:
    """Each long option name (without `--`) → (the option it sets, whether it is the `--no-` side)."""
    names: dict[str, tuple[click.Option, bool]] = {}
    for parameter in command.params:
        if not isinstance(parameter, click.Option) or parameter.name in _NOT_FROM_A_FILE:
            continue
        for negated, opts in ((False, parameter.opts), (True, parameter.secondary_opts)):
            for opt in opts:
                if opt.startswith("--"):
                    names[opt[2:]] = (parameter, negated)
    return names


def _options_table(document: dict[str, Any], path: str) -> dict[str, Any]:
    if "tool" not in document:
        return document
    tool = document["tool"]
    table = tool.get("pooledfetch") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise click.BadParameter(f"{path!r} has a [tool] table but no [tool.pooledfetch] table")
    return table


def _checked_value(path: str, key: str, value: Any, parameter: click.Option) -> Any:
    """The value as click expects it in a default_map; the option's own checks run later.

    Those checks convert what the command line gives, text: given a TOML value instead, click's
    int() makes `workers = 3.9` 3 and `workers = true` 1, and float() of a date raised a TypeError
    click does not catch. So a number option takes a TOML number here, and nothing takes a date.
    """
    if isinstance(value, dict):
        raise click.BadParameter(f"{path!r}: {key!r} must be a value, not a table")
    if isinstance(value, datetime.date | datetime.time) or (
        isinstance(value, list) and any(isinstance(item, datetime.date | datetime.time) for item in value)
    ):
        raise click.BadParameter(f"{path!r}: {key!r} must be a number, text or true/false, not a date or time")
    if parameter.multiple:
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, list | dict) for item in values):
            raise click.BadParameter(f"{path!r}: {key!r} must be a list of values")
        return [str(item) for item in values]
    if isinstance(value, list):
        raise click.BadParameter(f"{path!r}: {key!r} takes one value, not a list")
    if parameter.is_flag and not isinstance(value, bool):
        raise click.BadParameter(f"{path!r}: {key!r} is a flag: use true or false")
    whole = isinstance(parameter.type, click.types.IntParamType)
    if whole or isinstance(parameter.type, click.types.FloatParamType):
        kinds = int if whole else int | float
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise click.BadParameter(f"{path!r}: {key!r} must be {'a whole number' if whole else 'a number'}")
    return value
