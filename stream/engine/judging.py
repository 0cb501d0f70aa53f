"""Judging: released readings through the screen and the rule machines, events into the
machines, and the timers (silence, and every rule kind that has timers).

The screen (:func:`stream.engine.screen.screen_quiet`) lets a channel whose readings are all
quiet through in one vector step: only its state row is updated. The others go, sample by
sample, through the machines that read the channel (:meth:`Judge.judge_channel`); channels one
rule reads together are merged in time order first (:meth:`Judge.judge_joined`). Every machine
is driven through the same contract (:class:`stream.engine.kinds.RuleMachine`), whatever its
kind.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Delivery,
    Event,
    Pickup,
    Receipt,
    RunEnd,
    RunStart,
    SiloTransfer,
)
from stream.engine.clocks import join_order
from stream.engine.columns import I64, NEVER, B, Columns
from stream.engine.compile import BoundRule, CompiledPlan
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.devices import Devices
from stream.engine.kinds import RuleMachine
from stream.engine.machines import Handover, Sample
from stream.engine.notices import EngineCounters, Notice, is_power_of_ten
from stream.engine.screen import screen_quiet

_EVENT_TS = attrgetter("ts")


class Judge:
    """The machines of a compiled plan, and how readings, events and timers reach them."""

    __slots__ = (
        "_assets",
        "_by_asset",
        "_devices",
        "_of_row",
        "_rules",
        "_screen",
        "_screened",
        "_silence",
        "_table",
        "_timed",
        "_timed_machines",
        "_timed_rows",
        "counters",
        "event_changes",
        "notices",
    )

    def __init__(
        self,
        compiled: CompiledPlan,
        devices: Devices,
        counters: EngineCounters,
        notices: list[Notice],
        *,
        screen: bool = True,
    ) -> None:
        self._table = compiled.table
        self._devices = devices
        self._assets = compiled.assets
        self._silence = compiled.silence
        self._rules = compiled.rules
        self._of_row = compiled.of_row
        self._by_asset = compiled.by_asset
        self._timed = compiled.timed
        # the row each timed rule's timers run on (-1: the stream's clock), for one vector step
        # per advance rather than a few scalar reads of the table per rule
        self._timed_machines = [bound.machine for bound in compiled.timed]
        self._timed_rows = np.array(
            [-1 if b.compiled.home_row is None else b.compiled.home_row for b in compiled.timed],
            dtype=np.int64,
        )
        # a row's busy flag follows the machines that screen its samples (joined rows never are)
        self._screened: list[list[RuleMachine]] = [[] for _ in compiled.of_row]
        for bound in compiled.rules:
            if not bound.compiled.joined:
                for row in bound.compiled.reads.values():
                    self._screened[row].append(bound.machine)
        # screen=False sends every reading through the machines: the benchmark's "before"
        self._screen = screen
        self.counters = counters
        self.notices = notices
        self.event_changes: list[DeviationChange] = []  # from events, handed out by advance

    @property
    def rules(self) -> list[BoundRule]:
        """Every rule's machine, by stage, then in the plan's order (read only)."""
        return self._rules

    def judge(self, readings: Columns, out: list[DeviationChange]) -> None:
        """Judge readings sorted by channel, then time."""
        rows, ts = readings.rows, readings.ts
        n = len(rows)
        if n > 1:
            repeat = np.zeros(n, dtype=np.bool_)
            repeat[1:] = (rows[1:] == rows[:-1]) & (ts[1:] == ts[:-1])
            if repeat.any():
                # the same channel and timestamp twice (e.g. two gateways relaying one sensor)
                self.counters.duplicates += int(repeat.sum())
                readings = readings.take(~repeat)
                rows, ts = readings.rows, readings.ts
                n = len(rows)
        self.counters.judged += n
        quiet, starts, ends, run_start = screen_quiet(readings, self._table)
        if self._table.silent[rows[starts]].any():
            self._table.next_silence = -1  # heard from again: its silence can come again
        values, devices = readings.values, readings.devices
        if not self._screen:
            quiet[:] = False
        group_quiet = np.logical_and.reduceat(quiet, starts) & ~self._table.joined[rows[starts]]
        done = ends[group_quiet]
        done_rows = rows[done]
        self._table.last_ts[done_rows] = ts[done]
        self._table.last_value[done_rows] = values[done]
        self._table.run_start[done_rows] = run_start[done]
        self._table.last_device[done_rows] = devices[done]
        if not group_quiet.all():
            joined: list[int] = []
            for group in np.flatnonzero(~group_quiet).tolist():
                lo, hi = int(starts[group]), int(ends[group]) + 1
                if self._table.joined[rows[lo]]:
                    joined.extend(range(lo, hi))
                else:
                    self.judge_channel(int(rows[lo]), readings.take(np.arange(lo, hi)), out)
            if joined:
                self.judge_joined(readings.take(np.array(joined, dtype=np.int64)), out)

    def judge_joined(self, readings: Columns, out: list[DeviationChange]) -> None:
        """Channels read together by one rule: one sample at a time, in time order across them,
        so each sees the others' state as it was then. At equal times a valve's state comes
        first: a temperature is judged with the flow direction of that instant."""
        # on corrected time: two devices' clocks may disagree (estimated offsets, ahead positive)
        names, received = self._devices.names, readings.received.tolist()
        offsets = [
            self._devices.offset_when(names[code], got)
            for code, got in zip(readings.devices.tolist(), received, strict=True)
        ]
        rank = self._table.join_rank[readings.rows]
        order = join_order(readings.rows, readings.ts, readings.devices, offsets, rank)
        for index in order:
            row = int(readings.rows[index])
            self.judge_channel(row, readings.take(np.array([index])), out)

    def judge_channel(self, row: int, readings: Columns, out: list[DeviationChange]) -> None:
        """The scalar path: one channel's samples, in order, through its rule machines."""
        stamps: list[int] = readings.ts.tolist()
        values: list[float] = readings.values.tolist()
        received: list[int] = readings.received.tolist()
        devices: list[int] = readings.devices.tolist()
        prev_ts = int(self._table.last_ts[row])
        prev_value = float(self._table.last_value[row])
        run_start = int(self._table.run_start[row])
        silence_ms = int(self._table.silence_ms[row])
        silence = self._silence[row]
        machines = self._of_row[row]
        asset = self._table.asset_of_row[row]
        cleans = bool(asset.cleaning)
        for ts, value, got, code in zip(stamps, values, received, devices, strict=True):
            if prev_ts < 0 or value != prev_value:
                run_start = ts
            device = self._devices.names[code]
            offset = self._devices.offset_when(device, got)
            # how long after it was taken the stream got it, both on the stream's clock
            late = got - (ts - offset) > silence_ms
            sample = Sample(ts, value, prev_ts, prev_value, run_start, device, late)
            sample.offset_ms = offset
            if cleans:
                sample.cleaning_since = asset.cleaning_since(ts)
                sample.prev_cleaning = prev_ts >= 0 and asset.cleaning_since(prev_ts) >= 0
            base = prev_ts if prev_ts >= 0 else self._table.unheard_from
            if silence.open_deviation is None and ts - base > silence_ms:
                # the gap is seen only now (no timer ran in it): open it where the timer would
                self.record(silence.open_at(base, device, never_heard=prev_ts < 0), out)
            if silence.open_deviation is not None:
                self.record(silence.observe(sample), out)
            for machine, role in machines:
                for change in machine.on_sample(role, sample):
                    self.record(change, out)
            prev_ts, prev_value = ts, value
        self._table.last_ts[row] = prev_ts
        self._table.last_value[row] = prev_value
        self._table.run_start[row] = run_start
        self._table.last_device[row] = devices[-1]
        self._table.silent[row] = False
        self._table.busy[row] = any(machine.engaged for machine in self._screened[row])

    def record(self, change: DeviationChange | None, out: list[DeviationChange]) -> None:
        """A machine's change, out and counted."""
        if change is None:
            return
        out.append(change)
        if change.kind == "opened":
            self.counters.opened += 1
        else:
            self.counters.closed += 1

    def report_late(self, rows: I64, ts: I64) -> None:
        """Readings that came after their channel had judged past them: counted, noticed for
        the 1st, 10th, 100th, ... of a channel, not judged."""
        self.counters.late += len(rows)
        for row, stamp in zip(rows.tolist(), ts.tolist(), strict=True):
            self._table.late_count[row] += 1
            count = int(self._table.late_count[row])
            if is_power_of_ten(count):
                site, asset, channel = self._table.names[row]
                self.notices.append(Notice("late", site, asset, channel, stamp, count))

    def fire_silence(self, out: list[DeviationChange]) -> None:
        """Channels silent in the stream's time, past their silence limit: "monitoring lost"
        opens with no sample needed, from the last sample, detected at it plus the limit. A
        channel not heard from in this run of the service counts from the start-up grace's
        end."""
        # silent in the stream's time: nothing received for longer than the limit
        if self._table.now < self._table.next_silence:
            return  # no channel can have gone silent yet: no need to look at each
        table = self._table
        heard = table.silence_clocks()
        # past the silence limit, and past the allowed lateness in which samples may still come
        silent_after = heard + self._table.silence_ms + self._table.lateness_ms
        waited = self._table.now > silent_after
        due = ~self._table.silent & waited
        # the next time one may: arrivals only move it later, and a channel heard from again
        # after its silence sets it back (see _judge_channel)
        self._table.next_silence = int(
            np.where(self._table.silent | due, NEVER, silent_after + 1).min()
        )
        if not due.any():
            return
        # a channel still holding samples is not silent; unless they are stamped ahead of the
        # clock (an outlier within the future tolerance), which must not mask a real silence
        holding = np.flatnonzero(due & (self._table.newest > self._table.last_ts))
        if len(holding):
            ahead = self._table.newest[holding] > self._devices.device_now(
                self._table.last_device[holding], self._table.now
            )
            due[holding] = ahead
            if not ahead.all():
                # they may be judged and still be silent (their channel's readings wait for
                # another's): look again at the next advance
                self._table.next_silence = min(self._table.next_silence, self._table.now)
            if not due.any():
                return
        # the deviation starts in the device's time, at its last sample (see SilenceMachine)
        for row in np.flatnonzero(due).tolist():
            device = self._devices.names[int(table.last_device[row])]
            last = int(table.last_ts[row])
            opened = self._silence[row].open_at(
                last if last >= 0 else table.unheard_from, device, never_heard=last < 0
            )
            self.record(opened, out)
            self._table.silent[row] = True
            self._table.busy[row] = True

    # ---------------------------------------------------------------- events

    def take_events(self, site: str, events: list[Event]) -> int:
        """See :meth:`stream.engine.core.Engine.submit_events`."""
        unknown = 0
        assets = self._assets
        for event in sorted(events, key=_EVENT_TS):
            places = event_places(site, event)
            # an event that moves milk (a pickup, a receipt into a silo, a run drawing from
            # silos) reaches every planned place it names, whether or not its reporter is
            # planned: the truck or the receiving bay may have no rules of its own
            moves = len(places) > 1 or isinstance(event, Delivery)
            if moves:
                self._dispatch(site, places, event)
            if isinstance(event, Pickup | Delivery):
                state = assets.get((site, event.compartment)) or assets.get((site, event.asset))
            else:  # the reporter, else the last planned place it names (the silo)
                state = assets.get((site, event.asset)) or next(
                    (assets[place] for place in reversed(places) if place in assets), None
                )
            if state is None:
                unknown += 1
                self.counters.unplanned_events += 1
                continue
            self.counters.events += 1
            if event.ts <= int(self._table.last_ts[state.rows].max()):
                self.counters.late_events += 1
            if isinstance(event, CipStart):
                state.cleaning_started(event.ts)
            elif isinstance(event, CipEnd):
                state.cleaning_ended(event.ts)
            elif not moves:
                self._dispatch(site, places, event)
        return unknown

    def _dispatch(self, site: str, places: list[tuple[str, str]], event: Event) -> None:
        """An event reported at ``site`` to the machines of the places it concerns
        (:func:`event_places`), in that order."""
        handover = Handover()
        busy = self._table.busy
        for place in places:
            for bound in self._by_asset.get(place, ()):
                machine = bound.machine
                self.event_changes.extend(machine.on_event(event, site, handover))
                row = bound.compiled.home_row
                if row is not None:
                    busy[row] = busy[row] or machine.engaged

    # ---------------------------------------------------------------- timers

    def fire_timers(self, holding: B, out: list[DeviationChange]) -> None:
        """Every timed rule's timers. A rule on a channel runs on the device's clock, estimated
        from its last sample and how long ago the stream heard from it, less the allowed
        lateness (a sample in time may still arrive within it)."""
        if not self._timed:
            return
        table = self._table
        now = table.now
        rows = self._timed_rows
        on_row = np.maximum(rows, 0)  # rules on the stream's clock read row 0, unused
        heard = table.last_received[on_row]
        last = table.last_ts[on_row]
        device_now = np.where((heard >= 0) & (last >= 0), last + (now - heard), now)
        device_now -= table.lateness_ms[on_row]
        names = self._devices.names
        busy = table.busy
        for machine, row, clock, code, held, was_busy in zip(
            self._timed_machines,
            rows.tolist(),
            device_now.tolist(),
            table.last_device[on_row].tolist(),
            holding[on_row].tolist(),
            busy[on_row].tolist(),
            strict=True,
        ):
            if row < 0:
                for change in machine.on_timer(now, now, "unknown", False):
                    self.record(change, out)
                continue
            changes = machine.on_timer(now, clock, names[code], held)
            if not changes:
                continue  # most ticks: nothing due, and a silent timer engages nothing
            for change in changes:
                self.record(change, out)
            if not was_busy and machine.engaged:
                busy[row] = True

    # ---------------------------------------------------------------- open deviations

    def open_deviations(self) -> list[Deviation]:
        """Deviations open now, in the order the engine has always listed them: the channel
        rules by channel, silences, joined rules, cooling, time sync, storage age, transport."""
        single = [bound for bound in self._rules if bound.kind.snapshot == "machines"]
        single.sort(key=lambda bound: min(bound.compiled.reads.values(), default=-1))
        found = [d for bound in single for d in bound.machine.open_deviations]
        found.extend(s.open_deviation for s in self._silence if s.open_deviation is not None)
        time_sync = [m.open_deviation for m in self._devices.time_sync.values() if m.open_deviation]
        late_stage = 3  # storage age and transport were listed after the time sync
        for bound in self._rules:
            if bound.kind.snapshot != "machines" and bound.kind.stage < late_stage:
                found.extend(bound.machine.open_deviations)
        found.extend(time_sync)
        for bound in self._rules:
            if bound.kind.snapshot != "machines" and bound.kind.stage >= late_stage:
                found.extend(bound.machine.open_deviations)
        return found


def event_places(site: str, event: Event) -> list[tuple[str, str]]:
    """The (site, asset) places an event concerns, in the order their machines take it: where
    milk comes from before where it goes, so a machine can hand the oldest milk on (a pickup:
    the farm tank, then the compartment; a receipt: the receiving bay, then the silo; a
    transfer: the silo drained, then the silo filled; a run: the line, then its source silos).
    """
    if isinstance(event, Pickup):
        return [(event.source_site, event.source_asset), (site, event.compartment)]
    if isinstance(event, Delivery):
        return [(site, event.compartment)]
    if isinstance(event, Receipt | SiloTransfer):
        return [(site, event.asset), (site, event.destination)]
    if isinstance(event, RunStart | RunEnd) and event.sources:
        return [(site, event.asset), *((site, draw.silo) for draw in event.sources)]
    return [(site, event.asset)]
