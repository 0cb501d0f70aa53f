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

A product change that comes after readings its asset judged (a gateway sending its events after
its readings) is treated the same way: the asset's rules that have ``fresh`` are re-judged over
the retained history from the change's time on (within the bound), by a copy that knows it, so
the new product's legal pair applies where it was in force; what that finds is published found
late as above. (The re-judge runs at the next release: an ingest submits a message's events and
readings and advances before any checkpoint, so a snapshot does not keep it.)

Not re-judged (counted in ``late_unrejudged``, one per late reading of a channel read by such a
rule): kinds whose machine has no ``fresh`` - cooling deadlines (a deadline that already fired
stays as fired), storage age, transport exposure - and gaps ("monitoring lost" stays as raised:
no verdict is unsaid). Their late readings still count for the other rules of the channel.

Retaining history is cheap on the on-time path: each release's judged columns are kept as they are
(a list append, no copy, no per-reading object), up to ``_RETAINED_READINGS`` readings in all (the
oldest readings by timestamp first out; the newest judged timestamp each channel lost is
remembered, so a late reading that would need history no longer retained counts as beyond the bound
rather than judged on half its context). Looking up a channel's history is a binary search per kept
release, on the late path only, over releases joined there so that each is more than twice the next
(a few searches, not one per message). A late batch is judged over the history around it: from its
oldest reading less the rules' longest duration (and each channel's last reading before) to a
minute past its newest, widened by the devices' clock offsets; a copy still engaged at the window's
end is run again over all of it. So a backlog sent one reading per message costs about a window per
message, not the whole history.

