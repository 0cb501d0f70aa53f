"""Messages the alert service refused to believe, kept with the reason (``dead_letters`` table).

Anything on the deviations topic that is not a change signed by a configured stream key and
valid against the wire contract lands here, never in the alert book: unsigned, badly signed,
signed by an unknown key, malformed, or on another asset's topic. The payload is kept whole up
to :data:`MAX_KEPT_BYTES` (base64), beyond that its SHA-256 and first bytes, so a flood of huge
messages cannot fill the disk; the log line carries the topic and the reason, never the payload.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alerts.store import Database, new_lock, serialized

#: A dead letter keeps at most this much of its payload.
MAX_KEPT_BYTES: Final = 64 * 1024
MAX_TEXT: Final = 500  # of a topic or a reason's detail, as stored and logged

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id {serial},
    received_ms BIGINT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    payload TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class DeadLetter:
    """One refused message."""

    received_ms: int
    topic: str
    reason: str  # too_large, not_json, unsigned, unknown_key, bad_signature, invalid_record, ...
    detail: str
    size: int
    sha256: str
    payload: bytes  # whole, or its first MAX_KEPT_BYTES


def clip(text: str) -> str:
    """Text from a message, bounded for storing and logging, U+0000 escaped: the embedded
    broker delivers it in topics, and PostgreSQL text cannot hold it (the insert would raise)."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


class DeadLetterStore:
    """The refused messages, persisted beside the alerts."""

    def __init__(self, path: Path | str) -> None:
        self._lock = new_lock()
        self._db = Database(path, _SCHEMA, "the dead-letter store")

    @serialized
    def add(
        self,
        topic: str,
        reason: str,
        detail: str,
        payload: bytes,
        *,
        now_ms: int,
        size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        """Keep one refused message; ``size`` and ``sha256`` are the whole payload's when only
        its prefix is given."""
        kept = payload[:MAX_KEPT_BYTES]
        self._db.execute(
            "INSERT INTO dead_letters "
            "(received_ms, topic, reason, detail, size, sha256, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                now_ms,
                clip(topic),
                reason,
                clip(detail),
                len(payload) if size is None else size,
                hashlib.sha256(payload).hexdigest() if sha256 is None else sha256,
                base64.b64encode(kept).decode(),
            ),
        )

    @serialized
    def all(self) -> list[DeadLetter]:
        """Every refused message, oldest first."""
        rows = self._db.execute(
            "SELECT received_ms, topic, reason, detail, size, sha256, payload "
            "FROM dead_letters ORDER BY id"
        )
        return [
            DeadLetter(
                received_ms=int(row[0]),
                topic=row[1],
                reason=row[2],
                detail=row[3],
                size=int(row[4]),
                sha256=row[5],
                payload=base64.b64decode(row[6]),
            )
            for row in rows
        ]

    @serialized
    def close(self) -> None:
        """Close the database."""
        self._db.close()
