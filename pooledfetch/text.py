"""Make untrusted text (URLs, reason phrases, error messages) safe to show on a terminal."""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: ESC starts terminal sequences, and 0x9b is a one-byte CSI.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Replace every control character with a visible `\\xNN` escape."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


# scheme://authority anywhere in a text (a URL, or an error message quoting one).
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#\s]*)")


def mask_credentials(text: str) -> str:
    """`http://user:secret@host/` → `http://user:***@host/`; a lone user part (often a token) → `***@`."""
    if "@" not in text:
        return text
    return _AUTHORITY.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    # The host follows the last "@": a password may hold "@" itself.
    userinfo, at, host = match.group("authority").rpartition("@")
    if not at:
        return match.group(0)
    user, colon, _ = userinfo.partition(":")
    return f"{match.group('scheme')}{user + ':' if colon else ''}***@{host}"
