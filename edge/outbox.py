"""The edge agent's durable outbox: nothing sampled is lost to an outage, a restart or a power cut.

Every reading is in SQLite before ``add`` returns (WAL journal, ``synchronous=FULL``: a commit
survives ``kill -9`` and power loss). ``seal`` then moves pending readings into a batch with the
gateway's next sequence number, in one transaction, so a batch resent after a crash carries the
same number and the stream drops the copy. Batches are handed out oldest first and deleted only
when the broker has acknowledged them. Strict order matters: live data sent ahead of a backlog
would make the backlog too late for the stream to judge at its timestamps.

The agent seals only when it can send: a batch's ``sent_at`` is then the moment it left, which
is what the stream's clock-offset estimate needs, and a backlog goes out in full-size batches.

The outbox is bounded by ``max_bytes``. Past ``warn_fraction`` of it, ``nearly_full`` turns
true so the agent can alert before anything is lost. When full, the policy decides:
``drop_oldest`` keeps sampling and drops the oldest unsent samples, sealed batches first
(counted), ``refuse_new`` keeps what is stored and refuses new readings (counted). Either way
nothing goes silently.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from milkguard.contract.v1 import Batch, ClockState, Event, Reading, encode_batch

FullPolicy = Literal["drop_oldest", "refuse_new"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,          -- 'r' reading, 'e' event
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    readings INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_reading_encoder = msgspec.msgpack.Encoder()
_reading_decoder = msgspec.msgpack.Decoder(Reading)
_event_decoder = msgspec.msgpack.Decoder(Event)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A batch ready to publish."""

    seq: int
    payload: bytes
    readings: int


@dataclass(slots=True)
class OutboxCounters:
    """What the outbox did, for the agent's status and alerts."""

    added: int = 0
    sealed: int = 0
    acknowledged: int = 0
    dropped_readings: int = 0
    refused_readings: int = 0


