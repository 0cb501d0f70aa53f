"""Late readings: judged at their own event time, within a bound, flagged as found late.

A reading older than what its channel has already judged (a gateway's backlog after a link drop,
sent after its live data) is held here instead of dropped, and judged at the next release:

- **within the bound**: stamped no more than the asset's ``late_judge_s`` (plan default 3600 s)
  behind its channel's judged time, and after the oldest history still retained for it. Older
  ones are counted (``late_beyond_bound``) and stored by the runtime as before, never judged.
- **a repeat changes nothing**: a late reading with the channel and timestamp of one already
  judged (retained, or earlier in the same late batch) is dropped; so is the same backlog sent
  twice, since a judged late reading is retained like an on-time one.

How it is judged: a **fresh** copy of each rule machine that reads the channel (critical limits,
stuck sensor, rate of change; the HTST and UHT machines over all their channels, merged on
corrected time with the valve first at equal times) is run over the channel's retained history
merged with the late readings, from a little before the first late reading (the rule's own
duration: a sustained limit's, a flat line's; plus the sample before, for a step, the valve state
and the official thermometer) on, until it is past the last late reading and no longer engaged.
The copy judges exactly as the on-time path would have judged had the readings come in time, so
each rule gets what it alone can decide (a critical limit at its sample, the HTST temperature
with the valve state of that instant, holding time, recorder against indicating, UHT F0) and what
needs the history around it (a sustained limit completed only by late readings, a flat line, a
step) from the same code; the deviation's start and end come from the readings (the end: the
first sample back within the limit, late or retained).

What the copy finds is only published if it does not overlap (same rule, intervals touching or
overlapping) any deviation that rule has raised: a bounded record of recent deviation intervals
per rule (and the live machine's open one) is kept for that. So no verdict is ever unsaid: a late
reading never closes, changes or removes a published deviation, never reopens or duplicates one.
The published deviation is flagged ``detected_late``. If the copy is still engaged at the end of
the history (a breach the live stream is in the middle of, made sustained by the backlog), and the
live machine has nothing open, the live machine takes the copy's state, so the deviation the copy
opened is closed by the on-time stream like any other, once.

Why a fresh copy rather than a "late" method per machine: the machines stay as they are (one
judgement, written once), a new rule kind needs nothing here, and the live machine's state is
never touched while it has something published.

Not re-judged (counted in ``late_unrejudged``, one per late reading of a channel with such a
rule): cooling deadlines (a deadline that already fired stays as fired), transport exposure, and
gaps ("monitoring lost" stays as raised: no verdict is unsaid). Their late readings still count
for the other rules of the channel.

Retaining history is cheap on the on-time path: each release's judged columns are kept as they
are (a list append, no copy, no per-reading object), up to ``_RETAINED_READINGS`` readings in all
(oldest release first out; the newest judged timestamp each channel lost is remembered, so a late
reading that would need history no longer retained counts as beyond the bound rather than judged
on half its context). Looking up a channel's history is a binary search per kept release, on the
late path only. The snapshot keeps the history within the bound, the late readings not yet
judged and the deviation intervals, so a restart judges a backlog exactly as without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec.structs import replace

from stream.engine.deviation import DeviationChange
from stream.engine.htst import Derived, HtstMachine, UhtMachine
from stream.engine.machines import Machine, Sample, with_deviation
from stream.plan import LoadedPlan

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: judged readings kept in all (5 columns of 8 bytes: 10 MB at most, in memory and in a
#: checkpoint; an hour of 70 channels at 1 Hz)
_RETAINED_READINGS = 250_000
#: releases kept apart before the oldest half are merged (bounds the late path's searches)
_RETAINED_RELEASES = 2048
#: deviation intervals remembered per rule (older ones lie beyond any bound in practice)
_INTERVALS_PER_RULE = 64
_OPEN = 2**62  # the end of a deviation still open


class Readings(NamedTuple):
    """Readings as five aligned columns, sorted by channel row, then time (the engine's)."""

    rows: I64
    ts: I64
    values: F64
    received: I64
    devices: I64

    def take(self, index: npt.NDArray[Any]) -> Readings:
        """The readings at ``index`` (positions or a boolean mask)."""
        return Readings(*(column[index] for column in self))

    @staticmethod
    def join(parts: list[Readings]) -> Readings:
        """All parts one after the other."""
        if len(parts) == 1:
            return parts[0]
        return Readings(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))

    def sorted(self) -> Readings:
        """By channel row, then time (stable: a retained reading stays before a late one)."""
        return self.take(np.lexsort((self.ts, self.rows)))

    def of_rows(self, rows: I64) -> Readings:
        """The readings of the channel rows ``rows`` (sorted): a binary search each."""
        first = np.searchsorted(self.rows, rows, side="left")
        last = np.searchsorted(self.rows, rows, side="right")
        lengths = last - first
        if not lengths.any():
            return _NONE
        before = np.cumsum(lengths) - lengths
        index = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(first - before, lengths)
        return self.take(index)


