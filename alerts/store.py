"""The databases of alerting: SQLite by default, PostgreSQL for a multi-node install.

:class:`Database` runs the few statements alerting needs on either, written once: ``?``
placeholders (turned into ``%s`` for PostgreSQL), ``INSERT ... ON CONFLICT`` (both speak it),
and :meth:`Database.transaction`, which serializes writers across every node: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock. Every commit is durable
(SQLite: WAL with full synchronous commits).

Where a table needs an auto-numbered key, its schema says ``{serial}``.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from milkguard.errors import ConfigError, ExtraMissing

_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


class Database:
    """One connection, to a SQLite file or a PostgreSQL URL (``postgresql://...``)."""

    def __init__(self, where: Path | str, schema: str, what: str) -> None:
        self.what = what
        text = str(where)
        self.dialect = (
            "postgresql" if text.startswith(("postgresql://", "postgres://")) else "sqlite"
        )
        self._lock_key = zlib.crc32(what.encode())  # one advisory lock per kind of store
        try:
            if self.dialect == "postgresql":
                self._connection: Any = _postgres(text)
            else:
                path = Path(text)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._connection = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False
                )
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=FULL")
            for statement in schema.format(serial=_SERIAL[self.dialect]).split(";"):
                if statement.strip():
                    self._connection.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open {what} {_shown(text)}: {exc}") from exc
        except Exception as exc:  # psycopg's errors: connection refused, authentication
            if self.dialect != "postgresql":
                raise
            raise ConfigError(f"cannot open {what} at {_shown(text)}: {exc}") from exc

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; its cursor (``rowcount``, ``fetchone``, iteration)."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        return self._connection.execute(sql, tuple(args))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction no other writer of this store, on any node, runs alongside."""
        if self.dialect == "postgresql":
            self._connection.execute("BEGIN")
            self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
        else:
            self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def _postgres(url: str) -> Any:
    try:
        import psycopg  # noqa: PLC0415
    except ImportError as exc:
        raise ExtraMissing("Alerting on PostgreSQL", "alerts", "psycopg") from exc
    return psycopg.connect(url, autocommit=True)


def _shown(where: str) -> str:
    """A database location as it may be logged: a URL's password hidden."""
    if "://" not in where or "@" not in where:
        return where
    scheme, rest = where.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


F = TypeVar("F", bound=Callable[..., Any])


def serialized(method: F) -> F:
    """One caller at a time on the object's connection (the service loop and the HTTP API's
    threads share it): the method runs under the object's ``_lock``."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


def transactional(method: F) -> F:
    """:func:`serialized`, and in one :meth:`Database.transaction` of the object's ``_db``: a
    read-modify-write that no other node interleaves with (no double escalation)."""

    @functools.wraps(method)
    def atomic(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock, self._db.transaction():
            return method(self, *args, **kwargs)

    return atomic  # type: ignore[return-value]


def new_lock() -> threading.RLock:
    """The lock :func:`serialized` methods take (re-entrant: they call one another)."""
    return threading.RLock()
