"""The SQLite databases of alerting: opened the same way, durable on every commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
