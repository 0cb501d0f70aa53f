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
  at its issue, and ``milkguard audit verify --head N:HASH`` checks the trail still holds it.

SQLite in WAL mode with full synchronous commits: an appended entry survives a power cut.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from alerts.signing import Signer, Verifier, canonical
from alerts.store import Database, new_lock, serialized
from milkguard.errors import ConfigError

GENESIS = "0" * 64

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
        self._db = Database(path, _SCHEMA, "the audit trail")

    @serialized
    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @serialized
    def append(
        self, kind: str, subject: str, actor: str, body: dict[str, Any], at: datetime | None = None
    ) -> Entry:
        """Add an entry after the last one and sign the new head (one transaction)."""
        if self._signer is None:
            raise ConfigError("this audit trail was opened to verify, not to write")
        stamp = (at or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        db = self._db
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
        """Every problem found, each naming the entry; an empty list for an intact trail."""
        problems: list[str] = []
        expected_prev, expected_seq = GENESIS, 1
        hashes: dict[int, str] = {}
        for entry in self.entries():
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
            hashes[entry.seq] = entry.hash
            expected_prev, expected_seq = entry.hash, entry.seq + 1
        last_seq = expected_seq - 1
        row = self._db.execute("SELECT seq, hash, signature FROM audit_head").fetchone()
        if row is None:
            if last_seq:
                problems.append("the signed head is missing")
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
            if hashes.get(seq) != digest:
                problems.append(
                    f"the trail no longer holds entry {seq} as it was when its head was "
                    f"handed out ({digest[:16]}...): the trail was rolled back or rewritten"
                )
        return problems
