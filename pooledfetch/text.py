"""Make untrusted text (URLs, reason phrases, error messages) safe to show on a terminal."""

from __future__ import annotations

import re
import unicodedata

# Any character but printable ASCII: the few a text may hold are looked up one by one.
_NOT_ASCII_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# Controls (C0, DEL, C1: ESC starts terminal sequences, 0x9b is a one-byte CSI), format
# characters (bidi overrides make `exe.txt` show as `txt.exe`; zero-width ones hide in a host
# name), line and paragraph separators, and lone surrogates (a terminal cannot encode them).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: str) -> str:
    """Replace every control, format, separator or surrogate character with a visible escape
    (`\\xNN`, `\\uNNNN`, `\\UNNNNNNNN`)."""
    return _NOT_ASCII_PRINTABLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# scheme://authority anywhere in a text (a URL, or an error message quoting one).
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#\s]*)")


# An authority with a password but no scheme (`user:secret@host`, `//user:secret@host`), at the
# start of a text or after a space or quote: an input line, or a message quoting one. Without a
# colon before its "@" it may be an e-mail address, and is left alone; so are the URIs written
# scheme:user@host (mailto:, xmpp:, sip:), whose part after the colon is no password.
_BARE_AUTHORITY = re.compile(
    r"(?:^|(?<=[\s'\"(<\[]))(?!(?i:mailto|xmpp|sips?|im|pres):)"
    r"(?P<scheme>(?://)?)(?P<authority>[^\s/?#'\"@:]*:[^\s/?#'\"]*@[^\s/?#'\"@]*)"
)


def mask_credentials(text: str) -> str:
    """`http://user:secret@host/` → `http://user:***@host/`; a lone user part (often a token) → `***@`;
    `user:secret@host/` (no scheme) → `user:***@host/`."""
    if "@" not in text:
        return text
    return _BARE_AUTHORITY.sub(_masked, _AUTHORITY.sub(_masked, text))


def _masked(match: re.Match[str]) -> str:
    # The host follows the last "@": a password may hold "@" itself.
    userinfo, at, host = match.group("authority").rpartition("@")
    if not at:
        return match.group(0)
    user, colon, _ = userinfo.partition(":")
    return f"{match.group('scheme')}{user + ':' if colon else ''}***@{host}"
