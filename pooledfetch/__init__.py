"""pooledfetch: fetch many URLs fast through one tuned, pooled requests session.

The public API is `fetch_all(urls, config)`, yielding one `Result` per URL line as it completes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"
__all__ = ["FetchConfig", "Result", "fetch_all", "__version__"]

if TYPE_CHECKING:
    from pooledfetch.config import FetchConfig
    from pooledfetch.engine import fetch_all
    from pooledfetch.results import Result

# Imported on first use so `pooledfetch --version` does not pay for requests and urllib3.
_LAZY = {
    "FetchConfig": "pooledfetch.config",
    "fetch_all": "pooledfetch.engine",
    "Result": "pooledfetch.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pooledfetch' has no attribute {name!r}")
