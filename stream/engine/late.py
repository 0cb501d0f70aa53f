"""Late readings: judged at their own event time, within a bound, flagged as found late.

A reading older than what its channel has already judged (a gateway's backlog after a link drop,
sent after its live data) is held here instead of dropped, and judged at the next release:

- **within the bound**: stamped no more than the asset's ``late_judge_s`` (plan default 3600 s)
  behind its channel's judged time, and after the oldest history still retained for it. Older
  ones are counted (``late_beyond_bound``) and stored by the runtime as before, never judged.
- **a repeat changes nothing**: a late reading with the channel and timestamp of one already
  judged (retained, or earlier in the same late batch) is dropped; so is the same backlog sent
  twice, since a judged late reading is retained like an on-time one.

How it is judged: a **fresh** copy of each rule machine that reads the channel (its ``fresh``
method, :class:`stream.engine.kinds.RuleMachine`'s optional late hook: critical limits, stuck
sensor, rate of change; the HTST and UHT machines over all their channels, merged on corrected
time with the valve first at equal times) is run over the channel's retained history
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

Why a fresh copy rather than a "judge late" method per machine: the machines' judgement stays
written once, a new rule kind is re-judged by giving its machine ``fresh`` (a machine of the same
rule with no verdicts), and the live machine's state is never touched while it has something
published.

Not re-judged (counted in ``late_unrejudged``, one per late reading of a channel read by such a
rule): kinds whose machine has no ``fresh`` - cooling deadlines (a deadline that already fired
stays as fired), storage age, transport exposure - and gaps ("monitoring lost" stays as raised:
no verdict is unsaid). Their late readings still count for the other rules of the channel.

Retaining history is cheap on the on-time path: each release's judged columns are kept as they
are (a list append, no copy, no per-reading object), up to ``_RETAINED_READINGS`` readings in all
(oldest release first out; the newest judged timestamp each channel lost is remembered, so a late
reading that would need history no longer retained counts as beyond the bound rather than judged
on half its context). Looking up a channel's history is a binary search per kept release, on the
late path only. The snapshot keeps the history within the bound, the late readings not yet
judged and the deviation intervals, so a restart judges a backlog exactly as without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec.structs import replace

from stream.engine.clocks import join_order
from stream.engine.columns import EMPTY_COLUMNS, I64, Columns, HeldColumns, ranges
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.devices import Devices
from stream.engine.judging import Judge
from stream.engine.machines import Derived, Sample, with_deviation
from stream.engine.notices import EngineCounters
from stream.engine.table import AssetState, ChannelTable
from stream.plan import LoadedPlan

B = npt.NDArray[np.bool_]

#: judged readings kept in all (5 columns of 8 bytes: 10 MB at most, in memory and in a
#: checkpoint; an hour of 70 channels at 1 Hz)
_RETAINED_READINGS = 250_000
#: releases kept apart before the oldest half are joined (bounds the late path's searches)
_RETAINED_RELEASES = 2048
#: deviation intervals remembered per rule (older ones lie beyond any bound in practice)
_INTERVALS_PER_RULE = 64
_OPEN = 2**62  # the end of a deviation still open


class _Check(Protocol):
    """One check of a rule: a machine with one deviation at a time (a rule of one channel is
    one; a joined rule has several, its ``machines``)."""

    spec: Any

    @property
    def engaged(self) -> bool: ...

    @property
    def open_deviation(self) -> Deviation | None: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class _Rejudged(Protocol):
    """A rule machine as the late path drives a fresh copy of it."""

    @property
    def engaged(self) -> bool: ...

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]: ...


class LateState(msgspec.Struct, array_like=True):
    """What a snapshot keeps of the late path."""

    retained: HeldColumns  # the history within the bound (not sorted)
    pending: HeldColumns  # late readings not judged yet
    coverage: bytes  # per channel row: the newest timestamp whose history was let go
    intervals: dict[str, list[tuple[str, int, int]]]  # rule -> (id, start, end) of deviations


def _sorted(readings: Columns) -> Columns:
    """By channel row, then time (stable: a retained reading stays before a late one)."""
    return readings.take(np.lexsort((readings.ts, readings.rows)))


def _of_rows(readings: Columns, rows: I64) -> Columns:
    """The readings (sorted by channel) of the channel rows ``rows`` (sorted)."""
    first = np.searchsorted(readings.rows, rows, side="left")
    last = np.searchsorted(readings.rows, rows, side="right")
    return readings.take(ranges(first, last))


def _checks(machine: Any) -> tuple[_Check, ...]:
    """A rule machine's checks: its ``machines`` (a joined rule), or itself."""
    return tuple(getattr(machine, "machines", (machine,)))


