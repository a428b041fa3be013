"""Make untrusted text (URLs, reason phrases, error messages) safe to show on a terminal."""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: ESC starts terminal sequences, and 0x9b is a one-byte CSI.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Replace every control character with a visible `\\xNN` escape."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
