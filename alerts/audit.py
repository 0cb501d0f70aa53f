"""The audit trail: deviations, acknowledgements and corrective actions, chained by hashes.

Each entry holds its number (1, 2, ...), time, kind (``deviation.opened``,
``alert.acknowledged``, ``corrective_action.recorded``, ``report.issued``, ...), subject (the
deviation id), actor and body (JSON), the hash of the entry before it, and its own hash: the
SHA-256 of all of that as canonical JSON. So:

- an entry edited in place no longer matches its hash;
- an entry inserted or deleted breaks the link of the entry after it (or the numbering);
- entries deleted from the end, with nothing after them to break, are caught by the head: after
  every append the trail's head (number and hash of its last entry) is signed with the dairy's
  Ed25519 key, which whoever edits the database does not have. Rolling the whole trail back to an
  older signed head is caught by a head kept elsewhere: every regulator report carries the head
  at its issue, and ``milkguard audit verify --head N:HASH`` checks the trail still holds it;
``--state FILE`` keeps the last head verified, so each verification checks the trail has not
gone back behind the one before.

SQLite in WAL mode with full synchronous commits: an appended entry survives a power cut.

Verifying opens the database read-only (:meth:`AuditTrail.open_read_only`): it never creates the
file, a table or a head, so a trail that was deleted, dropped or emptied is reported as such, not
quietly re-created empty and called intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from alerts.signing import Signer, Verifier, canonical
from alerts.store import Database, new_lock, serialized
from milkguard.errors import ConfigError, ExtraMissing, MilkGuardError
from milkguard.logs import mask_url

GENESIS = "0" * 64
TABLES = ("audit", "audit_head")


class TrailError(MilkGuardError):
    """The trail to verify is not there, or cannot be read: the message says which."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    """One audit entry as stored."""

    seq: int
    at: str
    kind: str
    subject: str
    actor: str
    body: dict[str, Any]
    prev: str
    hash: str

    def content(self) -> dict[str, Any]:
        """What the hash covers: everything but the hash."""
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "subject": self.subject,
            "actor": self.actor,
            "body": self.body,
            "prev": self.prev,
        }


def entry_hash(content: dict[str, Any]) -> str:
    """The SHA-256 of an entry's canonical JSON."""
    return hashlib.sha256(canonical(content)).hexdigest()


