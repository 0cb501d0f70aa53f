"""Watermarks and held readings: which readings a release lets go to be judged.

For each channel, the held readings at or below its watermark are released: the newest
timestamp seen on the channel minus its allowed lateness (bounded out-of-orderness, per channel,
in the device's own time). A channel that has received nothing for its allowed lateness (in the
stream's time) is idle and releases everything it holds. A reading older than what its channel
has already judged arrived late: :meth:`Held.take_fresh` takes it out and hands it on (to be
counted, and judged apart: :mod:`stream.engine.late`).

The held readings are kept as five numpy columns sorted by channel and time; a release touches
only the channels that may let readings go, and avoids copying the columns where it can (see
:meth:`Held.release` and :meth:`Held._keep_held`).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

import numpy as np

from stream.engine.columns import (
    EMPTY_COLUMNS,
    I64,
    NEVER,
    NO_ROWS,
    Columns,
    HeldColumns,
    ranges,
    sorted_by_channel,
)
from stream.engine.devices import Devices
from stream.engine.table import ChannelTable


class Held:
    """Readings waiting for their channels' watermarks."""

    __slots__ = (
        "_ahead_rows",
        "_devices",
        "_incoming",
        "_joined_groups",
        "_next_idle",
        "_on_late",
        "_table",
        "columns",
        "holding",
    )

    def __init__(
        self,
        table: ChannelTable,
        devices: Devices,
        joined_groups: list[I64],
        on_late: Callable[[Columns], None],
    ) -> None:
        self._table = table
        self._devices = devices
        self._joined_groups = joined_groups
        #: told of the readings its channels had judged past already (rows, timestamps)
        self._on_late = on_late
        # readings of each submit since the last release: (rows, ts, values, received, device)
        self._incoming: list[tuple[I64, list[int], list[float], int, int]] = []
        self.columns = EMPTY_COLUMNS  # sorted by channel and time
        # channels holding readings, and the stream time before which none of them goes idle
        self.holding = np.zeros(len(table), dtype=np.bool_)
        self._next_idle = -1
        self._ahead_rows = NO_ROWS  # channels holding a reading stamped ahead of the clock

    def __len__(self) -> int:
        return len(self.columns.rows) + sum(len(part[0]) for part in self._incoming)

    def add(self, rows: I64, ts: list[int], values: list[float], received: int, code: int) -> None:
        """One submit's readings. Whether one is late, and when its channel was last heard
        from, are settled at the next release in one vector step: nothing is judged in between,
        so it is the same."""
        self._incoming.append((rows, ts, values, received, code))

    def restore(self, held: HeldColumns) -> None:
        """Take back a snapshot's held readings."""
        columns = held.arrays()  # read only (views of the snapshot's bytes): releases write
        self.columns = sorted_by_channel(
            Columns(
                columns.rows.copy(),
                columns.ts.copy(),
                columns.values.copy(),
                columns.received.copy(),
                columns.devices.copy(),
            )
        )
        self.holding[self.columns.rows] = True
        self._ahead_rows = np.unique(self.columns.rows)  # looked at once, at the next release

    def merged(self) -> HeldColumns:
        """Every reading held, packed for a snapshot: what came since the last release is
        folded in first, without judging anything (it updates the table's arrays)."""
        fresh = self.take_fresh()
        if len(fresh.rows):
            # fold what came since the last release in, without judging anything
            self.columns = sorted_by_channel(Columns.join([self.columns, fresh]))
            self.holding[fresh.rows] = True
            self._next_idle = -1
            self._ahead_rows = np.unique(self.columns.rows)
        return HeldColumns.of(self.columns)

    def release(self, *, everything: bool) -> Columns:
        """The held readings the watermarks pass, to judge (sorted by channel and time), with
        the rest kept held.

        Held readings stay sorted by channel and time between releases. A release looks only at
        the channels that may let readings go: those that received some (their watermark moved),
        those gone idle since (:attr:`_next_idle` says when one may), those holding a reading
        stamped ahead of the clock, and the channels rules read together. The others' readings
        stay where they are, unsorted again and their watermarks not recomputed.
        """
        fresh = self.take_fresh()
        held = self.columns
        if everything:
            readings = sorted_by_channel(Columns.join([held, fresh])) if len(held.rows) else fresh
            self.columns = EMPTY_COLUMNS
            self.holding[:] = False
            self._ahead_rows = NO_ROWS
            return readings
        due = self._due_rows(fresh)
        if not len(due):
            return EMPTY_COLUMNS
        held = self.columns
        taken = self._held_of(due)
        # every held reading's channel due (a drained queue from every gateway, the usual
        # case): all of them are candidates, with no copy of the five columns
        part = held if len(taken) == len(held.rows) else held.take(taken)
        candidates = sorted_by_channel(Columns.join([part, fresh])) if len(taken) else fresh
        self.holding[due] = False
        if not len(candidates.rows):
            return EMPTY_COLUMNS
        rows, ts = candidates.rows, candidates.ts
        marks = np.empty(len(self._table.names), dtype=np.int64)
        marks[due] = self._watermarks(due)
        ready = ts <= marks[rows]
        ahead = ts > self._table.now
        if ahead.any():
            # nothing is judged before the stream's clock reaches it on its device's clock:
            # an idle channel would otherwise release one reading stamped ahead (within the
            # future tolerance) at once, and every real reading before it would be late
            ready[ahead] &= ts[ahead] <= self._devices.device_now(
                candidates.devices[ahead], self._table.now
            )
        kept = EMPTY_COLUMNS
        if not ready.all():
            kept = candidates.take(~ready)
            candidates = candidates.take(ready)
            self.holding[kept.rows] = True
            soonest = self._table.last_received[kept.rows] + self._table.lateness_ms[kept.rows]
            self._next_idle = min(self._next_idle, int(soonest.min()))
        self._ahead_rows = (
            np.unique(kept.rows[kept.ts > self._table.now]) if len(kept.rows) else NO_ROWS
        )
        self._keep_held(taken, kept)
        return candidates

    def _held_of(self, due: I64) -> I64:
        """Where the held readings of the ``due`` channels are (held is sorted by channel:
        a binary search each)."""
        rows = self.columns.rows
        if not len(rows):
            return NO_ROWS
        if len(due) == len(self._table.names):
            return np.arange(len(rows), dtype=np.int64)  # every channel: no search needed
        return ranges(
            np.searchsorted(rows, due, side="left"), np.searchsorted(rows, due, side="right")
        )

    def _keep_held(self, taken: I64, kept: Columns) -> None:
        """Held readings once those at ``taken`` were released, with ``kept`` held back.

        Mostly a channel holds as many readings after a release as before (one came, one went):
        then the kept ones take the released ones' places, with no pass over everything held.
        """
        held = self.columns
        if len(taken) == len(held.rows):
            self.columns = kept  # all were taken: what stays is what was kept, sorted already
            return
        if len(kept.rows) == len(taken) and bool((held.rows[taken] == kept.rows).all()):
            for own, stays in zip(held, kept, strict=True):
                own[taken] = stays
            return
        rest = held.without(taken) if len(taken) else held
        if not len(rest.rows):
            self.columns = kept
        elif len(kept.rows):
            self.columns = rest.merged(kept)
        else:
            self.columns = rest

    def _due_rows(self, fresh: Columns) -> I64:
        """The channels (sorted) whose held readings a release must look at: see
        :meth:`_release`."""
        parts = [part for part in (self._ahead_rows, self._table.joined_rows) if len(part)]
        if len(fresh.rows):
            rows = fresh.rows
            ends = np.empty(len(rows), dtype=np.bool_)
            ends[-1] = True
            ends[:-1] = rows[1:] != rows[:-1]
            parts.append(rows[ends])
        if self._table.now >= self._next_idle:
            # the channels gone idle since, and when the next may (their arrivals only move on)
            waiting_until = np.where(
                self.holding, self._table.last_received + self._table.lateness_ms, NEVER
            )
            idle = waiting_until <= self._table.now
            parts.append(np.flatnonzero(idle))
            self._next_idle = int(np.where(idle, NEVER, waiting_until).min())
        if len(parts) == 1:
            return parts[0]  # sorted and unique already
        if not parts:
            return NO_ROWS
        due = np.zeros(len(self._table.names), dtype=np.bool_)  # cheaper than sorting the union
        for part in parts:
            due[part] = True
        return np.flatnonzero(due)

    def take_fresh(self) -> Columns:
        """What came since the last release, sorted by channel and time: late readings counted
        and dropped, each channel's arrival and newest timestamp noted."""
        incoming, self._incoming = self._incoming, []
        if not incoming:
            return EMPTY_COLUMNS
        sizes = [len(part[0]) for part in incoming]
        count = sum(sizes)
        fresh = Columns(
            np.concatenate([part[0] for part in incoming]),
            np.fromiter(chain.from_iterable(part[1] for part in incoming), np.int64, count),
            np.fromiter(chain.from_iterable(part[2] for part in incoming), np.float64, count),
            np.repeat(np.array([part[3] for part in incoming], dtype=np.int64), sizes),
            np.repeat(np.array([part[4] for part in incoming], dtype=np.int64), sizes),
        )
        late = fresh.ts <= self._table.last_ts[fresh.rows]
        if late.any():
            self._on_late(fresh.take(late))
            fresh = fresh.take(~late)
        if not len(fresh.rows):
            return EMPTY_COLUMNS
        # submits are in arrival order, so the last write per channel is the latest
        self._table.last_received[fresh.rows] = fresh.received
        # a receive time earlier than one before (a clock that went back) brings silence nearer
        silent_after = (
            fresh.received
            + self._table.silence_ms[fresh.rows]
            + self._table.lateness_ms[fresh.rows]
        )
        self._table.next_silence = min(self._table.next_silence, int(silent_after.min()) + 1)
        fresh = sorted_by_channel(fresh)
        rows = fresh.rows
        ends = np.empty(len(rows), dtype=np.bool_)
        ends[-1] = True
        ends[:-1] = rows[1:] != rows[:-1]
        ended = rows[ends]
        self._table.newest[ended] = np.maximum(self._table.newest[ended], fresh.ts[ends])
        return fresh

    def _watermarks(self, rows: I64) -> I64:
        """The watermarks of ``rows`` (sorted, holding every channel of a rule that reads
        several): each channel's newest timestamp less its allowed lateness, or no limit when it
        has been idle that long. The channels one rule reads together share the lowest of theirs
        (on corrected time), so none is judged ahead of another's earlier samples."""
        idle = self._table.now - self._table.last_received[rows] >= self._table.lateness_ms[rows]
        marks = np.where(idle, NEVER, self._table.newest[rows] - self._table.lateness_ms[rows])
        for group in self._joined_groups:
            at = np.searchsorted(rows, group)
            offsets = np.array(
                [
                    self._devices.offset_ms(self._devices.names[int(d)])
                    for d in self._table.last_device[group]
                ],
                dtype=np.int64,
            )
            corrected = np.where(marks[at] == NEVER, NEVER, marks[at] - offsets)
            lowest = corrected.min()
            marks[at] = lowest if lowest == NEVER else lowest + offsets
        return marks
