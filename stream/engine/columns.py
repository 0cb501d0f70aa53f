"""Readings as aligned numpy columns: how the engine holds, sorts and judges them in bulk.

Five columns per reading (channel row, event time, value, receive time, device code), always
sorted by channel, then time, where they are judged or held. Sorting is one int64 key and a
stable sort, since readings arrive as runs already in order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

#: "never": a time span no flat line or gap reaches
NEVER = np.int64(2**62)


class Columns(NamedTuple):
    """Readings as five aligned numpy columns."""

    rows: I64
    ts: I64
    values: F64
    received: I64
    devices: I64

    def take(self, mask: B | I64) -> Columns:
        """The readings selected by a mask or an index array."""
        if mask.dtype == np.bool_:
            # a mask is found once, not per column: masks that interleave (a channel's oldest
            # reading released, the next ones held) index four times slower than positions
            mask = np.flatnonzero(mask)
        return Columns(
            self.rows[mask],
            self.ts[mask],
            self.values[mask],
            self.received[mask],
            self.devices[mask],
        )

    def without(self, indices: I64) -> Columns:
        """The readings less those at ``indices``."""
        keep = np.ones(len(self.rows), dtype=np.bool_)
        keep[indices] = False
        return self.take(keep)

    def merged(self, other: Columns) -> Columns:
        """Both sorted by channel and time, ``other`` of channels this one has none of: one set
        of columns sorted the same way, by insertion rather than sorting again."""
        # where each of ``other`` goes, once for all five columns (np.insert would redo it)
        placed = np.searchsorted(self.rows, other.rows) + np.arange(len(other.rows))
        mine = np.ones(len(self.rows) + len(other.rows), dtype=np.bool_)
        mine[placed] = False
        columns: list[Any] = []
        for own, added in zip(self, other, strict=True):
            column = np.empty(len(mine), dtype=own.dtype)
            column[mine] = own
            column[placed] = added
            columns.append(column)
        return Columns(*columns)

    @staticmethod
    def join(parts: list[Columns]) -> Columns:
        """All parts, one after the other."""
        if len(parts) == 1:
            return parts[0]
        return Columns(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.received for p in parts]),
            np.concatenate([p.devices for p in parts]),
        )


class HeldColumns(msgspec.Struct, array_like=True):
    """Readings waiting for their channels' watermarks, as raw numpy arrays."""

    rows: bytes
    ts: bytes
    values: bytes
    received: bytes
    devices: bytes

    def arrays(self) -> Columns:
        """The five columns as numpy views."""
        return Columns(
            np.frombuffer(self.rows, dtype=np.int64),
            np.frombuffer(self.ts, dtype=np.int64),
            np.frombuffer(self.values, dtype=np.float64),
            np.frombuffer(self.received, dtype=np.int64),
            np.frombuffer(self.devices, dtype=np.int64),
        )

    @classmethod
    def of(cls, columns: Columns) -> HeldColumns:
        """Pack five columns."""
        return cls(
            columns.rows.tobytes(),
            columns.ts.tobytes(),
            columns.values.tobytes(),
            columns.received.tobytes(),
            columns.devices.tobytes(),
        )


def sorted_by_channel(readings: Columns) -> Columns:
    """Readings by channel, then time.

    One int64 key and a stable sort: readings arrive as runs already in order (a gateway's batch
    per channel, the held rest of the last release), which timsort merges in near-linear time.
    """
    rows, ts = readings.rows, readings.ts
    if len(rows) < 2:
        return readings
    span = ts - ts.min()
    if int(span.max()) >= KEY_SPAN:
        # the contract's event times span 100 years, more than the key holds: sort on both
        return readings.take(np.lexsort((ts, rows)))
    key = (rows << 41) | span  # 2**41 ms is 69 years; rows stay below 2**22
    if not bool((key[1:] < key[:-1]).any()):
        return readings
    return readings.take(np.argsort(key, kind="stable"))


KEY_SPAN = 2**41


NO_ROWS = np.empty(0, dtype=np.int64)


def ranges(first: I64, last: I64) -> I64:
    """The indices from each ``first`` up to its ``last`` (excluded), one range after the
    other."""
    lengths = last - first
    total = int(lengths.sum())
    if not total:
        return NO_ROWS
    before = np.cumsum(lengths) - lengths  # where each range starts in the result
    indices: I64 = np.arange(total, dtype=np.int64) + np.repeat(first - before, lengths)
    return indices


EMPTY_COLUMNS = Columns(
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.float64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
)
