"""Raw milk in a silo from acceptance until processing: a rule kind in one module.

The plan model is :class:`stream.plan.AcceptanceWindow` (``kind: acceptance_window``); this
module holds its machine, :class:`AcceptanceMachine` (the rule-kind contract,
:class:`stream.engine.kinds.RuleMachine`), and its compiler, :func:`compile_acceptance`,
registered in :mod:`stream.engine.registry` with one line.

What the law says, and how it is read
-------------------------------------
EU 853/2004 Annex III Section IX Chapter II Part I (temperature requirements): on acceptance at
a processing establishment, raw milk is quickly cooled to 6 degC or less and kept there until
processed, unless processing begins within 4 h of acceptance. PMO Section 7, Item 17p: raw milk
maintained at 7 degC (45 degF) or less until processed: a window of 0.

- **The clock starts at acceptance**: a ``receipt`` whose ``destination`` is the silo. Milk added
  to a silo whose earlier milk is still unprocessed mixes with it: the silo's window is that of
  its oldest accepted unprocessed milk (the conservative reading; the newer milk's later window
  never extends it).
- **Satisfied** when a run whose ``sources`` name the silo starts (``run_start``: processing
  begins) no later than the window's end: nothing is raised, even above the limit.
- **Not processed in time**: the verdict is the silo's temperature at the window's end (its last
  sample at or before it): above ``max``, a deviation from the window's end itself, whatever
  cooler samples came before it (the exemption is over; a cooler sample within it proves
  nothing about the milk at its end). After the window, while still unprocessed, a sample above
  ``max`` opens a deviation there.
- **Closing**: at the first sample at or below ``max`` (the milk is then kept cold, as the law
  asks; the time above stays in the record, with its peak and degree-minutes), or when the milk
  leaves the condition "unprocessed": a run drawing from the silo starts, or ``silo_emptied``.
  Closing on the cool-down rather than only at processing keeps each record to the time the
  milk was actually above the limit; warming again opens another.
- **Transfers**: a ``silo_transfer`` takes the oldest acceptance of the source's unprocessed milk
  to the destination (its window goes with the milk; a transfer from a silo the plan does not
  judge counts from the transfer). The source keeps its window: what is left in it is the same
  mixed milk, until a ``silo_emptied`` (or a run) says otherwise.
- **Milk arriving after its window ended** (a transfer of old milk): its verdict is taken at its
  arrival, not before the silo held it.
- **No temperature**: with no sample at or before the window's end, the rule raises nothing: a
  silo channel that reports nothing is the channel's "monitoring lost" (the engine's silence
  check, critical on a CCP channel), one record for one fault. The machine cannot tell "never
  heard" from "heard within the limit" without taking every sample off the vector screen.
- **A silo with no silo events** (a plant that sends no receipts or runs): the rule cannot know
  acceptance or processing, so it falls back to a critical limit at ``max`` sustained for the
  window from the excursion's first sample (the profiles' former encoding), which no run
  excuses: stricter than the law where processing began in time, and never silent. The first
  silo event ends the fallback (an excursion open then ends there) for good.

How it runs
-----------
Events reach the machine before the samples they concern are judged (samples are held for the
allowed lateness), so processing and emptying are kept as the time they happened (``until``)
and take effect when the samples (or the timer, on the silo's device clock) reach that time.
The machine's quiet band is ``max``: samples at or below it pass it by on the vector screen
while it is not engaged, and it is engaged while its last sample was above ``max`` or a
deviation is open, so "the last sample at or before the window's end was above ``max``" is
always known exactly. Late readings are counted as not re-judged (no ``fresh``), as for the
other event-driven kinds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from milkguard.contract.v1 import Event, Receipt, RunStart, SiloEmptied, SiloTransfer
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import (
    NEVER,
    CriticalLimitMachine,
    Handover,
    QuietBand,
    RuleSpec,
    Sample,
    with_deviation,
)
from stream.plan import AcceptanceWindow


@dataclass(slots=True)
class _Window:
    """The unprocessed milk in the silo from one acceptance on."""

    accepted: int  # the oldest acceptance of the milk in it
    due: int  # when its verdict is taken: the window's end (or the milk's later arrival)
    until: int = NEVER  # processing began, or the silo was emptied, at
    decided: bool = False  # the verdict at ``due`` was given: the milk is now overdue


class _Overdue(CriticalLimitMachine):
    """The deviation of overdue milk above the limit: a critical limit at ``max`` that may also
    open at the window's end and end when the milk leaves."""

    __slots__ = ()

    def open_at(
        self, due: int, value: float, device: str, late: bool, limit: AppliedLimit
    ) -> DeviationChange:
        """The window ended with the silo above the limit: open there, the last value held."""
        excess = value - (self.spec.maximum or 0.0)
        self._breach_start = due
        self._peak, self._peak_excess, self._degree_ms = value, excess, 0.0
        self._last_ts, self._last_excess = due, excess
        moment = Sample(due, value, -1, 0.0, due, device, late)
        return self._opened(due, moment, value, limit)

    def end_at(self, ts: int, late: bool) -> DeviationChange | None:
        """The milk was processed or left the silo at ``ts``: the deviation, if open, ends."""
        if self._breach_start is None:
            return None
        self._degree_ms += self._last_excess * max(0, ts - self._last_ts)
        self._breach_start = None
        self._last_ts, self._last_excess = ts, 0.0
        if self._open is None:
            return None
        self._open.degree_minutes = self._degree_ms / 60_000
        return self._closed(ts, late)


