"""The vector screen: which released readings can change no rule's state.

A pure function over the readings' columns and the channel table. Readings that pass it only
update their channel's state row; the rest go, sample by sample, through the channel's rule
machines. Most readings are quiet, which is what makes the engine fast.
"""

from __future__ import annotations

import numpy as np

from stream.engine.columns import I64, B, Columns
from stream.engine.table import ChannelTable


def screen_quiet(readings: Columns, table: ChannelTable) -> tuple[B, I64, I64, I64]:
    """Which readings can change no rule's state: within every limit's band, a plausible
    step, no flat line or gap near its limit, no rule engaged. Also where each channel's
    readings start and end, and where the flat line each reading belongs to began."""
    rows, ts, values = readings.rows, readings.ts, readings.values
    n = len(rows)
    first = np.empty(n, dtype=np.bool_)
    first[0] = True
    first[1:] = rows[1:] != rows[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], n) - 1
    prev_ts = np.empty(n, dtype=np.int64)
    prev_ts[1:] = ts[:-1]
    prev_ts[starts] = table.last_ts[rows[starts]]
    prev_value = np.empty(n, dtype=np.float64)
    prev_value[1:] = values[:-1]
    prev_value[starts] = table.last_value[rows[starts]]
    seen = prev_ts >= 0
    # start of the exact flat line each sample belongs to
    fresh = ~seen | (values != prev_value)
    anchor = np.where(fresh, ts, table.run_start[rows])
    position = np.where(fresh | first, np.arange(n), 0)
    np.maximum.accumulate(position, out=position)
    run_start = anchor[position]
    base = np.where(seen, prev_ts, table.unheard_from)
    gap = ts - base
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite step is implausible
        step = np.abs(values - prev_value)
    quiet = (
        (values >= table.lo[rows])
        & (values <= table.hi[rows])
        & ~table.busy[rows]
        & (gap <= table.silence_ms[rows])
        & (~seen | (step <= table.max_rate[rows] * (ts - prev_ts)))
        & ((ts - run_start) < table.flat_ms[rows])
    )
    return quiet, starts, ends, run_start