class AuditTrail:
    """Append-only, hash-chained, its head signed after every append."""

    def __init__(self, path: Path | str, signer: Signer | None = None) -> None:
        self.path = path
        self._signer = signer
        self._lock = new_lock()
        self._db: Database | _ReadOnly = Database(path, _SCHEMA, "the audit trail")

    @classmethod
    def open_read_only(cls, where: Path | str) -> AuditTrail:
        """The trail at ``where`` (a SQLite file or a PostgreSQL URL), to verify: read in one
        read-only snapshot; nothing is created. :class:`TrailError` if it is not there."""
        trail = cls.__new__(cls)
        trail.path, trail._signer, trail._lock = where, None, new_lock()
        trail._db = _ReadOnly(where)
        return trail

    @serialized
    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @serialized
    def append(
        self, kind: str, subject: str, actor: str, body: dict[str, Any], at: datetime | None = None
    ) -> Entry:
        """Add an entry after the last one and sign the new head (one transaction)."""
        db = self._db
        if self._signer is None or not isinstance(db, Database):
            raise ConfigError("this audit trail was opened to verify, not to write")
        stamp = (at or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with db.transaction():
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            content = {
                "seq": seq,
                "at": stamp,
                "kind": kind,
                "subject": subject,
                "actor": actor,
                "body": body,
                "prev": prev,
            }
            digest = entry_hash(content)
            db.execute(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, stamp, kind, subject, actor, canonical(body).decode(), prev, digest),
            )
            signature = self._signer.sign({"seq": seq, "hash": digest})
            db.execute(
                "INSERT INTO audit_head VALUES (1, ?, ?, ?) ON CONFLICT (one) DO UPDATE SET "
                "seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
                (seq, digest, msgspec.json.encode(signature.as_dict()).decode()),
            )
        return Entry(seq, stamp, kind, subject, actor, body, prev, digest)

    @serialized
    def entries(self, subject: str | None = None) -> list[Entry]:
        """Every entry (of ``subject``, if given), in order."""
        query = "SELECT * FROM audit ORDER BY seq"
        args: tuple[str, ...] = ()
        if subject is not None:
            query, args = "SELECT * FROM audit WHERE subject = ? ORDER BY seq", (subject,)
        return [
            Entry(seq, at, kind, subj, actor, msgspec.json.decode(body), prev, digest)
            for seq, at, kind, subj, actor, body, prev, digest in self._db.execute(query, args)
        ]

    @serialized
    def head(self) -> tuple[int, str]:
        """(number, hash) of the last entry: what to hand a regulator with a report."""
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    @serialized
    def verify(self, verifier: Verifier, known_heads: Sequence[tuple[int, str]] = ()) -> list[str]:
        """Every problem found, each naming the entry; an empty list for an intact trail.

        A trail without its tables, without entries or without a signed head is not intact:
        the service signs a head with its first entry, and nothing it does removes one. Nor is
        one holding what no service writes (a body or signature that is not JSON, a text seq,
        other columns): that is a problem found, never an exception.
        """
        try:
            return self._verify(verifier, known_heads)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            shown = f"{type(exc).__name__}: {str(exc)[:200]}"
        except Exception as exc:  # a column dropped or renamed: sqlite3's or psycopg's error
            if not _is_database_error(exc):
                raise
            shown = f"{type(exc).__name__}: {str(exc)[:200]}"
        return [f"the trail holds what no MilkGuard service writes ({shown}): it was edited"]

    def _verify(self, verifier: Verifier, known_heads: Sequence[tuple[int, str]]) -> list[str]:
        missing = [table for table in TABLES if table not in self._tables()]
        if missing:
            return [
                f"the trail has no {' and no '.join(missing)} table: it was dropped, or this "
                "is not a MilkGuard audit trail"
            ]
        entries = self.entries()
        problems = _chain_problems(entries)
        if not entries:
            problems.append(
                "the trail has no entries: it was emptied (or the service never recorded "
                "anything; verify once it has)"
            )
        hashes = {entry.seq: entry.hash for entry in entries}
        last_seq, expected_prev = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)
        row = self._db.execute("SELECT seq, hash, signature FROM audit_head").fetchone()
        if row is None:
            problems.append("the signed head is missing: it was deleted")
        else:
            head_seq, head_hash, signature = row
            wrong = verifier.problem(
                {"seq": head_seq, "hash": head_hash}, msgspec.json.decode(signature)
            )
            if wrong is not None:
                problems.append(f"the head's signature is not valid: {wrong}")
            elif (head_seq, head_hash) != (last_seq, expected_prev):
                problems.append(
                    f"the signed head is entry {head_seq}, but the trail ends at entry "
                    f"{last_seq}: entries were deleted from the end, or added without the key"
                )
        for seq, digest in known_heads:
            if seq > last_seq:
                problems.append(
                    f"the trail ends at entry {last_seq}, behind entry {seq} handed out or "
                    "verified earlier: the trail was rolled back"
                )
            elif hashes.get(seq) != digest:
                problems.append(
                    f"the trail no longer holds entry {seq} as it was when its head was "
                    f"handed out ({digest[:16]}...): the trail was rolled back or rewritten"
                )
        return problems

    def _tables(self) -> set[str]:
        """The audit tables the database has."""
        if self._db.dialect == "postgresql":
            query = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        else:
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {row[0] for row in self._db.execute(query)} & set(TABLES)


