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

import logging
import shutil
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
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL
);
"""

log = logging.getLogger(__name__)

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
    rejected_samples: int = 0  # stored but refused by the contract when sealed (kept aside)


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
        min_free_bytes: int = 0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.site = site
        self.gateway = gateway
        self.max_bytes = max_bytes
        self.warn_fraction = warn_fraction
        self.when_full = when_full
        self.min_free_bytes = min_free_bytes
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
        incoming = sum(len(body) for _, body in rows)
        with self._lock:
            # the disk may fill before the configured bound: then room is made for what comes
            # (SQLite reuses the pages of deleted rows; the file itself does not shrink)
            need = incoming if self._disk_low() else 0
            if (self._full_locked() or need) and not self._make_room_locked(need):
                self.counters.refused_readings += len(readings)
                return False
            with self._transaction():
                self._db.executemany("INSERT INTO pending (kind, body) VALUES (?, ?)", rows)
            self._bytes += incoming
            self._pending += len(rows)
            self.counters.added += len(readings)
        return True

    def seal(
        self, sent_at: int, max_readings: int = 1000, clock: ClockState | None = None
    ) -> Sealed | None:
        """Move up to ``max_readings`` pending samples into the next numbered batch.

        A stored sample the contract refuses (it should not get in, but a disk can corrupt
        a row) is moved to the ``rejected`` table with the reason and counted, never left to
        block every batch after it."""
        with self._lock:
            try:
                sealed = self._seal_locked(sent_at, max_readings, clock)
            except sqlite3.OperationalError as exc:
                # a disk full to the last byte: without room to seal, nothing could ever be
                # sent again; the oldest samples make way (counted), then sealing is retried
                if "full" not in str(exc) or not self._drop_oldest_pending_locked():
                    raise
                log.error("edge.outbox_disk_full", extra={"dropped": "oldest samples"})
                sealed = self._seal_locked(sent_at, max_readings, clock)
        if sealed is None:
            return None
        batch, removed_bytes, removed_rows, rejected = sealed
        # counted once the transaction committed: a failed commit changes nothing
        self._bytes += len(batch.payload) - removed_bytes
        self._pending -= removed_rows
        self.counters.sealed += 1
        self.counters.rejected_samples += rejected
        return batch

    def _seal_locked(
        self, sent_at: int, max_readings: int, clock: ClockState | None
    ) -> tuple[Sealed, int, int, int] | None:
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, kind, body FROM pending ORDER BY id LIMIT ?", (max_readings,)
            ).fetchall()
            if not rows:
                return None
            readings: list[Reading] = []
            events: list[Event] = []
            rejected = 0
            for row_id, kind, body in rows:
                try:
                    if kind == "r":
                        readings.append(_reading_decoder.decode(body))
                    else:
                        events.append(_event_decoder.decode(body))
                except msgspec.MsgspecError as exc:
                    rejected += 1
                    self._db.execute(
                        "INSERT INTO rejected (kind, body, reason) VALUES (?, ?, ?)",
                        (kind, body, str(exc)),
                    )
                    log.error(
                        "edge.outbox_sample_rejected", extra={"id": row_id, "reason": str(exc)}
                    )
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
        removed = sum(len(body) for _, _, body in rows)
        return Sealed(seq, payload, len(readings)), removed, len(rows), rejected

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
        with self._lock:
            with self._transaction():
                freed = sum(self._delete_batch(seq) for seq in seqs)
            self._bytes -= freed
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

    def _disk_low(self) -> bool:
        if not self.min_free_bytes:
            return False
        return shutil.disk_usage(self.path.parent).free < self.min_free_bytes

    def _make_room_locked(self, need: int = 0) -> bool:
        """Apply the policy when full: drop until under the bound and ``need`` bytes are
        freed; True when there is room again."""
        if self.when_full == "refuse_new":
            return False
        freed = 0
        while self._full_locked() or freed < need:
            oldest = self._db.execute(
                "SELECT seq, readings FROM batches ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is not None:
                with self._transaction():
                    size = self._delete_batch(oldest[0])
                self._bytes -= size
                freed += size
                self.counters.dropped_readings += int(oldest[1])
                continue
            size = self._drop_oldest_pending_locked()
            if not size:
                return False
            freed += size
        return True

    def _drop_oldest_pending_locked(self) -> int:
        """Drop the oldest unsealed samples (a hundredth of them, at least one); the bytes
        freed (0 when there were none)."""
        count = max(1, self._pending // 100)
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, kind, LENGTH(body) FROM pending ORDER BY id LIMIT ?", (count,)
            ).fetchall()
            if not rows:
                return 0
            self._db.execute("DELETE FROM pending WHERE id <= ?", (rows[-1][0],))
        size = int(sum(size for _, _, size in rows))
        self._bytes -= size
        self._pending -= len(rows)
        self.counters.dropped_readings += sum(1 for _, kind, _ in rows if kind == "r")
        return size

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
        self._depth = 0
        if kind is not None:
            self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # e.g. the disk filled: SQLite may keep the transaction open; end it, then report
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
