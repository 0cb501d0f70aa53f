"""The late path's retained history as records a runtime can append to a journal.

The late path (:mod:`stream.engine.late`) keeps every judged release, up to a cap, so a late
reading can be judged against what came before it. That history is too big for a snapshot
taken every second (10 MB at the cap), so a runtime that checkpoints keeps it apart: after each
batch of releases it takes a :class:`History` record of the releases kept since the last one
(:meth:`stream.engine.Engine.take_history`) and appends it to a journal; a restart replays the
journal's records into the restored engine, which keeps them exactly as it had (same releases,
same order, so the oldest are let go the same way).

A record is zlib-compressed msgpack of the releases' five columns (channel rows and device codes
as 32-bit integers), with each release's length and whether it is sorted. A record is either
the releases since the last one (appended), or ``whole``: every release retained, which
replaces the journal (the runtime begins a new one with it). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import msgspec
import numpy as np

from stream.engine.columns import Columns

#: zlib level 1: a record is written every checkpoint, so speed matters more than the last bytes
_LEVEL = 1


class History(NamedTuple):
    """A record of retained history for a runtime's journal."""

    record: bytes  # b"": nothing retained since the last record
    readings: int  # readings in the record
    whole: bool  # the record holds every release retained: it replaces the journal


class _Releases(msgspec.Struct, array_like=True):
    lengths: bytes  # int64 per release
    ordered: bytes  # bool per release: sorted by channel, then time
    rows: bytes  # int32
    ts: bytes  # int64
    values: bytes  # float64
    received: bytes  # int64
    devices: bytes  # int32


def encode(releases: list[Columns], ordered: list[bool]) -> bytes:
    """One record of ``releases`` (in the order they were kept)."""
    if not releases:
        return b""
    joined = Columns.join(releases)
    packed = _Releases(
        np.array([len(r.rows) for r in releases], dtype=np.int64).tobytes(),
        np.array(ordered, dtype=np.bool_).tobytes(),
        joined.rows.astype(np.int32).tobytes(),
        joined.ts.tobytes(),
        joined.values.tobytes(),
        joined.received.tobytes(),
        joined.devices.astype(np.int32).tobytes(),
    )
    return zlib.compress(msgspec.msgpack.encode(packed), _LEVEL)


def decode(record: bytes) -> list[tuple[Columns, bool]]:
    """The releases of a record, each with whether it is sorted. Raises ``ValueError`` (or a
    msgspec or zlib error) for a record that is not one."""
    if not record:
        return []
    packed = msgspec.msgpack.decode(zlib.decompress(record), type=_Releases)
    lengths = np.frombuffer(packed.lengths, dtype=np.int64)
    ordered = np.frombuffer(packed.ordered, dtype=np.bool_)
    rows = np.frombuffer(packed.rows, dtype=np.int32).astype(np.int64)
    ts = np.frombuffer(packed.ts, dtype=np.int64).copy()
    values = np.frombuffer(packed.values, dtype=np.float64).copy()
    received = np.frombuffer(packed.received, dtype=np.int64).copy()
    devices = np.frombuffer(packed.devices, dtype=np.int32).astype(np.int64)
    total = int(lengths.sum())
    if len(ordered) != len(lengths) or not all(len(c) == total for c in (rows, ts, values)):
        raise ValueError("history record: its columns and release lengths disagree")
    if len(received) != total or len(devices) != total or bool((lengths < 0).any()):
        raise ValueError("history record: its columns and release lengths disagree")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return [
        (
            Columns(rows[a:b], ts[a:b], values[a:b], received[a:b], devices[a:b]),
            bool(flag),
        )
        for a, b, flag in zip(starts.tolist(), ends.tolist(), ordered.tolist(), strict=True)
    ]


__all__ = ["History", "decode", "encode"]
