"""SHA-256 without loading OpenSSL into the agent for it.

`hashlib` loads OpenSSL's libcrypto as it is imported (about 4 MB resident, for the whole life
of the daemon), and the agent needs nothing of it but SHA-256 of bundles and deltas: CPython
builds that one in (`_sha256` up to 3.11, `_sha2` from 3.12). The built-in one is slower (about
250 MB/s against OpenSSL's 1.6 GB/s here), so once something else has loaded hashlib (the TUF
check of an update does, before any chunk arrives) its OpenSSL is used: there it costs nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def _builtin_sha256() -> Callable[..., Any]:
    for name in ("_sha256", "_sha2"):  # CPython's own, by version
        try:
            return importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
    import hashlib  # pragma: no cover  (not CPython)

    return hashlib.sha256  # pragma: no cover


_BUILTIN = _builtin_sha256()


def sha256(data: bytes = b"") -> Any:
    """A sha256 hash object (`.update`, `.digest`, `.hexdigest`) of `data`."""
    loaded = sys.modules.get("hashlib")
    if loaded is not None:
        return loaded.sha256(data)
    return _BUILTIN(data)


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of `data`."""
    return sha256(data).hexdigest()