def _chain_problems(entries: list[Entry]) -> list[str]:
    """What is wrong with the numbering and the hash chain of ``entries``."""
    problems: list[str] = []
    expected_prev, expected_seq = GENESIS, 1
    for entry in entries:
        if entry.seq != expected_seq:
            problems.append(
                f"entries {expected_seq} to {entry.seq - 1} are missing (deleted)"
                if entry.seq > expected_seq
                else f"entry {entry.seq} is out of order"
            )
        if entry_hash(entry.content()) != entry.hash:
            problems.append(
                f"entry {entry.seq} ({entry.kind}, {entry.subject}) does not match its hash: "
                "it was edited"
            )
        elif entry.prev != expected_prev:
            problems.append(
                f"entry {entry.seq} does not follow the entry before it: an entry was "
                "inserted or deleted before it, or it was re-chained"
            )
        expected_prev, expected_seq = entry.hash, entry.seq + 1
    return problems


def _is_database_error(exc: Exception) -> bool:
    """True for an error of the database driver (sqlite3, psycopg), not of the code."""
    return isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg")


class _ReadOnly:
    """A read-only connection in one snapshot: SQLite ``mode=ro`` (``immutable`` when no writer
    has it open: then not even a journal file is created), PostgreSQL a read-only repeatable-
    read transaction. Same ``execute`` as :class:`~alerts.store.Database`."""

    def __init__(self, where: Path | str) -> None:
        text = str(where)
        self.dialect = (
            "postgresql" if text.startswith(("postgresql://", "postgres://")) else "sqlite"
        )
        if self.dialect == "postgresql":
            self._connection: Any = _postgres_read_only(text)
            return
        path = Path(text).resolve()
        if not path.is_file():
            raise TrailError(f"no audit trail at {path}: the file is missing")
        # a writer in WAL mode keeps a -wal file; without one nobody writes, and the file can
        # be read as it is without the -wal and -shm files a read-only reader would create
        flags = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
        try:
            self._connection = sqlite3.connect(
                f"file:{quote(str(path))}?{flags}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            self._connection.execute("BEGIN")  # one snapshot for the whole verification
            self._connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise TrailError(f"cannot read the audit trail at {path}: {exc}") from exc

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one query."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        return self._connection.execute(sql, tuple(args))

    def close(self) -> None:
        """End the snapshot (nothing was written) and close."""
        try:
            self._connection.rollback()
        finally:
            self._connection.close()


def _postgres_read_only(url: str) -> Any:
    try:
        import psycopg  # noqa: PLC0415
    except ImportError as exc:
        raise ExtraMissing("Verifying a trail on PostgreSQL", "alerts", "psycopg") from exc
    try:
        connection = psycopg.connect(url, autocommit=False)
        connection.read_only = True
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    except psycopg.Error as exc:
        raise TrailError(f"cannot read the audit trail at {mask_url(url)}: {exc}") from exc
    return connection


@dataclass(frozen=True)
class VerifiedHead:
    """The head of the last successful verification, kept in ``--state FILE``."""

    seq: int
    hash: str
    verified_at: str


def load_verified_head(path: Path) -> VerifiedHead | None:
    """The head kept in ``path`` (None before the first verification)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the verification state {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
        head = VerifiedHead(int(data["seq"]), str(data["hash"]), str(data["verified_at"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # UTF-8, JSON, shape
        raise ConfigError(
            f"the verification state {path} is not one MilkGuard wrote ({exc!r}): restore it "
            "from a copy; deleting it forgets the last head verified"
        ) from exc
    if head.seq < 1 or len(head.hash) != 64:
        raise ConfigError(f"the verification state {path} holds no valid head")
    return head


def save_verified_head(path: Path, seq: int, digest: str) -> VerifiedHead:
    """Keep ``seq``/``digest`` in ``path``, atomically: a crash leaves the old state or the new."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    head = VerifiedHead(seq, digest, stamp)
    text = json.dumps({"seq": seq, "hash": digest, "verified_at": stamp}) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            Path(temporary).replace(path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except OSError as exc:
        raise ConfigError(f"cannot write the verification state {path}: {exc.strerror}") from exc
    return head
