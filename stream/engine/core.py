"""The rule engine: readings in, deviations out, on event time. Pure: time is data.

How it judges
-------------
The plan is compiled into a channel table: one row per (site, asset, channel, unit), with the
rules' limits and the channel's state (last sample, start of the current flat run, whether a
rule is engaged) in numpy arrays.

``submit`` routes a gateway's readings to rows and holds them. ``advance(now)`` releases, for each
channel, the held readings at or below its watermark: the newest timestamp seen on the channel
minus its allowed lateness (bounded out-of-orderness, per channel, in the device's own time, so a
device whose clock is off is not judged against the stream's). A channel that has received
nothing for its allowed lateness (in the stream's time, ``now``) is idle and releases everything
it holds. Released readings are sorted by channel and time, so readings that came out of order
within the allowed lateness are judged at their timestamps, in order. A reading older than what
its channel has already judged arrived too late: it is counted and reported, never judged out
of order (and still stored by the runtime); within its asset's ``late_judge_s`` it is judged
apart, at its own time, against the retained history, and flagged found late
(:mod:`stream.engine.late`).

Released readings are screened with vector checks: within the quiet band of every limit on the
channel, a plausible rate of change, no flat line near its limit, no gap near the silence limit,
and no rule engaged. A channel whose readings all pass only has its state row updated; the others
go, sample by sample, through the channel's rule machines (:mod:`stream.engine.machines`). Most
readings are quiet, which is what makes the engine fast.

``advance`` also fires timers: a channel that has received nothing for longer than its silence
limit (in the stream's time) opens a "monitoring lost" deviation, with no sample needed, starting
at its last sample and detected at the last sample plus the limit. A channel not heard from since
the service started (or restarted from a snapshot) is given the plan's start-up grace first: its
silence clock starts at the grace's end (see :meth:`Engine.excuse_outage`).

``now`` and each batch's receive time are data: the wall clock when live, the newest event time
seen when replaying a file. Calling ``advance`` every few thousand readings (or every ~100 ms)
amortizes the vector work; a replay calls it on a fixed count, so it is deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from milkguard.contract.v1 import Event, Reading
from stream.engine.columns import Columns
from stream.engine.compile import compile_plan
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.devices import Devices
from stream.engine.judging import Judge
from stream.engine.kinds import PlanContext
from stream.engine.late import LateJudge
from stream.engine.machines import Derived
from stream.engine.notices import EngineCounters, Notice, is_power_of_ten
from stream.engine.routing import NOTHING_LEFT_OUT, Routed, Router, UnitMismatch
from stream.engine.snapshots import SNAPSHOT_FORMAT, EngineParts, SnapshotMismatch
from stream.engine.snapshots import decode as decode_snapshot
from stream.engine.snapshots import encode as encode_snapshot
from stream.engine.snapshots import restore as restore_snapshot
from stream.engine.watermarks import Held
from stream.plan import LoadedPlan

__all__ = [
    "SNAPSHOT_FORMAT",
    "Engine",
    "EngineCounters",
    "Notice",
    "Routed",
    "SnapshotMismatch",
    "UnitMismatch",
    "is_power_of_ten",
]


class Engine:
    """Judges readings against a loaded HACCP plan, on event time.

    A facade over its parts: the channel table (:mod:`stream.engine.table`), compiled with every
    rule's machine through the registry of rule kinds (:mod:`stream.engine.compile`), the router
    of gateways' readings to rows (:mod:`stream.engine.routing`), the held readings and their
    watermarks (:mod:`stream.engine.watermarks`), the judge with the screen, the machines and the
    timers (:mod:`stream.engine.judging`, :mod:`stream.engine.screen`) and the snapshots
    (:mod:`stream.engine.snapshots`).
    """

    def __init__(self, loaded: LoadedPlan, *, screen: bool = True) -> None:
        self.plan = loaded
        self.counters = EngineCounters()
        self.notices: list[Notice] = []
        #: holding times and F0s computed while judging, for the runtime to store and clear
        self.derived: list[Derived] = []
        context = PlanContext(loaded, {}, self.derived)
        compiled = compile_plan(loaded, context)
        self._table = compiled.table
        self._assets = compiled.assets
        self._silence = compiled.silence
        self._devices = Devices(context)
        self._clocks = self._devices.clocks  # each device's clock (read only)
        self._router = Router(compiled.table, compiled.index, compiled.by_name)
        # screen=False sends every reading through the machines: the benchmark's "before"
        self._judge = Judge(compiled, self._devices, self.counters, self.notices, screen=screen)
        # late readings: the judged history retained, and late ones judged at their own time
        self._late = LateJudge(
            loaded,
            compiled.table,
            compiled.assets,
            devices=self._devices,
            judge=self._judge,
            counters=self.counters,
            derived=self.derived,
        )
        self._held = Held(compiled.table, self._devices, compiled.joined_groups, self._came_late)

    def _parts(self) -> EngineParts:
        return EngineParts(
            self.plan,
            self._table,
            self._held,
            self._judge,
            self._devices,
            self._router,
            self._assets,
            self._silence,
            self.counters,
            self._late,
        )

    def _came_late(self, late: Columns) -> None:
        """Readings behind their channels' judged time: counted, and judged apart."""
        self._judge.report_late(late.rows, late.ts)
        self._late.hold(late)

    # ---------------------------------------------------------------- input

    @property
    def channel_names(self) -> list[tuple[str, str, str]]:
        """(site, asset, channel) of each channel row (read only)."""
        return self._table.names

    @property
    def channel_keys(self) -> list[tuple[str, str, str]]:
        """(asset, channel, unit) of each channel row, as readings carry them (read only)."""
        return self._table.keys

    @property
    def now(self) -> int:
        """The engine's clock: the latest ``now`` it was advanced to (-1 before the first)."""
        return self._table.now

    def expected_unit(self, site: str, reading: Reading) -> str | None:
        """The unit the plan declares for a reading's channel, or None if the plan lacks it."""
        return self._router.expected_unit(site, reading.asset, reading.channel)

    def submit(
        self,
        site: str,
        device: str,
        readings: list[Reading],
        received_ms: int,
        horizon_ms: int | None = None,
    ) -> Routed:
        """Hold a gateway's readings until their channels' watermarks pass them.

        Returns what was not held: readings whose unit differs from the plan's (not judged: a
        value in another unit checked against the plan's limit would be a false verdict either
        way), readings of channels the plan does not know (counted, noticed once), and, when
        ``horizon_ms`` is given, readings of planned channels outside their unit's plausible
        bounds or stamped after ``horizon_ms`` (one vector step here, where the values are
        columns already, rather than a Python loop per reading at the boundary).
        """
        if not readings:
            return NOTHING_LEFT_OUT
        count = len(readings)
        rows, layout, known = self._router.rows_of(site, device, readings)
        left_out = NOTHING_LEFT_OUT
        if layout is None and not bool(rows.min() >= 0):
            rows_list, readings, left_out = self._router.route_misses(
                site, rows.tolist(), readings, self.counters, self.notices
            )
            count = len(readings)
            rows = np.array(rows_list, dtype=np.int64)
        # lists, not arrays, per batch: a drained queue's are made arrays at once at the release.
        # Comprehensions, not map(attrgetter): the interpreter reads a struct's field through
        # its slot directly, about twice as fast per reading (measured on Python 3.11)
        ts: list[int] = [r.ts for r in readings]
        values: list[float] = [r.value for r in readings]
        newest = max(ts, default=-1)
        if horizon_ms is not None and not (
            # the usual batch, in one step: within the bounds all of its channels share, and
            # finite (a sum of values this bounded is infinite or NaN only if one of them is)
            layout is not None
            and layout.lowest <= min(values)
            and max(values) <= layout.highest
            and newest <= horizon_ms
            and math.isfinite(sum(values))
        ):
            rows, ts, values, refused = self._router.refused(rows, ts, values, horizon_ms)
            if refused:
                left_out = Routed(
                    left_out.mismatches, left_out.unplanned, [readings[i] for i in refused]
                )
                count = len(rows)
        if not count:
            return left_out
        self.counters.submitted += count
        if not known and len(rows) and bool(self._table.ccp[rows].any()):
            # a device that reports CCP channels has its clock held to the plan's tolerance
            self._devices.serves_ccp(device)
        self._held.add(rows, ts, values, received_ms, self._devices.code_of(device))
        if left_out is NOTHING_LEFT_OUT:
            keys = layout.keys if layout is not None else None
            return Routed([], [], [], rows, keys, ts, values, newest)
        return left_out

    def clock(
        self, site: str, device: str, sent_at: int, received_ms: int, synced: bool | None = None
    ) -> None:
        """One batch's clocks: the device's offset is re-estimated, and a CCP device whose clock
        is off by more than the plan's tolerance, or which reports its clock unsynchronised
        (``synced=False``), is a time-sync fault."""
        change = self._devices.clock(site, device, sent_at, received_ms, synced)
        if change is not None:
            self._judge.event_changes.append(change)

    def offset_ms(self, device: str) -> int:
        """The device clock's estimated offset from the stream's (ahead: positive)."""
        return self._devices.offset_ms(device)

    def submit_events(self, site: str, events: list[Event]) -> int:
        """Take a gateway's events into the state of their assets; returns how many name an
        asset the plan does not know (counted there, not here).

        Events apply in event-time order. One older than what its asset's channels have already
        judged still counts from now on, but cannot change verdicts already given: it is counted
        as a late event.
        """
        return self._judge.take_events(site, events)

    # ---------------------------------------------------------------- judging

    def advance(self, now_ms: int, out: list[DeviationChange]) -> None:
        """Move the clock to ``now_ms``, judge what the watermarks release, fire timers."""
        table, judge = self._table, self._judge
        said = len(out)
        table.now = max(table.now, now_ms)
        if table.started < 0:
            table.started = table.now
        for change in judge.event_changes:
            judge.record(change, out)
        judge.event_changes = []
        self._release(out, everything=False)
        judge.fire_silence(out)
        judge.fire_timers(self._held.holding, out)
        self._late.noted(out[said:])

    def flush(self, out: list[DeviationChange]) -> None:
        """Judge everything held, as at the end of a replayed file (every channel idle)."""
        said = len(out)
        self._release(out, everything=True)
        self._late.noted(out[said:])

    def _release(self, out: list[DeviationChange], *, everything: bool) -> None:
        """Judge what the watermarks release (see :meth:`stream.engine.watermarks.Held.release`)."""
        said = len(out)
        readings = self._held.release(everything=everything)
        if len(readings.rows):
            self._late.retain(readings)
            self._judge.judge(readings, out)
        if self._late.pending:
            self._late.noted(out[said:])  # what the on-time readings just said comes first
            self._late.judge(out)

    # ---------------------------------------------------------------- state

    def excuse_outage(self, now_ms: int) -> None:
        """The stream was down until ``now_ms`` and restarts from a snapshot: a new run of the
        service starts there, and every channel not heard from since is given the plan's
        start-up grace, as at a fresh start, so what its gateway sent meanwhile (which the
        broker holds and sends first) comes in before the channel can look silent.

        A silence open before the restart stays open, the same deviation. A channel that stays
        silent beyond the grace opens its "monitoring lost" from its last sample, exactly the
        record (and id) it would have had without the restart; only the stream learns of it
        later. A channel heard before is also taken as heard at ``now_ms`` for its watermark
        and deadlines, so its held readings wait for the backlog."""
        table = self._table
        heard = table.last_received >= 0
        table.last_received[heard] = np.maximum(table.last_received[heard], now_ms)
        table.started = table.heard_after = now_ms
        table.next_silence = -1

    def take_notices(self) -> list[Notice]:
        """The notices gathered since the last call."""
        notices = list(self.notices)
        self.notices.clear()
        return notices

    def open_deviations(self) -> list[Deviation]:
        """Deviations open now, e.g. to report at shutdown that they are still open."""
        return self._judge.open_deviations()

    @property
    def held(self) -> int:
        """Readings waiting for their watermark."""
        return len(self._held)

    def snapshot(self) -> bytes:
        """Everything needed to carry on after a restart exactly as without it."""
        return encode_snapshot(self._parts())

    @classmethod
    def restore(cls, loaded: LoadedPlan, data: bytes) -> Engine:
        """An engine that carries on from a snapshot taken under the same plan version."""
        state = decode_snapshot(loaded, data)
        try:
            engine = cls(loaded)
            restore_snapshot(engine._parts(), state)
        except SnapshotMismatch:
            raise
        except Exception as exc:  # it decoded, but does not fit: corrupt, or not ours
            raise SnapshotMismatch(
                f"snapshot does not fit plan {loaded.state_version} "
                f"({type(exc).__name__}: {exc}); starting from fresh state"
            ) from exc
        return engine
