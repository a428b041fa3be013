"""--save-dir: each body saved while it streams, under a safe, deterministic name in the directory.

The name is built from the row's index and a sanitised host and path only: nothing a server
sends (Content-Disposition, a redirect's Location) can choose it, and with every character but
letters, digits, `.`, `_` and `-` replaced, no name can climb out of the directory.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from pooledfetch.errors import ConfigError

MAX_STEM = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
PARTIAL_SUFFIX = ".part"
# O_EXCL already refuses a symlink at the name; O_NOFOLLOW says so where the OS has it.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SaveError(Exception):
    """A body could not be written to --save-dir."""


def make_save_dir(path: str) -> None:
    """--save-dir and its parents, made when a run starts (not while options are read: a run
    refused by a later check leaves no directory behind)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--save-dir {path!r}: {exc.strerror or exc}") from None


def file_name(index: int, url: str) -> str:
    """`00000042-example.com_a_b.html` for row 42 of `https://example.com/a/b.html`."""
    parts = urlsplit(url)
    # Decoded first, so an escaped "%2e%2e%2f" is seen, and neutralised, as what it means.
    stem = _UNSAFE.sub("_", f"{parts.hostname or ''}{unquote(parts.path)}").strip("._-")
    return f"{index:08d}-{stem[:MAX_STEM] or 'body'}"


class BodyFile:
    """A body being saved: written to NAME.part while it streams, renamed to NAME once complete."""

    def __init__(self, directory: str, index: int, url: str) -> None:
        self.path = os.path.join(directory, file_name(index, url))
        if os.path.dirname(os.path.realpath(self.path)) != os.path.realpath(directory):
            raise SaveError(f"refusing to save outside {directory!r}")  # unreachable by construction
        self._partial = self.path + PARTIAL_SUFFIX
        try:
            # A new file, never one found there: a symlink planted at NAME.part was followed, and
            # the body written wherever it pointed. What was there (a stale part, a link) goes.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._partial)
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o666)
            self._stream: BinaryIO = os.fdopen(fd, "wb")
        except OSError as exc:
            raise SaveError(f"cannot save to {self._partial!r}: {exc.strerror or exc}") from exc

    def write(self, chunk: bytes) -> None:
        try:
            self._stream.write(chunk)
        except OSError as exc:
            raise SaveError(f"cannot save to {self._partial!r}: {exc.strerror or exc}") from exc

    def commit(self) -> str:
        """Finish the file under its final name and return that path."""
        try:
            self._stream.close()
            os.replace(self._partial, self.path)
        except OSError as exc:
            self.discard()
            raise SaveError(f"cannot save to {self.path!r}: {exc.strerror or exc}") from exc
        return self.path

    def discard(self) -> None:
        """Drop a body that did not arrive whole: no file is left to pass for a complete one."""
        self._stream.close()
        try:
            os.unlink(self._partial)
        except FileNotFoundError:
            pass