class LateJudge:
    """The retained history of judged readings, and the judging of late ones (see the module)."""

    def __init__(
        self,
        loaded: LoadedPlan,
        table: ChannelTable,
        assets: dict[tuple[str, str], AssetState],
        *,
        devices: Devices,
        judge: Judge,
        counters: EngineCounters,
        derived: list[Derived],
    ) -> None:
        self._table = table
        self._devices = devices
        self._judge = judge
        self._counters = counters
        self._derived = derived
        plan = loaded.plan
        self.bound_ms = np.zeros(len(table.names), dtype=np.int64)
        for key, asset in plan.assets.items():
            seconds = asset.late_judge_s if asset.late_judge_s is not None else plan.late_judge_s
            self.bound_ms[assets[(asset.site, asset.id or key)].rows] = round(seconds * 1000)
        self._judging = bool(self.bound_ms.any())
        self._releases: list[Columns] = []
        self._in_order: list[bool] = []  # whether each release is sorted by channel and time
        self._retained = 0
        self._coverage = np.full(len(table.names), -1, dtype=np.int64)
        self._pending: list[Columns] = []
        self._intervals: dict[str, list[list[Any]]] = {}

    # ------------------------------------------------------------ on the on-time path

    def retain(self, judged: Columns) -> None:
        """Keep a release's readings (sorted by channel, then time) as they are: no copy."""
        if not self._judging:
            return
        self._releases.append(judged)
        self._in_order.append(True)
        self._retained += len(judged.rows)
        if self._retained > _RETAINED_READINGS:
            self._let_go()
        elif len(self._releases) > _RETAINED_RELEASES:
            half = _RETAINED_RELEASES // 2
            # joined, not sorted: the late path sorts one when it first looks into it
            self._releases[:half] = [Columns.join(self._releases[:half])]
            self._in_order[:half] = [False]

    def _let_go(self) -> None:
        """Forget the oldest readings until a quarter of the room is free again: whole releases
        first, then the oldest readings of the next (a joined one may be large)."""
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

    def _forget(self, gone: Columns, *, in_order: bool) -> None:
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

    def noted(self, changes: list[DeviationChange]) -> None:
        """Deviations opened or closed (by any path): their intervals, for the overlap check."""
        for change in changes:
            deviation = change.deviation
            key = _rule_key(deviation.rule_id, deviation.site, deviation.asset)
            intervals = self._intervals.setdefault(key, [])
            end = deviation.end_ms if deviation.end_ms is not None else _OPEN
            known = next((i for i in reversed(intervals) if i[0] == deviation.id), None)
            if known is not None:
                known[2] = end
                continue
            intervals.append([deviation.id, deviation.start_ms, end])
            del intervals[:-_INTERVALS_PER_RULE]

    def hold(self, late: Columns) -> None:
        """Readings found behind their channels' judged time: judged at the next release."""
        self._pending.append(late)

    @property
    def pending(self) -> bool:
        """Late readings wait to be judged."""
        return bool(self._pending)

    # ------------------------------------------------------------ the late path

    def judge(self, out: list[DeviationChange]) -> None:
        """Judge the late readings held since the last call (see the module)."""
        table, counters = self._table, self._counters
        late = _sorted(Columns.join(self._pending))
        self._pending = []
        rows, ts = late.rows, late.ts
        bound = self.bound_ms[rows]
        within = (ts >= table.last_ts[rows] - bound) & (ts > self._coverage[rows]) & (bound > 0)
        counters.late_beyond_bound += int(len(rows) - within.sum())
        if not within.any():
            return
        late = late.take(within)
        late_rows = set(np.unique(late.rows).tolist())
        rules = [b for b in self._judge.rules if late_rows.intersection(b.compiled.reads.values())]
        wanted = set(late_rows)
        for bound_rule in rules:
            wanted.update(bound_rule.compiled.reads.values())
        history = self._history(np.array(sorted(wanted), dtype=np.int64))
        merged, is_late = _merge(history, late)
        if not is_late.any():
            return  # every one a repeat of a reading judged
        late = merged.take(is_late)
        counters.late_judged += len(late.rows)
        unrejudged = np.zeros(len(table.names), dtype=np.bool_)
        for bound_rule in rules:
            machine = bound_rule.machine
            reads = bound_rule.compiled.reads
            computed: list[Derived] = []
            fresh = getattr(machine, "fresh", None)
            copy = fresh(computed) if fresh is not None else None
            if copy is None:
                unrejudged[list(reads.values())] = True
                continue
            at = np.isin(merged.rows, list(reads.values()))
            if is_late[at].any():
                self._rejudge(machine, copy, reads, merged.take(at), is_late=is_late[at], out=out)
                derived_at = [reads[r] for r in bound_rule.compiled.derived_at if r in reads]
                self._keep_derived(computed, derived_at, merged.take(at & is_late))
        counters.late_unrejudged += int(unrejudged[late.rows].sum())
        self._releases.append(late)
        self._in_order.append(True)
        self._retained += len(late.rows)
        if self._retained > _RETAINED_READINGS:
            self._let_go()

    def _history(self, rows: I64) -> Columns:
        """The retained readings of ``rows``, sorted by channel, then time."""
        for at, in_order in enumerate(self._in_order):
            if not in_order:
                self._releases[at] = _sorted(self._releases[at])
                self._in_order[at] = True
        parts = [part for release in self._releases if len((part := _of_rows(release, rows)).rows)]
        return _sorted(Columns.join(parts)) if parts else EMPTY_COLUMNS

    def _rejudge(
        self,
        live: Any,
        copy: _Rejudged,
        reads: dict[str, int],
        merged: Columns,
        *,
        is_late: B,
        out: list[DeviationChange],
    ) -> None:
        """A fresh copy of a rule over its channels' history with the late readings in it, in
        time order across them (corrected time, the valve first at equal times), from each
        channel's last sample before the first late reading less the rule's own duration, on
        until it is past the last late one (and one more sample of each channel) and not
        engaged; then :meth:`_settle` each of its checks."""
        table, devices = self._table, self._devices
        # each reading with the offset it is judged with live, ordered as live (see Judge)
        offsets = [
            devices.offset_when(devices.names[code], got)
            for code, got in zip(merged.devices.tolist(), merged.received.tolist(), strict=True)
        ]
        rank = table.join_rank[merged.rows]
        order = np.array(join_order(merged.rows, merged.ts, merged.devices, offsets, rank))
        corrected = (merged.ts - np.array(offsets, dtype=np.int64))[order]
        merged, is_late = merged.take(order), is_late[order]
        checks = _checks(live)
        lookback = max(max(c.spec.sustained_ms, c.spec.flat_ms) for c in checks)
        late_at = np.flatnonzero(is_late)
        first_late, last_late = int(late_at[0]), int(late_at[-1])
        since = int(corrected[first_late]) - lookback
        roles: dict[int, list[str]] = {}
        for role, row in reads.items():
            roles.setdefault(row, []).append(role)
        # each channel's sample before the window primes the rule (the valve's state, a step)
        start = first_late
        for row in roles:
            before = np.flatnonzero((merged.rows == row) & (corrected < since))
            if len(before):
                start = min(start, int(before[-1]))
        prev: dict[int, tuple[int, float, int]] = {}
        for row in roles:
            earlier = np.flatnonzero(merged.rows[:start] == row)
            if len(earlier):
                at = int(earlier[-1])
                prev[row] = (int(merged.ts[at]), float(merged.values[at]), int(merged.ts[at]))
        rows: list[int] = merged.rows.tolist()
        stamps: list[int] = merged.ts.tolist()
        values: list[float] = merged.values.tolist()
        codes: list[int] = merged.devices.tolist()
        received: list[int] = merged.received.tolist()
        lates: list[bool] = is_late.tolist()
        found: dict[str, list[DeviationChange]] = {c.spec.rule_id: [] for c in checks}
        to_the_end = True
        for i in range(start, len(rows)):
            if i > last_late + len(roles) and not copy.engaged:
                to_the_end = False
                break
            row, ts, value = rows[i], stamps[i], values[i]
            last = prev.get(row, (-1, 0.0, -1))
            run_start = last[2] if last[0] >= 0 and value == last[1] else ts
            sample = self._sample(
                row, ts, value, last, codes[i], received=received[i], late=lates[i]
            )
            sample.run_start = run_start
            for role in roles[row]:
                for change in copy.on_sample(role, sample):
                    found[change.deviation.rule_id].append(change)
            prev[row] = (ts, value, run_start)
        # on each clock a deviation may be stamped on: its device's, or the stream's (joined)
        first = {"device": int(merged.ts[first_late]), "stream": int(corrected[first_late])}
        for check, fresh_check in zip(checks, _checks(copy), strict=True):
            changes = found[check.spec.rule_id]
            self._settle(
                check, fresh_check, changes, first_late=first, to_the_end=to_the_end, out=out
            )
        for row in roles:
            table.busy[row] = table.busy[row] or any(c.engaged for c in checks)

    def _sample(
        self,
        row: int,
        ts: int,
        value: float,
        prev: tuple[int, float, int],
        code: int,
        *,
        received: int,
        late: bool,
    ) -> Sample:
        devices = self._devices
        device = devices.names[code] if code < len(devices.names) else "unknown"
        sample = Sample(ts, value, prev[0], prev[1], prev[2], device, late)
        sample.offset_ms = devices.offset_when(device, received)
        asset = self._table.asset_of_row[row]
        if asset.cleaning:
            sample.cleaning_since = asset.cleaning_since(ts)
            sample.prev_cleaning = prev[0] >= 0 and asset.cleaning_since(prev[0]) >= 0
        return sample

    def _keep_derived(self, computed: list[Derived], sources: list[int], late: Columns) -> None:
        """Holding times and F0s the copy computed at the late readings of the channels they
        come from (``sources``, the rule's ``derived_at``): new, for the store; the others are
        kept already."""
        stamps = set(late.ts[np.isin(late.rows, sources)].tolist())
        self._derived.extend(d for d in computed if d.ts in stamps)

    def _settle(
        self,
        live: _Check,
        copy: _Check,
        changes: list[DeviationChange],
        *,
        first_late: Mapping[str, int],
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
        live: _Check,
        pair: list[DeviationChange],
        first_late: Mapping[str, int],
        out: list[DeviationChange],
    ) -> bool:
        """Publish one deviation the copy found (opened, and closed if it was), or the part of
        it before one already said; True if it was published whole."""
        opened, final = pair[0].deviation, pair[-1].deviation
        start = opened.start_ms
        end = final.end_ms if final.end_ms is not None else _OPEN
        if end < first_late[opened.time_base]:
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
        said = []
        for change in pair:
            change.deviation.detected_late = True
            said.append(DeviationChange(change.kind, change.deviation))
            self._judge.record(said[-1], out)
        self.noted(said)
        return said_from is None

    def _said_from(self, key: str, live: _Check, start: int, end: int) -> int | None:
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

    def state(self) -> LateState:
        """The snapshot's part: history within the bound of each channel's judged time."""
        retained = EMPTY_COLUMNS
        if self._releases:
            # not sorted here (a checkpoint a second must stay cheap): the restore sorts once
            retained = Columns.join(self._releases)
            rows = retained.rows
            retained = retained.take(retained.ts >= self._table.last_ts[rows] - self.bound_ms[rows])
        pending = Columns.join(self._pending) if self._pending else EMPTY_COLUMNS
        return LateState(
            retained=HeldColumns.of(retained),
            pending=HeldColumns.of(pending),
            coverage=self._coverage.tobytes(),
            intervals={
                key: [(str(i), int(s), int(e)) for i, s, e in spans]
                for key, spans in self._intervals.items()
            },
        )

    def restore(self, state: LateState) -> None:
        """Take back a snapshot's part."""
        retained = _sorted(_copied(state.retained))
        if len(retained.rows):
            self._releases, self._in_order = [retained], [True]
            self._retained = len(retained.rows)
        pending = _copied(state.pending)
        if len(pending.rows):
            self._pending = [pending]
        self._coverage[:] = np.frombuffer(state.coverage, dtype=np.int64)
        self._intervals = {
            key: [[i, s, e] for i, s, e in spans] for key, spans in state.intervals.items()
        }


def _merge(history: Columns, late: Columns) -> tuple[Columns, B]:
    """History and late readings by channel and time, with which are late; a late reading with
    the channel and time of one before it (judged, or earlier in the batch) is left out."""
    both = Columns.join([history, late])
    origin = np.concatenate(
        [np.zeros(len(history.rows), dtype=np.int8), np.ones(len(late.rows), dtype=np.int8)]
    )
    order = np.lexsort((origin, both.ts, both.rows))
    both, origin = both.take(order), origin[order]
    repeat = np.zeros(len(both.rows), dtype=np.bool_)
    repeat[1:] = (both.rows[1:] == both.rows[:-1]) & (both.ts[1:] == both.ts[:-1])
    keep = ~repeat
    return both.take(keep), origin[keep] == 1


def _copied(held: HeldColumns) -> Columns:
    """A snapshot's columns as arrays of their own (the late path sorts and appends them)."""
    columns = held.arrays()
    return Columns(
        columns.rows.copy(),
        columns.ts.copy(),
        columns.values.copy(),
        columns.received.copy(),
        columns.devices.copy(),
    )


def _rule_key(rule_id: str, site: str, asset: str) -> str:
    return f"{site}|{asset}|{rule_id}"


__all__ = ["LateJudge", "LateState"]