class AcceptanceMachine:
    """One silo's acceptance windows, on its temperature channel and its silo events."""

    __slots__ = (
        "_fallback",
        "_home",
        "_last_ts",
        "_last_value",
        "_limit",
        "_overdue",
        "_silo_events",
        "_window_ms",
        "_windows",
        "rule",
    )

    def __init__(self, rule: AcceptanceWindow, base: RuleSpec) -> None:
        self.rule = rule
        self._home = (base.site, base.asset)
        self._window_ms = round(rule.within_s * 1000)
        self._windows: list[_Window] = []
        self._silo_events = False  # a silo event was seen: no fallback any more
        self._last_ts = -1
        self._last_value = -math.inf
        spec = replace(base, maximum=rule.max)
        self._overdue = _Overdue(spec)
        self._fallback = CriticalLimitMachine(
            replace(spec, rule_id=f"{rule.id}.no-silo-events", sustained_ms=self._window_ms)
        )
        self._limit = AppliedLimit(
            min=None,
            max=rule.max,
            sustained_s=rule.within_s,
            unit=base.unit,
            source=f"{rule.source}; window counted from acceptance into the silo",
        )

    # ----------------------------------------------------------------------------- contract

    @property
    def engaged(self) -> bool:
        """While a deviation is open, or the last sample was above the limit: every sample then
        comes, so the temperature at a window's end is known exactly."""
        if not self._silo_events:
            return self._fallback.engaged
        return self._overdue.engaged or self._last_value > self.rule.max

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviation open now."""
        found = (self._overdue.open_deviation, self._fallback.open_deviation)
        return [d for d in found if d is not None]

    def quiet_band(self) -> QuietBand:
        """At or below the limit a sample changes nothing while the machine is not engaged."""
        return QuietBand(hi=self.rule.max)

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Judge one sample of the silo's temperature (``role``: the rule's one channel)."""
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            return []  # the probe reads cleaning solution in an empty silo, not milk
        if not self._silo_events:
            change = self._fallback.observe(sample)
            self._seen(sample)
            return [] if change is None else [change]
        changes = self._advance(sample.ts, sample.device, sample.late, strictly_after=True)
        window = self._windows[0] if self._windows else None
        if window is not None and window.decided and window.due <= sample.ts < window.until:
            excess = max(0.0, sample.value - self.rule.max)
            change = self._overdue.observe_excess(sample, excess, self._limit)
            if change is not None:
                changes.append(change)
        self._seen(sample)
        return changes

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Receipts and transfers bring milk in; a run drawing from the silo, or its emptying,
        ends its window; a transfer out hands the window on."""
        changes: list[DeviationChange] = []
        if isinstance(event, Receipt) and (site, event.destination) == self._home:
            changes = self._first_event(event.ts)
            self._milk_in(event.ts, event.ts)
        elif isinstance(event, SiloTransfer):
            if (site, event.asset) == self._home:
                changes = self._first_event(event.ts)
                window = self._holding(event.ts)
                if window is not None:
                    given = handover.accepted
                    handover.accepted = (
                        window.accepted if given is None else min(given, window.accepted)
                    )
            elif (site, event.destination) == self._home:
                changes = self._first_event(event.ts)
                accepted = handover.accepted if handover.accepted is not None else event.ts
                self._milk_in(event.ts, accepted)
        elif self._ends_here(event, site):
            changes = self._first_event(event.ts)
            self._milk_out(event.ts)
        return changes

    def _ends_here(self, event: Event, site: str) -> bool:
        """A run drawing from the silo starts (processing begins), or the silo is emptied."""
        if isinstance(event, RunStart):
            return any((site, draw.silo) == self._home for draw in event.sources)
        return isinstance(event, SiloEmptied) and (site, event.asset) == self._home

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """A window's end, or the milk's processing, passed on the silo's device clock with no
        sample to decide it; a channel still holding readings waits for them."""
        if holding or not self._windows:
            return ()
        window = self._windows[0]
        if (window.decided or device_now < window.due) and device_now < window.until:
            return ()  # most ticks: nothing due
        return self._advance(device_now, device, late=False, strictly_after=False)

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "windows": [[w.accepted, w.due, w.until, w.decided] for w in self._windows],
            "silo_events": self._silo_events,
            "last_ts": self._last_ts,
            "last_value": None if self._last_ts < 0 else self._last_value,
            "overdue": self._overdue.state(),
            "fallback": self._fallback.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a state made by :meth:`state` (fields added later take their defaults)."""
        self._windows = [
            _Window(int(a), int(d), int(u), bool(done))
            for a, d, u, done in state.get("windows", ())
        ]
        self._silo_events = bool(state.get("silo_events", False))
        self._last_ts = int(state.get("last_ts", -1))
        value = state.get("last_value")
        self._last_value = -math.inf if value is None else float(value)
        if "overdue" in state:
            self._overdue.restore(with_deviation(state["overdue"]))
        if "fallback" in state:
            self._fallback.restore(with_deviation(state["fallback"]))

    # ----------------------------------------------------------------------------- the milk

    def _seen(self, sample: Sample) -> None:
        if sample.ts >= self._last_ts:
            self._last_ts, self._last_value = sample.ts, sample.value

    def _first_event(self, ts: int) -> list[DeviationChange]:
        """The silo reports its events: the fallback ends, with any excursion open in it."""
        if self._silo_events:
            return []
        self._silo_events = True
        if self._fallback.open_deviation is None:
            self._fallback = CriticalLimitMachine(self._fallback.spec)  # forget the excursion
            return []
        spec = self._fallback.spec
        change = self._fallback.observe_excess(
            Sample(ts, spec.maximum or 0.0, -1, 0.0, ts, "unknown", late=False), 0.0
        )
        return [] if change is None else [change]

    def _holding(self, ts: int) -> _Window | None:
        """The window of the milk in the silo at ``ts``, if any."""
        for window in reversed(self._windows):
            if window.accepted <= ts < window.until:
                return window
        return None

    def _milk_in(self, ts: int, accepted: int) -> None:
        """Milk accepted at ``accepted`` came into the silo at ``ts``: it joins the milk still
        unprocessed there (the oldest acceptance rules), or starts a window of its own."""
        due = max(accepted + self._window_ms, ts)
        window = self._holding(ts)
        if window is None:
            self._windows.append(_Window(min(accepted, ts), due))
            self._windows.sort(key=lambda w: w.accepted)
            del self._windows[:-64]  # bounded: a silo holds a handful of windows at most
            return
        window.accepted = min(window.accepted, accepted)
        if not window.decided:
            window.due = min(window.due, due)

    def _milk_out(self, ts: int) -> None:
        """Processing began (or the silo was emptied) at ``ts``: the milk held then is no longer
        unprocessed; its window ends there (when the samples or the clock reach it)."""
        window = self._holding(ts)
        if window is not None:
            window.until = ts

    def _advance(
        self, ts: int, device: str, late: bool, *, strictly_after: bool
    ) -> list[DeviationChange]:
        """Bring the windows up to ``ts``: verdicts whose time has passed, milk gone by then."""
        changes: list[DeviationChange] = []
        while self._windows:
            window = self._windows[0]
            passed = ts > window.due if strictly_after else ts >= window.due
            if not window.decided and passed:
                if window.until <= window.due:
                    self._windows.pop(0)  # processing began within the window: met
                    continue
                window.decided = True
                if self._last_ts >= 0 and self._last_value > self.rule.max:
                    changes.append(
                        self._overdue.open_at(
                            window.due, self._last_value, device, late, self._limit
                        )
                    )
            if window.until <= ts:
                ended = self._overdue.end_at(window.until, late)
                if ended is not None:
                    changes.append(ended)
                self._windows.pop(0)
                continue
            break
        return changes


def compile_acceptance(rule: AcceptanceWindow, context: PlanContext) -> Compiled:
    """A silo's acceptance windows, on its temperature channel and the silo events naming it;
    its timers run on the clock of the silo's thermometer."""
    unit = context.unit(rule.asset, rule.channel)
    base = context.rule_spec(rule, channel=rule.channel, unit=unit)
    row = context.row_of[(rule.asset, rule.channel)]
    return Compiled(
        rule.id,
        AcceptanceMachine(rule, base),
        reads={"": row},
        assets=(context.where(rule.asset),),
        home_row=row,
    )