class Outbox:
    """A gateway's durable queue of readings and events, sealed into numbered batches."""

    def __init__(
        self,
        path: Path,
        *,
        site: str,
        gateway: str,
        max_bytes: int = 1 << 30,
        warn_fraction: float = 0.8,
        when_full: FullPolicy = "drop_oldest",
        first_seq: int = 1,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.site = site
        self.gateway = gateway
        self.max_bytes = max_bytes
        self.warn_fraction = warn_fraction
        self.when_full = when_full
        self.counters = OutboxCounters()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', ?)", (first_seq,)
        )
        # kept up to date by every change, so no write has to scan the queue to know its size
        self._bytes = self._measure()
        (pending,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
        self._pending = int(pending)

    def close(self) -> None:
        """Close the database (everything committed is already durable)."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------ writing

    def add(self, readings: Sequence[Reading], events: Sequence[Event] = ()) -> bool:
        """Store samples durably; False when the outbox is full and refuses them."""
        rows = [("r", _reading_encoder.encode(r)) for r in readings]
        rows.extend(("e", msgspec.msgpack.encode(e)) for e in events)
        if not rows:
            return True
        with self._lock:
            if self._full_locked() and not self._make_room_locked():
                self.counters.refused_readings += len(readings)
                return False
            with self._transaction():
                self._db.executemany("INSERT INTO pending (kind, body) VALUES (?, ?)", rows)
            self._bytes += sum(len(body) for _, body in rows)
            self._pending += len(rows)
            self.counters.added += len(readings)
        return True

    def seal(
        self, sent_at: int, max_readings: int = 1000, clock: ClockState | None = None
    ) -> Sealed | None:
        """Move up to ``max_readings`` pending samples into the next numbered batch."""
        with self._lock, self._transaction():
            rows = self._db.execute(
                "SELECT id, kind, body FROM pending ORDER BY id LIMIT ?", (max_readings,)
            ).fetchall()
            if not rows:
                return None
            readings = [_reading_decoder.decode(b) for _, k, b in rows if k == "r"]
            events = [_event_decoder.decode(b) for _, k, b in rows if k == "e"]
            (seq,) = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            payload = encode_batch(
                Batch(
                    v=1,
                    site=self.site,
                    gateway=self.gateway,
                    seq=seq,
                    sent_at=sent_at,
                    readings=readings,
                    events=events,
                    clock=clock,
                )
            )
            self._db.execute(
                "INSERT INTO batches (seq, payload, readings) VALUES (?, ?, ?)",
                (seq, payload, len(readings)),
            )
            self._db.execute("DELETE FROM pending WHERE id <= ?", (rows[-1][0],))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            self._bytes += len(payload) - sum(len(body) for _, _, body in rows)
            self._pending -= len(rows)
            self.counters.sealed += 1
        return Sealed(seq, payload, len(readings))

    # ------------------------------------------------------------------------------ sending

    def unsent(self, after_seq: int = -1, limit: int = 100) -> list[Sealed]:
        """Sealed batches not yet acknowledged, oldest first, after ``after_seq``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload, readings FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Sealed(seq, bytes(payload), n) for seq, payload, n in rows]

    def acknowledged(self, *seqs: int) -> None:
        """The broker has these batches: forget them.

        Several in one transaction: one fsync per batch would cap a drain at a few hundred
        batches a second. A crash before the commit only means the stream sees them again,
        under the same numbers, and drops the copies.
        """
        with self._lock, self._transaction():
            for seq in seqs:
                self._bytes -= self._delete_batch(seq)
            self.counters.acknowledged += len(seqs)

    # ------------------------------------------------------------------------------ size

    @property
    def size_bytes(self) -> int:
        """Bytes of stored samples and batches (the WAL is checkpointed into this)."""
        with self._lock:
            return self._bytes

    @property
    def pending(self) -> int:
        """Samples (readings and events) stored and not yet sealed."""
        with self._lock:
            return self._pending

    @property
    def nearly_full(self) -> bool:
        """True past ``warn_fraction`` of ``max_bytes``: time to alert, before anything is lost."""
        return self.size_bytes >= self.warn_fraction * self.max_bytes

    def backlog(self) -> tuple[int, int]:
        """(pending samples, sealed batches) waiting."""
        with self._lock:
            (pending,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
            (batches,) = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()
        return int(pending), int(batches)

    def _measure(self) -> int:
        (stored,) = self._db.execute(
            "SELECT COALESCE((SELECT SUM(LENGTH(body)) FROM pending), 0)"
            " + COALESCE((SELECT SUM(LENGTH(payload)) FROM batches), 0)"
        ).fetchone()
        return int(stored)

    def _delete_batch(self, seq: int) -> int:
        """Delete one batch; its size in bytes (0 if it was gone already)."""
        row = self._db.execute("SELECT LENGTH(payload) FROM batches WHERE seq = ?", (seq,))
        found = row.fetchone()
        self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        return int(found[0]) if found else 0

    def _full_locked(self) -> bool:
        return self._bytes >= self.max_bytes

    def _make_room_locked(self) -> bool:
        """Apply the policy when full; True when there is room again."""
        if self.when_full == "refuse_new":
            return False
        while self._full_locked():
            oldest = self._db.execute(
                "SELECT seq, readings FROM batches ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is not None:
                with self._transaction():
                    self._bytes -= self._delete_batch(oldest[0])
                self.counters.dropped_readings += int(oldest[1])
            elif not self._drop_oldest_pending_locked():
                return False
        return True

    def _drop_oldest_pending_locked(self) -> bool:
        """Drop the oldest unsealed samples (a hundredth of them, at least one); False if none."""
        count = max(1, self._pending // 100)
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, kind, LENGTH(body) FROM pending ORDER BY id LIMIT ?", (count,)
            ).fetchall()
            if not rows:
                return False
            self._db.execute("DELETE FROM pending WHERE id <= ?", (rows[-1][0],))
        self._bytes -= sum(size for _, _, size in rows)
        self._pending -= len(rows)
        self.counters.dropped_readings += sum(1 for _, kind, _ in rows if kind == "r")
        return True

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._depth = 0

    def __enter__(self) -> None:
        if self._db.in_transaction:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if not self._depth:
            return
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