_NONE = Readings(
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.float64),
    np.empty(0, dtype=np.int64),
    np.empty(0, dtype=np.int64),
)


class _Counters(Protocol):
    late_judged: int
    late_beyond_bound: int
    late_unrejudged: int


class _AssetCleaning(Protocol):
    rows: list[int]
    cleaning: list[list[int]]

    def cleaning_since(self, ts: int) -> int: ...


class JudgingEngine(Protocol):
    """What the late path reads of the engine: its plan and channel rows, each channel's judged
    time and rule machines, and where it records a deviation change (the hooks it is called
    from are the engine's release, judging, recording and snapshot)."""

    plan: LoadedPlan
    _assets: dict[tuple[str, str], Any]
    _asset_of_row: list[Any]
    _last_ts: I64
    _busy: npt.NDArray[np.bool_]
    _machines: list[list[Machine]]
    _joined_machines: list[HtstMachine | UhtMachine]
    _joined_groups: list[I64]
    _joined_roles: dict[int, list[tuple[HtstMachine | UhtMachine, str]]]
    _join_rank: I64
    _cooling_of_row: dict[int, list[Any]]
    _transports_of_row: dict[int, list[Any]]
    _devices: list[str]
    derived: list[Derived]

    @property
    def counters(self) -> _Counters: ...

    @property
    def channel_names(self) -> list[tuple[str, str, str]]: ...

    def offset_ms(self, device: str) -> int: ...

    def _record(self, change: DeviationChange | None, out: list[DeviationChange]) -> None: ...


class LateState(msgspec.Struct, array_like=True):
    """What a snapshot keeps of the late path."""

    retained: list[bytes]  # the five columns of the history within the bound (unsorted)
    pending: list[bytes]  # late readings not judged yet
    coverage: bytes  # per channel row: the newest timestamp whose history was let go
    intervals: dict[str, list[tuple[str, int, int]]]  # rule -> (id, start, end) of deviations


