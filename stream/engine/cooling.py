"""A farm bulk tank's cooling: deadlines after milkings, and the blend limit of later milkings.

Events arrive before the samples they concern are judged (the engine holds samples for their
lateness), so a milking's deadlines are pending when its samples come through. The milk must be
cooled by the deadline: the verdict is the last sample at or before it, at or below the
temperature (a cold reading before the warm milk came in does not count). It is given when a
sample later than the deadline comes, or, with no data, when the stream's timer estimates the
device's clock past it. A miss opens a deviation at the deadline itself, which closes at the
first sample that reaches the temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from milkguard.contract.v1 import Event, MilkingEnd, MilkingStart, Pickup
from stream.engine.contents import Contents, contents_of
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import (
    ANYWHERE,
    CriticalLimitMachine,
    Handover,
    Machine,
    QuietBand,
    RuleSpec,
    Sample,
    with_deviation,
)
from stream.plan import Cooling


@dataclass(slots=True)
class _Pending:
    after: str
    started: int
    due: int
    reach_max: float
    until: int = 2**62  # a pickup took this milk at: a miss ends there
    last_value: float | None = None  # the latest sample at or before the deadline


class _Missed(Machine):
    """One missed deadline, open until a sample reaches the temperature."""

    __slots__ = ("reach_max", "until")

    def __init__(self, spec: RuleSpec, reach_max: float, until: int = 2**62) -> None:
        super().__init__(spec)
        self.reach_max = reach_max
        self.until = until

    def open_at(self, pending: _Pending, device: str, late: bool) -> DeviationChange:
        """The deadline passed without the temperature reached: open there."""
        spec = self.spec
        limit = AppliedLimit(
            min=None,
            max=pending.reach_max,
            sustained_s=(pending.due - pending.started) / 1000,
            unit=spec.unit,
            source=spec.source,
        )
        at_deadline = Sample(pending.due, 0.0, -1, 0.0, pending.due, device, late)
        return self._opened(pending.due, at_deadline, None, limit)

    def close_at(self, ts: int) -> DeviationChange:
        """The milk this deadline was about left the tank."""
        return self._closed(ts, late=False)

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Close at the first sample at or below the temperature; else keep the warmest."""
        if self._open is None:
            return None
        if sample.ts >= self.until:
            return self._closed(self.until, sample.late)  # the milk had left
        if sample.value <= self.reach_max:
            return self._closed(sample.ts, sample.late)
        if self._open.peak is None or sample.value > self._open.peak:
            self._open.peak = sample.value
        return None


