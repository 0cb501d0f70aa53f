"""The channel table: one row per planned (site, asset, channel, unit), as numpy arrays.

What the plan says of each channel (its quiet band, silence limit, allowed lateness, plausible
bounds) and what the stream knows of it (last sample, newest timestamp, when it was last heard
from, whether a rule is engaged or it has gone silent), side by side, so the screen, the
watermarks and the silence timer work on all channels in one vector step. Also the stream's
clock (``now``, ``started``), which every one of those steps reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from stream.engine.columns import F64, I64, NO_ROWS, B

#: the arrays that change as readings are judged: what a snapshot keeps, in this order
STATE_ARRAYS = (
    "last_ts",
    "newest",
    "last_received",
    "last_value",
    "run_start",
    "last_device",
    "late_count",
    "busy",
    "silent",
)
_OPEN = 2**62  # the end of a cleaning window still going on
_KEPT_WINDOWS = 64  # cleaning windows remembered per asset (older ones are long judged)


class AssetState(msgspec.Struct):
    """What the engine knows of one asset from its events: cleaning (CIP) windows so far."""

    rows: list[int]
    cleaning: list[list[int]] = msgspec.field(default_factory=list)  # [start, end or _OPEN]

    def cleaning_since(self, ts: int) -> int:
        """The start of the cleaning window ``ts`` falls in, or -1."""
        for start, end in reversed(self.cleaning):
            if start <= ts < end:
                return start
            if end <= ts:
                return -1
        return -1

    def cleaning_started(self, ts: int) -> None:
        """A CIP start. One stamped before the last window ended is an old event delivered
        again (at least once): taking it would open a window overlapping the closed one."""
        last_end = self.cleaning[-1][1] if self.cleaning else -1
        if last_end != _OPEN and last_end <= ts:
            self.cleaning.append([ts, _OPEN])
            del self.cleaning[:-_KEPT_WINDOWS]

    def cleaning_ended(self, ts: int) -> None:
        """A CIP end closes the open window."""
        if self.cleaning:
            window = self.cleaning[-1]
            if window[1] == _OPEN and ts >= window[0]:
                window[1] = ts


@dataclass(slots=True, eq=False)
class ChannelTable:
    """Every channel's plan and state, one row each (see the module docstring)."""

    names: list[tuple[str, str, str]]  # (site, asset, channel)
    keys: list[tuple[str, str, str]]  # (asset, channel, unit), as readings carry them
    asset_of_row: list[AssetState]
    # the plan: the quiet band of each channel's rules, limits, bounds
    lo: F64
    hi: F64
    max_rate: F64
    flat_ms: I64
    silence_ms: I64
    lateness_ms: I64
    ccp: B
    plausible_lo: F64
    plausible_hi: F64
    #: rows a multi-channel rule reads: never screened, judged merged in time order
    joined: B
    #: at equal corrected times, a valve's state (rank 0) goes before a temperature
    join_rank: I64
    #: the plan's start-up grace: a channel not heard from since ``started`` is not silent
    #: before it has passed (see :attr:`unheard_from`)
    grace_ms: int = 0
    # the stream's clock: the latest ``now`` it was advanced to, and when this run of the
    # service started (the first ``now``, or the restart: ``Engine.excuse_outage``)
    now: int = -1
    started: int = -1
    #: a channel last heard at or before this was not heard from in this run (-1: a fresh run)
    heard_after: int = -1
    next_silence: int = -1  # the stream time before which no channel goes silent
    last_ts: I64 = field(init=False)
    newest: I64 = field(init=False)
    last_received: I64 = field(init=False)
    last_value: F64 = field(init=False)
    run_start: I64 = field(init=False)
    last_device: I64 = field(init=False)
    late_count: I64 = field(init=False)
    busy: B = field(init=False)
    silent: B = field(init=False)
    joined_rows: I64 = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        self.last_ts = np.full(n, -1, dtype=np.int64)
        self.newest = np.full(n, -1, dtype=np.int64)
        self.last_received = np.full(n, -1, dtype=np.int64)
        self.last_value = np.zeros(n, dtype=np.float64)
        self.run_start = np.zeros(n, dtype=np.int64)
        self.last_device = np.zeros(n, dtype=np.int64)
        self.late_count = np.zeros(n, dtype=np.int64)
        self.busy = np.zeros(n, dtype=np.bool_)
        self.silent = np.zeros(n, dtype=np.bool_)
        self.joined_rows = np.flatnonzero(self.joined) if len(self.joined) else NO_ROWS

    def __len__(self) -> int:
        return len(self.names)

    @property
    def unheard_from(self) -> int:
        """When the silence clock of a channel not heard from in this run starts: the end of the
        start-up grace."""
        return self.started + self.grace_ms