class LateJudge:
    """The retained history of judged readings, and the judging of late ones (see the module)."""

    def __init__(self, engine: JudgingEngine) -> None:
        self._engine = engine
        plan = engine.plan.plan
        rows = len(engine.channel_names)
        self.bound_ms = np.zeros(rows, dtype=np.int64)
        for key, asset in plan.assets.items():
            seconds = asset.late_judge_s if asset.late_judge_s is not None else plan.late_judge_s
            state = engine._assets[(asset.site, asset.id or key)]
            self.bound_ms[state.rows] = round(seconds * 1000)
        self._judging = bool(self.bound_ms.any())
        self._releases: list[Readings] = []
        self._in_order: list[bool] = []  # whether each release is sorted by channel and time
        self._retained = 0
        self._coverage = np.full(rows, -1, dtype=np.int64)
        self._pending: list[Readings] = []
        self._intervals: dict[str, list[list[Any]]] = {}

    # ------------------------------------------------------------ on the on-time path

    def retain(self, judged: tuple[I64, I64, F64, I64, I64]) -> None:
        """Keep a release's judged readings (sorted by channel, then time) as they are."""
        if not self._judging:
            return
        self._releases.append(Readings._make(judged))
        self._in_order.append(True)
        self._retained += len(judged[0])
        if self._retained > _RETAINED_READINGS:
            self._let_go()
        elif len(self._releases) > _RETAINED_RELEASES:
            half = _RETAINED_RELEASES // 2
            # joined, not sorted: the late path sorts one when it first looks into it
            self._releases[:half] = [Readings.join(self._releases[:half])]
            self._in_order[:half] = [False]

    def _let_go(self) -> None:
        """Forget the oldest readings until a quarter of the room is free again: whole releases
        first, then the oldest readings of the next (a merged one may be large)."""
        target = _RETAINED_READINGS * 3 // 4
        while self._retained > target and self._releases:
            oldest = self._releases[0]
            excess = self._retained - target
            in_order = self._in_order[0]
            if len(oldest.rows) <= excess:
                self._releases.pop(0)
                self._in_order.pop(0)
                self._forget(oldest, in_order=in_order)
                continue
            cutoff = np.partition(oldest.ts, excess)[excess]
            gone = oldest.ts < cutoff
            self._releases[0] = oldest.take(~gone)
            self._forget(oldest.take(gone), in_order=in_order)
            break

    def _forget(self, gone: Readings, *, in_order: bool) -> None:
        """Readings let go: each channel's history is complete only after the newest of its
        readings let go."""
        self._retained -= len(gone.rows)
        if not len(gone.rows):
            return
        if not in_order:
            np.maximum.at(self._coverage, gone.rows, gone.ts)
            return
        rows = gone.rows
        ends = np.empty(len(rows), dtype=np.bool_)
        ends[-1] = True
        ends[:-1] = rows[1:] != rows[:-1]
        ended = rows[ends]
        # sorted by channel, then time: the last of each channel is its newest
        self._coverage[ended] = np.maximum(self._coverage[ended], gone.ts[ends])

    def noted(self, change: DeviationChange) -> None:
        """A deviation opened or closed (by any path): its interval, for the overlap check."""
        deviation = change.deviation
        key = _rule_key(deviation.rule_id, deviation.site, deviation.asset)
        intervals = self._intervals.setdefault(key, [])
        end = deviation.end_ms if deviation.end_ms is not None else _OPEN
        if change.kind == "closed":
            for interval in reversed(intervals):
                if interval[0] == deviation.id:
                    interval[2] = end
                    return
        intervals.append([deviation.id, deviation.start_ms, end])
        del intervals[:-_INTERVALS_PER_RULE]

    def hold(self, late: tuple[I64, I64, F64, I64, I64]) -> None:
        """Readings found behind their channels' judged time: judged at the next release."""
        self._pending.append(Readings._make(late))

    @property
    def pending(self) -> bool:
        """Late readings wait to be judged."""
        return bool(self._pending)

    # ------------------------------------------------------------ the late path

    def judge(self, out: list[DeviationChange]) -> None:
        """Judge the late readings held since the last call (see the module)."""
        engine = self._engine
        counters = engine.counters
        late = Readings.join(self._pending).sorted()
        self._pending = []
        rows, ts = late.rows, late.ts
        bound = self.bound_ms[rows]
        within = (ts >= engine._last_ts[rows] - bound) & (ts > self._coverage[rows]) & (bound > 0)
        counters.late_beyond_bound += int(len(rows) - within.sum())
        if not within.any():
            return
        late = late.take(within)
        wanted = set(np.unique(late.rows).tolist())
        groups = [
            g
            for g, group in enumerate(engine._joined_groups)
            if wanted.intersection(group.tolist())
        ]
        for g in groups:
            wanted.update(engine._joined_groups[g].tolist())
        history = self._history(np.array(sorted(wanted), dtype=np.int64))
        merged, is_late = self._merge(history, late)
        if not is_late.any():
            return  # every one a repeat of a reading judged
        late = merged.take(is_late)
        counters.late_judged += len(late.rows)
        for row in np.unique(late.rows).tolist():
            if engine._cooling_of_row.get(row) or engine._transports_of_row.get(row):
                counters.late_unrejudged += int((late.rows == row).sum())
            if engine._machines[row]:
                at = merged.rows == row
                self._rejudge_channel(row, merged.take(at), is_late[at], out)
        for g in groups:
            at = np.isin(merged.rows, engine._joined_groups[g])
            if is_late[at].any():
                self._rejudge_joined(g, merged.take(at), is_late[at], out)
        self._releases.append(late)
        self._in_order.append(True)
        self._retained += len(late.rows)
        if self._retained > _RETAINED_READINGS:
            self._let_go()

    def _history(self, rows: I64) -> Readings:
        """The retained readings of ``rows``, sorted by channel, then time."""
        for at, in_order in enumerate(self._in_order):
            if not in_order:
                self._releases[at] = self._releases[at].sorted()
                self._in_order[at] = True
        parts = [part for release in self._releases if len((part := release.of_rows(rows)).rows)]
        return Readings.join(parts).sorted() if parts else _NONE

    @staticmethod
    def _merge(history: Readings, late: Readings) -> tuple[Readings, npt.NDArray[np.bool_]]:
        """History and late readings by channel and time, with which are late; a late reading
        with the channel and time of one before it (judged, or earlier in the batch) is left
        out, and so is a retained repeat."""
        both = Readings.join([history, late])
        origin = np.concatenate(
            [np.zeros(len(history.rows), dtype=np.int8), np.ones(len(late.rows), dtype=np.int8)]
        )
        order = np.lexsort((origin, both.ts, both.rows))
        both, origin = both.take(order), origin[order]
        repeat = np.zeros(len(both.rows), dtype=np.bool_)
        repeat[1:] = (both.rows[1:] == both.rows[:-1]) & (both.ts[1:] == both.ts[:-1])
        keep = ~repeat
        return both.take(keep), origin[keep] == 1

    def _sample(
        self,
        row: int,
        ts: int,
        value: float,
        *,
        prev: tuple[int, float, int],
        code: int,
        late: bool,
    ) -> Sample:
        engine = self._engine
        prev_ts, prev_value, run_start = prev
        device = engine._devices[code] if code < len(engine._devices) else "unknown"
        sample = Sample(ts, value, prev_ts, prev_value, run_start, device, late)
        sample.offset_ms = engine.offset_ms(device)
        asset = engine._asset_of_row[row]
        if asset.cleaning:
            sample.cleaning_since = asset.cleaning_since(ts)
            sample.prev_cleaning = prev_ts >= 0 and asset.cleaning_since(prev_ts) >= 0
        return sample

    def _rejudge_channel(
        self, row: int, merged: Readings, is_late: npt.NDArray[np.bool_], out: list[DeviationChange]
    ) -> None:
        """A fresh copy of each of the channel's machines over its history with the late
        readings in it."""
        engine = self._engine
        live = engine._machines[row]
        lookback = max(max(m.spec.sustained_ms, m.spec.flat_ms) for m in live)
        late_at = np.flatnonzero(is_late)
        first_late, last_late = int(late_at[0]), int(late_at[-1])
        stamps: list[int] = merged.ts.tolist()
        values: list[float] = merged.values.tolist()
        codes: list[int] = merged.devices.tolist()
        lates: list[bool] = is_late.tolist()
        since = stamps[first_late] - lookback
        start = max(0, int(np.searchsorted(merged.ts, since, side="left")) - 1)
        fresh: list[Machine] = [type(m)(m.spec) for m in live]
        found: list[list[DeviationChange]] = [[] for _ in live]
        prev: tuple[int, float, int] = (-1, 0.0, -1)
        if start > 0:
            prev = (stamps[start - 1], values[start - 1], stamps[start - 1])
        to_the_end = True
        for i in range(start, len(stamps)):
            # one sample past the last late one at least: the step out of it
            if i > last_late + 1 and not any(m.engaged for m in fresh):
                to_the_end = False
                break
            ts, value = stamps[i], values[i]
            run_start = prev[2] if prev[0] >= 0 and value == prev[1] else ts
            sample = self._sample(row, ts, value, prev=prev, code=codes[i], late=lates[i])
            sample.run_start = run_start
            for machine, changes in zip(fresh, found, strict=True):
                change = machine.observe(sample)
                if change is not None:
                    changes.append(change)
            prev = (ts, value, run_start)
        for machine, copy, changes in zip(live, fresh, found, strict=True):
            self._settle(
                machine,
                copy,
                changes,
                first_late=stamps[first_late],
                to_the_end=to_the_end,
                out=out,
            )
        engine._busy[row] = engine._busy[row] or any(m.engaged for m in live)

    def _rejudge_joined(
        self, g: int, merged: Readings, is_late: npt.NDArray[np.bool_], out: list[DeviationChange]
    ) -> None:
        """A fresh copy of a rule that reads several channels together, over their history
        merged on corrected time (the valve first at equal times), from the sample before the
        first late reading on each channel."""
        engine = self._engine
        live = engine._joined_machines[g]
        computed: list[Derived] = []
        fresh: HtstMachine | UhtMachine = live.fresh(computed)
        offsets = np.array(
            [engine.offset_ms(engine._devices[int(c)]) for c in merged.devices], dtype=np.int64
        )
        corrected = merged.ts - offsets
        order = np.lexsort((merged.rows, engine._join_rank[merged.rows], corrected))
        merged, is_late, corrected = merged.take(order), is_late[order], corrected[order]
        late_at = np.flatnonzero(is_late)
        first_late, last_late = int(late_at[0]), int(late_at[-1])
        since = int(corrected[first_late])
        # each channel's last sample before the first late one: the valve's state, the official
        # thermometer, the flow, as they were then
        start = first_late
        for row in np.unique(merged.rows).tolist():
            before = np.flatnonzero((merged.rows == row) & (corrected < since))
            if len(before):
                start = min(start, int(before[-1]))
        roles = {
            row: [role for machine, role in engine._joined_roles[row] if machine is live]
            for row in np.unique(merged.rows).tolist()
        }
        prev: dict[int, tuple[int, float, int]] = {}
        rows: list[int] = merged.rows.tolist()
        stamps: list[int] = merged.ts.tolist()
        values: list[float] = merged.values.tolist()
        codes: list[int] = merged.devices.tolist()
        lates: list[bool] = is_late.tolist()
        found: dict[str, list[DeviationChange]] = {m.spec.rule_id: [] for m in live.machines}
        to_the_end = True
        for i in range(start, len(rows)):
            # one sample of each channel past the last late one at least (its state counts)
            if i > last_late + len(roles) and not any(m.engaged for m in fresh.machines):
                to_the_end = False
                break
            row, ts, value = rows[i], stamps[i], values[i]
            last = prev.get(row, (-1, 0.0, -1))
            run_start = last[2] if last[0] >= 0 and value == last[1] else ts
            sample = self._sample(row, ts, value, prev=last, code=codes[i], late=lates[i])
            sample.run_start = run_start
            for role in roles[row]:
                for change in fresh.observe(role, sample):
                    found[change.deviation.rule_id].append(change)
            prev[row] = (ts, value, run_start)
        # holding times and F0s at the late readings are new, for the store (the others are kept)
        sources = [row for row, played in roles.items() if {"flow", "outlet"} & set(played)]
        late_ts = set(merged.ts[is_late & np.isin(merged.rows, sources)].tolist())
        engine.derived.extend(d for d in computed if d.ts in late_ts)
        first = int(merged.ts[first_late])
        for machine, copy in zip(live.machines, fresh.machines, strict=True):
            changes = found[machine.spec.rule_id]
            self._settle(machine, copy, changes, first_late=first, to_the_end=to_the_end, out=out)

    def _settle(
        self,
        live: Machine,
        copy: Machine,
        changes: list[DeviationChange],
        *,
        first_late: int,
        to_the_end: bool,
        out: list[DeviationChange],
    ) -> None:
        """Publish what the copy found that no deviation of the rule already covers; hand the
        copy's state to the live machine when it ran to the end and the live one has nothing
        open (a breach going on now that the late readings made a deviation).

        A deviation found that began before one already said (the backlog shows the breach
        began earlier than the live data did) is published up to where the said one begins:
        the product of those seconds must be held too, and the said one stays as it is."""
        spec = live.spec
        key = _rule_key(spec.rule_id, spec.site, spec.asset)
        found: list[list[DeviationChange]] = []
        for change in changes:
            if change.kind == "opened":
                found.append([change])
            elif found:
                found[-1].append(change)
        published_open: str | None = None
        for pair in found:
            if self._publish(key, live, pair, first_late, out) and len(pair) == 1:
                published_open = pair[0].deviation.id
        if not to_the_end or live.open_deviation is not None:
            return
        still_open = copy.open_deviation
        if still_open is not None and still_open.id != published_open:
            return  # the copy's deviation was not published: the live one must not close it
        if copy.engaged or still_open is not None:
            if still_open is not None:
                still_open.detected_late = True
            live.restore(with_deviation(copy.state()))

    def _publish(
        self,
        key: str,
        live: Machine,
        pair: list[DeviationChange],
        first_late: int,
        out: list[DeviationChange],
    ) -> bool:
        """Publish one deviation the copy found (opened, and closed if it was), or the part of
        it before one already said; True if it was published whole."""
        opened, final = pair[0].deviation, pair[-1].deviation
        start = opened.start_ms
        end = final.end_ms if final.end_ms is not None else _OPEN
        if end < first_late:
            return False  # found without the late readings
        said_from = self._said_from(key, live, start, end)
        if said_from is not None:
            if said_from <= start:
                return False  # said already
            # said from ``said_from`` on: the part before it is new
            final = replace(
                final, status="closed", end_ms=said_from, time_beyond_s=(said_from - start) / 1000
            )
            pair = [pair[0], DeviationChange("closed", final)]
        for change in pair:
            said = change.deviation
            said.detected_late = True
            self._engine._record(DeviationChange(change.kind, said), out)
        return said_from is None

    def _said_from(self, key: str, live: Machine, start: int, end: int) -> int | None:
        """The earliest start of a deviation of this rule already said that touches ``start``
        to ``end`` (None: none does)."""
        starts = [
            begun
            for _, begun, ended in self._intervals.get(key, ())
            if begun <= end and start <= ended
        ]
        current = live.open_deviation
        if current is not None and current.start_ms <= end:
            starts.append(current.start_ms)
        return min(starts, default=None)

    # ------------------------------------------------------------ state

    def state(self, judged_ts: I64) -> LateState:
        """The snapshot's part: history within the bound of each channel's judged time."""
        retained = _NONE
        if self._releases:
            # not sorted here (a checkpoint a second must stay cheap): the restore sorts once
            retained = Readings.join(self._releases)
            retained = retained.take(
                retained.ts >= judged_ts[retained.rows] - self.bound_ms[retained.rows]
            )
        pending = Readings.join(self._pending) if self._pending else _NONE
        return LateState(
            retained=[column.tobytes() for column in retained],
            pending=[column.tobytes() for column in pending],
            coverage=self._coverage.tobytes(),
            intervals={
                key: [(str(i), int(s), int(e)) for i, s, e in spans]
                for key, spans in self._intervals.items()
            },
        )

    def restore(self, state: LateState) -> None:
        """Take back a snapshot's part."""
        retained = _columns(state.retained).sorted()
        if len(retained.rows):
            self._releases = [retained]
            self._in_order = [True]
            self._retained = len(retained.rows)
        pending = _columns(state.pending)
        if len(pending.rows):
            self._pending = [pending]
        self._coverage[:] = np.frombuffer(state.coverage, dtype=np.int64)
        self._intervals = {
            key: [[i, s, e] for i, s, e in spans] for key, spans in state.intervals.items()
        }


def _columns(raw: list[bytes]) -> Readings:
    """Five columns back from their bytes (copies: the late path appends and sorts them)."""
    rows, ts, values, received, devices = raw
    return Readings(
        np.frombuffer(rows, dtype=np.int64).copy(),
        np.frombuffer(ts, dtype=np.int64).copy(),
        np.frombuffer(values, dtype=np.float64).copy(),
        np.frombuffer(received, dtype=np.int64).copy(),
        np.frombuffer(devices, dtype=np.int64).copy(),
    )


def _rule_key(rule_id: str, site: str, asset: str) -> str:
    return f"{site}|{asset}|{rule_id}"


__all__ = ["JudgingEngine", "LateJudge", "LateState", "Readings"]
