"""The one TLS context a run's HTTPS pools share.

Given no context, urllib3 makes one for every new connection and loads the CA certificates into
it again: ~20 ms of CPU for the OS store (~16 ms for certifi's bundle), per connection, so a list
spanning a thousand HTTPS hosts spent 20 s of CPU on it. One context, loaded once, serves every
connection (an SSLContext is safe to share between threads).
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from typing import Any

from urllib3.util.ssl_ import create_urllib3_context

from pooledfetch.config import FetchConfig
from pooledfetch.errors import ConfigError


def load(config: FetchConfig) -> ssl.SSLContext:
    """A context that verifies as the run asks: the OS store, --ca-bundle, or nothing with
    --insecure; with --cert/--key loaded. A file that cannot be used raises ConfigError."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if config.tls_verify else ssl.CERT_NONE)
    if config.ca_bundle is not None:
        try:
            if os.path.isdir(config.ca_bundle):
                # OpenSSL looks a directory up by subject hash at each handshake, so only now
                # can it be told that no certificate in it would ever be found.
                if not any(_HASHED_NAME.match(name) for name in os.listdir(config.ca_bundle)):
                    raise ConfigError(
                        f"--ca-bundle {config.ca_bundle!r} is a directory with no hashed certificate names "
                        "(HASH.0): run `openssl rehash` on it, or give a PEM file"
                    )
                context.load_verify_locations(capath=config.ca_bundle)
            else:
                context.load_verify_locations(cafile=config.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--ca-bundle {config.ca_bundle!r} holds no usable CA certificate: {_reason(exc)}"
            ) from None
    elif config.tls_verify:
        context.load_default_certs()
    if config.client_cert is not None:
        try:
            context.load_cert_chain(config.client_cert, config.client_key, password=_no_passphrase)
        except _EncryptedKey:
            reason = "its private key is encrypted; give the key without a passphrase"
        except (OSError, ssl.SSLError) as exc:
            reason = _reason(exc)
        else:
            return context
        files = f"--cert {config.client_cert!r}" + (f" / --key {config.client_key!r}" if config.client_key else "")
        raise ConfigError(f"{files} cannot be used as a client certificate: {reason}")
    return context


def check_files(config: FetchConfig) -> ssl.SSLContext | None:
    """With a CA bundle or client certificate named, the context loaded now (so a file that
    cannot be used is reported before anything is fetched); None otherwise."""
    if config.ca_bundle is not None or config.client_cert is not None:
        return load(config)
    return None


# How OpenSSL finds a certificate in a CA directory: its subject hash, then a sequence number.
_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.\d+$")

# requests' pool settings that make urllib3 load files into a new context per connection.
_FILE_SETTINGS = ("ca_certs", "ca_cert_dir", "cert_file", "key_file")


class SharedContext:
    """`load(config)`, made once: at once when the user named files (unless `loaded` is that
    context, made by check_files before), else when the first HTTPS pool asks for it (a run
    that fetches only plain HTTP never loads the OS store)."""

    def __init__(self, config: FetchConfig, loaded: ssl.SSLContext | None = None) -> None:
        self._config = config
        self._context = loaded or check_files(config)
        self._lock = threading.Lock()

    def get(self) -> ssl.SSLContext:
        if self._context is None:
            with self._lock:
                if self._context is None:
                    self._context = load(self._config)
        return self._context

    def pool_settings(self, settings: dict[str, Any], scheme: str) -> dict[str, Any]:
        """requests' settings for a pool of `scheme`, the files they name replaced by this context."""
        kept = {name: value for name, value in settings.items() if name not in _FILE_SETTINGS}
        if scheme == "https":
            kept["ssl_context"] = self.get()
        return kept


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # OpenSSL would otherwise ask for the key's passphrase on the terminal.
    raise _EncryptedKey


def _reason(exc: OSError | ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None)
    if reason == "PEM_LIB" or (isinstance(exc, ssl.SSLError) and "PEM lib" in str(exc)):
        return "not PEM, or no certificate and matching private key in it"
    if reason:
        return str(reason).replace("_", " ").lower()
    return exc.strerror or str(exc)