What a restart keeps. A snapshot keeps the late readings not yet judged, the deviation intervals
and how far back each channel's history is complete; the history itself (up to 10 MB) goes in a
full snapshot (``Engine.snapshot()``: an archive file's header, a test) but not in the light one
a runtime checkpoints every second (``history=False``): that runtime takes the releases kept
since its last checkpoint as a journal record (:meth:`LateJudge.take`, :mod:`stream.engine.history`)
and hands the journal back at restore, which keeps the same releases in the same order, so a
restart judges a backlog exactly as without it. Restored with neither (the history is lost: a
worker's partition, a journal gone), each channel's history counts as complete only after its
judged time at the snapshot: a late reading older than that is counted beyond the bound, never
judged on half its context.
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
from stream.engine.history import History
from stream.engine.history import decode as decode_history
from stream.engine.history import encode as encode_history
from stream.engine.judging import Judge
from stream.engine.machines import Derived, Sample, with_deviation
from stream.engine.notices import EngineCounters
from stream.engine.table import AssetState, ChannelTable
from stream.plan import LoadedPlan

B = npt.NDArray[np.bool_]

#: judged readings kept in all (5 columns of 8 bytes: 10 MB at most, in memory and in a full
#: snapshot; an hour of 70 channels at 1 Hz)
_RETAINED_READINGS = 250_000
#: a journal holding this many times the readings kept is begun again with only those (a whole
#: record), so it stays within a few caps however long the stream runs
_JOURNAL_CAPS = 2
#: releases kept apart before the oldest half are joined (bounds the late path's searches)
_RETAINED_RELEASES = 2048
#: deviation intervals remembered per rule (older ones lie beyond any bound in practice)
_INTERVALS_PER_RULE = 64
_OPEN = 2**62  # the end of a deviation still open
#: how far past the last late reading (and the rule's own duration) the history is taken at
#: first; a copy still engaged there is run again over all of it
_WINDOW_AFTER_MS = 60_000


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
    kept: bool = True  # ``retained`` holds the history (False: a light snapshot's, kept apart)


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
        self._assets = assets
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
        #: (site, asset) and time of product changes that came after readings they concern
        self._changed: list[tuple[tuple[str, str], int]] = []
        self._intervals: dict[str, list[list[Any]]] = {}
        # releases kept since the last journal record (see :meth:`take`); until a whole record
        # has been taken (or the engine was restored from a journal) none are tracked
        self._unsaved: list[Columns] = []
        self._unsaved_readings = 0
        self._whole_due = True
        self._journaled = 0  # readings in the records taken since the last whole one

    # ------------------------------------------------------------ on the on-time path

    def retain(self, judged: Columns) -> None:
        """Keep a release's readings (sorted by channel, then time) as they are: no copy."""
        if self._judging:
            self._keep(judged)

    def _keep(self, release: Columns, *, in_order: bool = True, journaled: bool = False) -> None:
        """Keep a release (judged on time, or late readings judged); ``journaled``: replayed
        from a journal at restore, not to be taken for it again."""
        self._releases.append(release)
        self._in_order.append(in_order)
        self._retained += len(release.rows)
        if not (journaled or self._whole_due):
            self._unsaved.append(release)
            self._unsaved_readings += len(release.rows)
            if self._unsaved_readings > _RETAINED_READINGS:
                # not taken for a whole cap's worth (no journal): the next record is whole
                self._unsaved, self._unsaved_readings, self._whole_due = [], 0, True
        if self._retained > _RETAINED_READINGS:
            self._let_go()
        elif len(self._releases) > _RETAINED_RELEASES:
            half = _RETAINED_RELEASES // 2
            # joined, not sorted: the late path sorts one when it first looks into it
            self._releases[:half] = [Columns.join(self._releases[:half])]
            self._in_order[:half] = [False]

    def _let_go(self) -> None:
        """Forget the oldest readings, by timestamp, until a quarter of the room is free again.
        By timestamp, not by release: which readings go then depends only on which are kept,
        not on how the late path has joined the releases since (a restart from the journal,
        whose releases are not joined the same way, lets the same ones go)."""
        excess = self._retained - _RETAINED_READINGS * 3 // 4
        if excess <= 0 or not self._releases:
            return
        stamps = np.concatenate([release.ts for release in self._releases])
        cutoff = np.partition(stamps, excess)[excess] if excess < len(stamps) else _OPEN
        releases, in_order = [], []
        for release, ordered in zip(self._releases, self._in_order, strict=True):
            gone = release.ts < cutoff
            kept = release
            if gone.any():
                self._forget(release.take(gone), in_order=ordered)
                kept = release.take(~gone)
            if len(kept.rows):
                releases.append(kept)
                in_order.append(ordered)
        self._releases, self._in_order = releases, in_order

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
            if len(intervals) > _INTERVALS_PER_RULE:
                # the oldest fold into one span said (no id): which deviations it held is
                # forgotten, that something was said there is not, so a late reading inside it
                # never raises a second one for the same seconds (a sensor flapping at its limit)
                old = intervals[: len(intervals) - _INTERVALS_PER_RULE + 1]
                intervals[: len(old)] = [["", min(i[1] for i in old), max(i[2] for i in old)]]

    def hold(self, late: Columns) -> None:
        """Readings found behind their channels' judged time: judged at the next release."""
        self._pending.append(late)

    def product_changed(self, site: str, asset: str, ts: int) -> None:
        """A product change at ``ts``: if its asset's channels judged past it already (a
        gateway that sends its events after its readings), the asset's rules are re-judged from
        ``ts`` at the next release, so the new product's pair is applied where it was in force
        (within the bound, like a late reading)."""
        state = self._assets.get((site, asset))
        if state is None or not len(state.rows):
            return
        judged = int(self._table.last_ts[state.rows].max())
        if ts <= judged and ts >= judged - int(self.bound_ms[state.rows].max()):
            self._changed.append(((site, asset), ts))

    @property
    def pending(self) -> bool:
        """Late readings (or late product changes) wait to be judged."""
        return bool(self._pending or self._changed)

    # ------------------------------------------------------------ the late path

    def judge(self, out: list[DeviationChange]) -> None:
        """Judge the late readings and product changes held since the last call (see the
        module)."""
        if self._changed:
            self._product_changes(out)
        if self._pending:
            self._late_readings(out)

    def _late_readings(self, out: list[DeviationChange]) -> None:
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
        wanted_rows = np.array(sorted(wanted), dtype=np.int64)
        # the history around the late readings only (see _window); all of it if a copy runs
        # past the window's end
        lo, hi, spread = self._window_bounds(int(late.ts.min()), int(late.ts.max()), rules)
        history, cut = self._history(wanted_rows, lo, hi)
        merged, is_late = _merge(history, late)
        if not is_late.any():
            return  # every one a repeat of a reading judged
        late = merged.take(is_late)
        counters.late_judged += len(late.rows)
        # readings at or before this corrected time are all in the window
        complete_until = hi - 2 * spread - 1 if cut else None
        whole: tuple[Columns, B] | None = None
        unrejudged = np.zeros(len(table.names), dtype=np.bool_)
        for bound_rule in rules:
            machine = bound_rule.machine
            reads = bound_rule.compiled.reads
            fresh = getattr(machine, "fresh", None)
            if fresh is None:
                unrejudged[list(reads.values())] = True
                continue
            at = np.isin(merged.rows, list(reads.values()))
            if not is_late[at].any():
                continue
            computed: list[Derived] = []
            done = self._rejudge(
                machine,
                fresh(computed),
                reads,
                merged.take(at),
                is_late=is_late[at],
                complete_until=complete_until,
                out=out,
            )
            if not done:  # the copy ran past the window: again, over all the history
                if whole is None:
                    whole = _merge(self._history(wanted_rows)[0], late)
                at = np.isin(whole[0].rows, list(reads.values()))
                computed = []
                self._rejudge(
                    machine,
                    fresh(computed),
                    reads,
                    whole[0].take(at),
                    is_late=whole[1][at],
                    out=out,
                )
            derived_at = [reads[r] for r in bound_rule.compiled.derived_at if r in reads]
            self._keep_derived(computed, derived_at, late)
        counters.late_unrejudged += int(unrejudged[late.rows].sum())
        self._keep(late)

    def _product_changes(self, out: list[DeviationChange]) -> None:
        """Re-judge the rules of assets whose product changed in what they had judged: the
        retained history from the change on, by a fresh copy that knows the change; what it
        finds that no deviation already covers is published found late."""
        earliest: dict[tuple[str, str], int] = {}
        for place, ts in self._changed:  # a burst of changes: one re-judge from the first
            earliest[place] = min(ts, earliest.get(place, ts))
        self._changed = []
        for place, ts in earliest.items():
            for bound_rule in self._judge.rules:
                fresh = getattr(bound_rule.machine, "fresh", None)
                if fresh is None or place not in bound_rule.compiled.assets:
                    continue
                reads = bound_rule.compiled.reads
                rows = np.array(sorted(set(reads.values())), dtype=np.int64)
                lo, _, _ = self._window_bounds(ts, ts, [bound_rule])
                history, _ = self._history(rows, lo, _OPEN)  # from the change to the end
                since = history.ts >= ts
                if since.any():
                    # the holding times it computes are stored already: not kept again
                    self._rejudge(
                        bound_rule.machine, fresh([]), reads, history, is_late=since, out=out
                    )

    def _window_bounds(self, oldest: int, newest: int, rules: list[Any]) -> tuple[int, int, int]:
        """The span of history a late batch is judged over at first: from before its oldest
        reading by the rules' longest duration to past its newest by that and
        :data:`_WINDOW_AFTER_MS`, widened by the devices' clock offsets (the copy orders on
        corrected time); and the largest offset."""
        lookback = max(
            (
                max(c.spec.sustained_ms, c.spec.flat_ms)
                for b in rules
                if getattr(b.machine, "fresh", None) is not None  # the rules re-judged
                for c in _checks(b.machine)
            ),
            default=0,
        )
        # the largest offset any reading may be judged with (see Devices.offset_when)
        spread = max(
            (
                abs(offset)
                for clock in self._devices.clocks.values()
                for offset in (clock.offset_ms, *(e for _, e in clock.estimates))
            ),
            default=0,
        )
        lo = oldest - lookback - 2 * spread - 1
        hi = newest + lookback + _WINDOW_AFTER_MS + 4 * spread
        return lo, hi, spread

    def _history(
        self, rows: I64, lo: int | None = None, hi: int | None = None
    ) -> tuple[Columns, bool]:
        """The retained readings of ``rows``, sorted by channel, then time; with ``lo`` and
        ``hi``, only those stamped from ``lo`` to ``hi`` and, of each channel, the last before
        and the first after (see :func:`_window`). And whether any reading after ``hi`` was
        left out."""
        self._compact()
        for at, in_order in enumerate(self._in_order):
            if not in_order:
                self._releases[at] = _sorted(self._releases[at])
                self._in_order[at] = True
        parts = [part for release in self._releases if len((part := _of_rows(release, rows)).rows)]
        cut = False
        if lo is not None and hi is not None:
            # from the oldest of the channels' last readings before ``lo``: a copy starts at
            # the earliest of them (a valve that reports only its changes), and judges all
            # from there, as over the whole history
            lo = min([lo, *(_oldest_last_before(part, lo) for part in parts)])
            windows = [_window(part, lo, hi) for part in parts]
            cut = any(left_out for _, left_out in windows)
            parts = [part for part, _ in windows]
        return (_sorted(Columns.join(parts)) if parts else EMPTY_COLUMNS), cut

    def _compact(self) -> None:
        """Join releases, oldest first, until each is more than twice the size of the next: a
        late batch then searches a few releases (a logarithm of the history), not one per
        release since the last late batch, and each reading is joined a logarithm of times in
        all. Which releases join is settled on their sizes first, so each group is joined and
        sorted once. Done here, on the late path: the on-time path keeps its list append."""
        groups: list[tuple[int, list[int]]] = []
        for at, release in enumerate(self._releases):
            groups.append((len(release.rows), [at]))
            while len(groups) > 1 and groups[-2][0] <= 2 * groups[-1][0]:
                size, members = groups.pop()
                below, first = groups.pop()
                groups.append((below + size, first + members))
        if len(groups) == len(self._releases):
            return
        releases, in_order = self._releases, self._in_order
        self._releases = [
            releases[members[0]]
            if len(members) == 1
            else _sorted(Columns.join([releases[at] for at in members]))
            for _, members in groups
        ]
        self._in_order = [
            in_order[members[0]] if len(members) == 1 else True for _, members in groups
        ]

    def _rejudge(
        self,
        live: Any,
        copy: _Rejudged,
        reads: dict[str, int],
        merged: Columns,
        *,
        is_late: B,
        out: list[DeviationChange],
        complete_until: int | None = None,
    ) -> bool:
        """A fresh copy of a rule over its channels' history with the late readings in it, in
        time order across them (corrected time, the valve first at equal times), from each
        channel's last sample before the first late reading less the rule's own duration, on
        until it is past the last late one (and one more sample of each channel) and not
        engaged; then :meth:`_settle` each of its checks. With ``complete_until`` (the history
        is a window, complete up to that corrected time): False, with nothing settled, when the
        copy would have to go on past it."""
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
        start = self._primed_from(merged.rows, corrected, since, roles, first_late)
        if start is None:
            self._counters.late_unrejudged += int(is_late.sum())
            return True
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
        pairs = list(zip(checks, _checks(copy), strict=True))
        for i in range(start, len(rows)):
            row, ts, value = rows[i], stamps[i], values[i]
            if i > last_late + len(roles) and (
                not copy.engaged
                or all(
                    _nothing_to_add(live, fresh, {"device": ts, "stream": int(corrected[i])})
                    for live, fresh in pairs
                )
            ):
                to_the_end = False
                break
            if complete_until is not None and corrected[i] > complete_until:
                return False  # beyond the window: readings may be missing from here on
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
        return True

    def _primed_from(
        self, rows: I64, corrected: I64, since: int, roles: Mapping[int, Any], first_late: int
    ) -> int | None:
        """Where a copy starts: each channel's last sample before ``since`` (it primes the
        rule: the valve's state, a step), or the first late reading. None when a channel has
        none and its history was let go (a valve that reports only its changes): a copy would
        judge with a default (forward flow), not the state of the time."""
        start = first_late
        for row in roles:
            before = np.flatnonzero((rows == row) & (corrected < since))
            if len(before):
                start = min(start, int(before[-1]))
            elif self._coverage[row] >= 0:
                return None
        return start

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

    def take(self) -> History:
        """The history kept since the last call, as one journal record; or every release
        retained (``whole``), to begin the journal again: at the first call, when the journal
        would hold more than ``_JOURNAL_CAPS`` caps' worth, or after too long without a call."""
        journaled = self._journaled + self._unsaved_readings
        if self._whole_due or journaled > _JOURNAL_CAPS * _RETAINED_READINGS:
            taken = History(self.whole(), self._retained, whole=True)
            self._whole_due = False
        else:
            record = encode_history(self._unsaved, [True] * len(self._unsaved))
            taken = History(record, self._unsaved_readings, whole=False)
        self._journaled = taken.readings if taken.whole else journaled
        self._unsaved, self._unsaved_readings = [], 0
        return taken

    def whole(self) -> bytes:
        """Every release retained, as one record (what :meth:`take` has handed is unchanged)."""
        return encode_history(self._releases, self._in_order)

    def state(self, *, history: bool = True) -> LateState:
        """The snapshot's part: with ``history``, the history within the bound of each
        channel's judged time (without: kept apart, in a runtime's journal)."""
        retained = EMPTY_COLUMNS
        if history and self._releases:
            # sorted (a full snapshot: an archive header, not the light one a runtime takes
            # each second), so it is the same however the late path has joined the releases
            retained = Columns.join(self._releases)
            rows = retained.rows
            retained = _sorted(
                retained.take(retained.ts >= self._table.last_ts[rows] - self.bound_ms[rows])
            )
        pending = Columns.join(self._pending) if self._pending else EMPTY_COLUMNS
        return LateState(
            retained=HeldColumns.of(retained),
            pending=HeldColumns.of(pending),
            coverage=self._coverage.tobytes(),
            intervals={
                key: [(str(i), int(s), int(e)) for i, s, e in spans]
                for key, spans in self._intervals.items()
            },
            kept=history,
        )

    def restore(self, state: LateState, history: Sequence[bytes] | None) -> None:
        """Take back a snapshot's part, with the journal's records (``history``) when the
        snapshot kept the history apart (see the module: None, the history is lost)."""
        if state.kept:
            retained = _sorted(_copied(state.retained))
            if len(retained.rows):
                self._releases, self._in_order = [retained], [True]
                self._retained = len(retained.rows)
        elif history is not None:
            for record in history:
                for release, in_order in decode_history(record):
                    self._keep(release, in_order=in_order, journaled=True)
                    self._journaled += len(release.rows)
            self._whole_due = False  # the journal holds all of it: carry on appending
        pending = _copied(state.pending)
        if len(pending.rows):
            self._pending = [pending]
        self._coverage[:] = np.frombuffer(state.coverage, dtype=np.int64)
        if not state.kept and history is None:
            # no history before the snapshot: a reading that would need it is beyond the bound
            np.maximum(self._coverage, self._table.last_ts, out=self._coverage)
        self._intervals = {
            key: [[i, s, e] for i, s, e in spans] for key, spans in state.intervals.items()
        }


def _oldest_last_before(part: Columns, lo: int) -> int:
    """Of readings sorted by channel, then time: the oldest of each channel's last reading
    before ``lo`` (``lo`` if none)."""
    rows, ts = part.rows, part.ts
    before = ts < lo
    if not before.any():
        return lo
    ends = np.ones(len(rows), dtype=np.bool_)
    ends[:-1] = (rows[1:] != rows[:-1]) | ~before[1:]
    return int(ts[before & ends].min())


def _window(part: Columns, lo: int, hi: int) -> tuple[Columns, bool]:
    """Of readings sorted by channel, then time: those stamped from ``lo`` to ``hi``, and of
    each channel the last before ``lo`` (it primes the rule) and the first after ``hi`` (a
    copy that is done stops there, see :meth:`LateJudge._rejudge`); and whether any after
    that first one was left out."""
    rows, ts = part.rows, part.ts
    same_next = np.zeros(len(rows), dtype=np.bool_)
    same_next[:-1] = rows[1:] == rows[:-1]
    same_prev = np.zeros(len(rows), dtype=np.bool_)
    same_prev[1:] = same_next[:-1]
    before, after = ts < lo, ts > hi
    next_before = np.zeros(len(rows), dtype=np.bool_)
    next_before[:-1] = before[1:]
    prev_after = np.zeros(len(rows), dtype=np.bool_)
    prev_after[1:] = after[:-1]
    last_before = before & ~(same_next & next_before)
    first_after = after & ~(same_prev & prev_after)
    keep = (~before & ~after) | last_before | first_after
    return part.take(keep), bool((after & ~first_after).any())


def _nothing_to_add(live: _Check, fresh: _Check, at: Mapping[str, int]) -> bool:
    """Past the late readings, nothing more the copy of a check finds can be published: it is
    not engaged, or the live check has a deviation open since the sample ``at`` (its time on
    each clock a deviation may be stamped on) or before (whatever the
    copy finds from here touches it, and the live one keeps its state). A copy in a long
    excursion then stops here instead of running over all the history after the late reading,
    once per late message."""
    if not fresh.engaged:
        return True
    said = live.open_deviation
    return said is not None and said.start_ms <= at[said.time_base]


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
