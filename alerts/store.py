"""The SQLite databases of alerting: opened the same way, durable on every commit."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from milkguard.errors import ConfigError


def open_db(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """``path`` opened (created with ``schema`` if new) in WAL mode with full synchronous
    commits, so a committed change survives a power cut; a :class:`ConfigError` naming ``what``
    and the file if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc}") from exc
    return db


F = TypeVar("F", bound=Callable[..., Any])


def serialized(method: F) -> F:
    """One caller at a time on the object's connection (the service loop and the HTTP API's
    threads share it): the method runs under the object's ``_lock``."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


def new_lock() -> threading.RLock:
    """The lock :func:`serialized` methods take (re-entrant: they call one another)."""
    return threading.RLock()