class CoolingMachine:
    """One tank's cooling deadlines and blend limit."""

    def __init__(self, rule: Cooling, base: RuleSpec, contents: Contents | None = None) -> None:
        self.rule = rule
        self._base = base
        # the tank's books (as its storage age keeps them): a pickup that leaves more than the
        # heel leaves cold milk, so the next milking blends into it and is no first milking
        self.contents = contents if contents is not None else Contents()
        self.pending: list[_Pending] = []
        self.missed: list[_Missed] = []
        self.empty = True  # no milking seen since the tank was emptied (or since monitoring began)
        self._starts: list[tuple[int, bool]] = []  # recent milking starts: (ts, a first one)
        self.later_milking: list[list[int]] = []  # [start, end or _OPEN] of later milkings
        self._last_seen = -1  # the last sample judged here (samples of a milking must all come)
        self.blend = (
            CriticalLimitMachine(
                replace(
                    base,
                    rule_id=f"{rule.id}.blend",
                    kind="blend_temperature",
                    maximum=rule.blend_max,
                )
            )
            if rule.blend_max is not None
            else None
        )

    @property
    def engaged(self) -> bool:
        """True while any sample could change a verdict: every sample then goes through here."""
        return bool(
            self.pending
            or self.missed
            or any(end > self._last_seen for _, end in self.later_milking)
            or (self.blend is not None and self.blend.engaged)
        )

    # ----------------------------------------------------------------------------- events

    def milking_start(self, ts: int) -> None:
        """Warm milk starts flowing in."""
        first = self.empty
        self.empty = False
        self._starts.append((ts, first))
        del self._starts[:-16]
        if not first:
            self.later_milking.append([ts, _OPEN])
            del self.later_milking[:-16]
        self._start_deadlines(ts, first)

    def _start_deadlines(self, ts: int, first: bool) -> None:
        for deadline in self.rule.deadlines:
            if deadline.after == "milking_start" or (
                deadline.after == "first_milking_start" and first
            ):
                self._start(deadline.after, ts, deadline.within_s, deadline.reach_max)

    def milking_end(self, ts: int) -> None:
        """The milking ended."""
        if self.later_milking and self.later_milking[-1][1] == _OPEN:
            self.later_milking[-1][1] = ts
        for deadline in self.rule.deadlines:
            if deadline.after == "milking_end":
                self._start(deadline.after, ts, deadline.within_s, deadline.reach_max)

    def emptied(self, ts: int, device: str) -> list[DeviationChange]:
        """A pickup took the milk in the tank at ``ts``; the next milking is a first one.

        Events may arrive out of order: a milking that started after ``ts`` but was seen
        first is a first milking after all. A deadline already due before the pickup still gets
        its verdict from the samples (a miss then ends at the pickup); one not yet due leaves
        with the milk.
        """
        after = sorted(start for start in self._starts if start[0] > ts)
        self.empty = not after
        if after and not after[0][1]:
            start = after[0][0]
            self.later_milking = [w for w in self.later_milking if w[0] != start]
            self._starts = [(s, first or s == start) for s, first in self._starts]
            self._start_deadlines(start, first=True)
        kept: list[_Pending] = []
        for pending in self.pending:
            if pending.started > ts:
                kept.append(pending)
            elif pending.due < ts:
                pending.until = min(pending.until, ts)
                kept.append(pending)
        self.pending = kept
        changes = [m.close_at(ts) for m in self.missed if m.open_deviation is not None]
        self.missed = []
        return changes

    def _start(self, after: str, ts: int, within_s: float, reach_max: float) -> None:
        self.pending.append(_Pending(after, ts, ts + round(within_s * 1000), reach_max))

    # ----------------------------------------------------------------------------- samples

    def observe(self, sample: Sample) -> list[DeviationChange]:
        """Judge one sample of the tank's temperature."""
        self._last_seen = max(self._last_seen, sample.ts)
        changes: list[DeviationChange] = []
        still: list[_Pending] = []
        for pending in self.pending:
            if sample.ts <= pending.due:
                if sample.ts >= pending.started:
                    pending.last_value = sample.value
                still.append(pending)
            elif not self._met(pending):
                changes.append(self._miss(pending, sample.device, sample.late))
        self.pending = still
        for missed in self.missed:
            change = missed.observe(sample)
            if change is not None:
                changes.append(change)
        self.missed = [m for m in self.missed if m.open_deviation is not None]
        if self.blend is not None:
            changes.extend(self._blend(sample))
        return changes

    def _blend(self, sample: Sample) -> list[DeviationChange]:
        assert self.blend is not None
        in_later = any(start <= sample.ts < end for start, end in self.later_milking)
        if in_later:
            change = self.blend.observe(sample)
        elif self.blend.engaged:
            change = self.blend.observe_excess(sample, 0.0)  # the milking ended: judged no more
        else:
            change = None
        return [change] if change is not None else []

    def fire_due(self, device_now: int, device: str) -> list[DeviationChange]:
        """The timer: deadlines the device's clock has passed with no sample, missed (and ended
        at once if the milk was picked up since)."""
        due = [p for p in self.pending if p.due < device_now]
        self.pending = [p for p in self.pending if p.due >= device_now]
        changes = [self._miss(p, device, late=False) for p in due if not self._met(p)]
        for missed in self.missed:
            if missed.open_deviation is not None and device_now >= missed.until:
                changes.append(missed.close_at(missed.until))
        self.missed = [m for m in self.missed if m.open_deviation is not None]
        return changes

    @staticmethod
    def _met(pending: _Pending) -> bool:
        return pending.last_value is not None and pending.last_value <= pending.reach_max

    def _miss(self, pending: _Pending, device: str, late: bool) -> DeviationChange:
        missed = _Missed(
            replace(self._base, rule_id=f"{self.rule.id}.{pending.after}", kind="cooling_deadline"),
            pending.reach_max,
            pending.until,
        )
        change = missed.open_at(pending, device, late)
        self.missed.append(missed)
        return change

    @property
    def open_deviations(self) -> list[Deviation]:
        """Deviations open now."""
        found = [m.open_deviation for m in self.missed if m.open_deviation is not None]
        if self.blend is not None and self.blend.open_deviation is not None:
            found.append(self.blend.open_deviation)
        return found

    # ----------------------------------------------------------------------------- contract

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Judge one sample of the tank's temperature (see :meth:`observe`); a reading of its
        level gauge (role ``volume``) only feeds the books."""
        if role == "volume":
            self.contents.gauge(sample.ts, sample.value)
            return ()
        return self.observe(sample)

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Milkings start and end deadlines; a pickup from this tank that leaves no more than
        its heel empties it."""
        if isinstance(event, Pickup):
            home = (self._base.site, self._base.asset)
            if (event.source_site, event.source_asset) == home and self.contents.take(
                event.ts, event.volume_l
            ):
                return self.emptied(event.ts, "unknown")
        elif isinstance(event, MilkingStart):
            self.contents.started_filling()
            self.milking_start(event.ts)
        elif isinstance(event, MilkingEnd):
            self.contents.add(event.volume_l)
            self.milking_end(event.ts)
        return ()

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """Deadlines the device's clock has passed with no sample; a channel still holding
        readings waits for them to be judged first."""
        if not (self.pending or self.missed) or holding:
            return ()
        return self.fire_due(device_now, device)

    def quiet_band(self) -> QuietBand:
        """Judged by its engagement: while a deadline or blend is on, every sample comes."""
        return ANYWHERE

    # ----------------------------------------------------------------------------- snapshots

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "pending": [
                [p.after, p.started, p.due, p.reach_max, p.until, p.last_value]
                for p in self.pending
            ],
            "missed": [[m.reach_max, m.until, m.state()] for m in self.missed],
            "empty": self.empty,
            "starts": self._starts,
            "later_milking": self.later_milking,
            "last_seen": self._last_seen,
            "blend": self.blend.state() if self.blend is not None else None,
            "contents": self.contents.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self.pending = [
            _Pending(a, int(s), int(d), float(r), int(u), v)
            for a, s, d, r, u, v in state["pending"]
        ]
        self._starts = [(int(ts), bool(first)) for ts, first in state["starts"]]
        self.missed = []
        for reach_max, until, saved in state["missed"]:
            missed = _Missed(self._base, float(reach_max), int(until))
            missed.restore(with_deviation(saved))
            self.missed.append(missed)
        self.empty = bool(state["empty"])
        self.later_milking = [[int(a), int(b)] for a, b in state["later_milking"]]
        self._last_seen = int(state["last_seen"])
        if self.blend is not None and state["blend"] is not None:
            self.blend.restore(with_deviation(state["blend"]))
        self.contents.restore(state.get("contents"))


_OPEN = 2**62


def compile_cooling(rule: Cooling, context: PlanContext) -> Compiled:
    """A tank's cooling deadlines, on its temperature channel and its milking events."""
    site, asset_id = context.where(rule.asset)
    unit = context.unit(rule.asset, rule.channel)
    base = context.rule_spec(rule, channel=rule.channel, unit=unit, kind="cooling_deadline")
    row = context.row_of[(rule.asset, rule.channel)]
    contents, gauge = contents_of(rule.asset, context)
    reads = {"": row} if gauge is None else {"": row, "volume": gauge}
    return Compiled(
        rule.id,
        CoolingMachine(rule, base, contents),
        reads=reads,
        assets=((site, asset_id),),
        home_row=row,
        never_quiet=("volume",) if gauge is not None else (),
    )
