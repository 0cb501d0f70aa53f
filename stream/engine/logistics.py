"""Milk on the move: the age of the oldest milk in a tank or compartment, and each load's trip.

Both are driven by events (milkings, pickups, deliveries) and fire by the clock: a deadline
passed with the milk still there opens a deviation at the deadline; emptying the tank or
compartment ends it. A trip's temperature exposure is judged sample by sample while loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from milkguard.contract.v1 import Delivery, Event, MilkingStart, Pickup
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import (
    ANYWHERE,
    Handover,
    Machine,
    QuietBand,
    RuleSpec,
    Sample,
    with_deviation,
)
from stream.plan import StorageAge, Transport


def _moment(ts: int, device: str) -> Sample:
    return Sample(ts, 0.0, -1, 0.0, ts, device, late=False)


class _Deadline(Machine):
    """A deviation that opens at a deadline and ends when the milk leaves."""

    __slots__ = ()

    def open_at(self, deadline: int, peak: float | None, limit: AppliedLimit) -> DeviationChange:
        """The deadline passed."""
        return self._opened(deadline, _moment(deadline, "unknown"), peak, limit)

    def end_at(self, ts: int) -> DeviationChange | None:
        """The milk left: close, if open. An event that arrives after the timer fired and says
        the milk left before the deadline cannot unsay the deviation; it ends it, flagged late."""
        if self._open is None:
            return None
        late = ts < self._open.start_ms
        return self._closed(max(ts, self._open.start_ms), late=late)

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Not judged by samples."""
        return None


class AgeMachine:
    """The age of the oldest milk in one tank or compartment."""

    def __init__(self, rule: StorageAge, base: RuleSpec) -> None:
        self.rule = rule
        self.max_age_ms = round(rule.max_age_s * 1000)
        self.oldest: int | None = None
        # (when milk came in, how old it was): events may arrive out of order, so an emptying
        # takes only the milk that came in before it
        self._fills: list[tuple[int, int]] = []
        self.deadline = _Deadline(replace(base, rule_id=rule.id, kind="storage_age", unit="h"))

    def filled(self, ts: int, oldest: int | None = None) -> None:
        """Milk came in: a milking (its own time) or a pickup (the source's oldest milk)."""
        since = oldest if oldest is not None else ts
        self._fills.append((ts, since))
        del self._fills[:-64]
        self.oldest = min(s for _, s in self._fills)

    def emptied(self, ts: int) -> list[DeviationChange]:
        """A pickup (tank) or delivery (compartment) took all the milk that came in before it.

        Milk that was older than allowed when it left is a deviation from its deadline to its
        leaving, whether or not the timer saw the deadline pass first (the stream's clock may
        not have reached it between the two events)."""
        changes: list[DeviationChange] = []
        taken = [since for came, since in self._fills if came <= ts]
        if taken and self.deadline.open_deviation is None:
            due = min(taken) + self.max_age_ms
            if due <= ts:
                changes.append(
                    self.deadline.open_at(due, self.rule.max_age_s / 3600, self._limit())
                )
        self._fills = [(came, since) for came, since in self._fills if came > ts]
        self.oldest = min((s for _, s in self._fills), default=None)
        closed = self.deadline.end_at(ts)
        if closed is not None:
            changes.append(closed)
        return changes

    def fire_due(self, now: int) -> DeviationChange | None:
        """The timer: the oldest milk is older than allowed and still here."""
        if self.oldest is None or self.deadline.open_deviation is not None:
            return None
        due = self.oldest + self.max_age_ms
        if now < due:
            return None
        return self.deadline.open_at(due, self.rule.max_age_s / 3600, self._limit())

    def _limit(self) -> AppliedLimit:
        return AppliedLimit(
            min=None,
            max=self.rule.max_age_s / 3600,
            sustained_s=0.0,
            unit="h",
            source=self.rule.source,
        )

    # the rule-kind contract (:class:`stream.engine.kinds.RuleMachine`): driven by events
    # and the stream's clock, never by samples

    @property
    def engaged(self) -> bool:
        """Samples never move it."""
        return False

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviation open now."""
        found = self.deadline.open_deviation
        return [] if found is None else [found]

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Reads no channel."""
        return ()

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Milkings fill the tank; a pickup empties the farm tank (handing its oldest milk on)
        and fills the compartment; a delivery empties the compartment."""
        home = (self.deadline.spec.site, self.deadline.spec.asset)
        if isinstance(event, Pickup):
            if (event.source_site, event.source_asset) == home:
                handover.oldest = self.oldest
                return self.emptied(event.ts)
            if (site, event.compartment) == home:
                self.filled(event.ts, handover.oldest)
        elif isinstance(event, Delivery):
            if (site, event.compartment) == home:
                return self.emptied(event.ts)
        elif isinstance(event, MilkingStart):
            self.filled(event.ts)
        return ()

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """The oldest milk passed its age on the stream's clock."""
        change = self.fire_due(now)
        return () if change is None else (change,)

    def quiet_band(self) -> QuietBand:
        """Reads no channel."""
        return ANYWHERE

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {"fills": self._fills, "deadline": self.deadline.state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self._fills = [(int(came), int(since)) for came, since in state["fills"]]
        self.oldest = min((s for _, s in self._fills), default=None)
        self.deadline.restore(with_deviation(state["deadline"]))


class TransportMachine:
    """One compartment's load from first pickup to delivery: transit time and exposure."""

    def __init__(self, rule: Transport, base: RuleSpec) -> None:
        self.rule = rule
        self.loaded_since: int | None = None
        self.delivered_at: int | None = None  # the load's end, once its delivery is known
        self._last_seen = -1
        self.exposure_ms = 0.0  # degree-milliseconds above the reference
        self._last_ts: int | None = None
        self._last_excess = 0.0
        self.transit = _Deadline(
            replace(base, rule_id=f"{rule.id}.transit", kind="transit_time", unit="h")
        )
        self.exposure = _Deadline(
            replace(
                base,
                rule_id=f"{rule.id}.exposure",
                kind="temperature_exposure",
                unit=f"{base.unit}.min",
            )
        )

    @property
    def engaged(self) -> bool:
        """While loaded with an exposure limit, and until the samples reach the delivery, every
        sample counts."""
        if self.loaded_since is None or self.rule.exposure_above is None:
            return False
        return self.delivered_at is None or self._last_seen < self.delivered_at

    def pickup(self, ts: int) -> list[DeviationChange]:
        """A pickup into the compartment: the first one starts the load's trip. A load delivered
        whose samples have not all come yet has its exposure verdict ended first, at its
        delivery (the new load is another trip)."""
        changes: list[DeviationChange] = []
        if self.loaded_since is None or self.delivered_at is not None:
            if self.delivered_at is not None:
                changes = self._end_trip()
            self.loaded_since = ts
            self.delivered_at = None
            self.exposure_ms = 0.0
            self._last_ts, self._last_excess = None, 0.0
        return changes

    def delivery(self, ts: int) -> list[DeviationChange]:
        """The load arrived: its trip ends at ``ts``. Samples still to be judged from before it
        count to its exposure; the exposure verdict ends once they have (see ``observe``).

        A load delivered after its allowed transit time was too long on the road, whether or
        not the timer saw the limit pass first (the stream's clock may not have reached it
        between the two events)."""
        if self.loaded_since is None:
            return []
        changes = [c for c in (self.fire_due(ts),) if c is not None]
        self.delivered_at = ts
        changes.extend(c for c in (self.transit.end_at(ts),) if c is not None)
        if not self.engaged:
            changes.extend(self._end_trip())
        return changes

    def _end_trip(self) -> list[DeviationChange]:
        end = self.delivered_at
        assert end is not None
        self.loaded_since = None
        self.delivered_at = None
        change = self.exposure.end_at(end)
        return [change] if change is not None else []

    def trip_over(self, holding: bool) -> list[DeviationChange]:
        """The timer: a delivered load whose channel holds no sample from before the delivery
        any more has its exposure verdict ended."""
        if self.delivered_at is None or holding:
            return []
        return self._end_trip()

    def fire_due(self, now: int) -> DeviationChange | None:
        """The timer: the load is still on the road past its allowed transit time."""
        limit_s = self.rule.max_transit_s
        if (
            limit_s is None
            or self.loaded_since is None
            or self.delivered_at is not None
            or self.transit.open_deviation is not None
            or now < self.loaded_since + round(limit_s * 1000)
        ):
            return None
        due = self.loaded_since + round(limit_s * 1000)
        limit = AppliedLimit(
            min=None, max=limit_s / 3600, sustained_s=0.0, unit="h", source=self.rule.source
        )
        return self.transit.open_at(due, limit_s / 3600, limit)

    def observe(self, sample: Sample) -> list[DeviationChange]:
        """A compartment temperature while loaded: exposure builds up above the reference."""
        reference = self.rule.exposure_above
        allowed = self.rule.max_exposure_degree_minutes
        self._last_seen = max(self._last_seen, sample.ts)
        if self.loaded_since is None or reference is None or allowed is None:
            return []
        if sample.ts < self.loaded_since:
            return []
        if self.delivered_at is not None and sample.ts >= self.delivered_at:
            return self._end_trip()
        if self._last_ts is not None:
            self.exposure_ms += self._last_excess * (sample.ts - self._last_ts)
        self._last_ts, self._last_excess = sample.ts, max(0.0, sample.value - reference)
        minutes = self.exposure_ms / 60_000
        if self.exposure.open_deviation is None and minutes > allowed:
            limit = AppliedLimit(
                min=None,
                max=allowed,
                sustained_s=0.0,
                unit=self.exposure.spec.unit,
                source=self.rule.source,
            )
            return [self.exposure.open_at(sample.ts, minutes, limit)]
        if self.exposure.open_deviation is not None:
            self.exposure.open_deviation.peak = minutes
        return []

    @property
    def open_deviations(self) -> list[Deviation]:
        """Deviations open now."""
        found = (self.transit.open_deviation, self.exposure.open_deviation)
        return [d for d in found if d is not None]

    # the rule-kind contract (:class:`stream.engine.kinds.RuleMachine`)

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """A compartment temperature (see :meth:`observe`)."""
        return self.observe(sample)

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """A pickup into the compartment starts the trip; a delivery ends it."""
        home = (self.transit.spec.site, self.transit.spec.asset)
        if isinstance(event, Pickup) and (site, event.compartment) == home:
            return self.pickup(event.ts)
        if isinstance(event, Delivery) and (site, event.compartment) == home:
            return self.delivery(event.ts)
        return ()

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """Past the transit time on the stream's clock; a delivered trip's exposure ends once
        its channel holds nothing from before the delivery."""
        changes = [c for c in (self.fire_due(now),) if c is not None]
        changes.extend(self.trip_over(holding))
        return changes

    def quiet_band(self) -> QuietBand:
        """Judged by its engagement: while loaded, every sample comes."""
        return ANYWHERE

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "loaded_since": self.loaded_since,
            "delivered_at": self.delivered_at,
            "last_seen": self._last_seen,
            "exposure_ms": self.exposure_ms,
            "last_ts": self._last_ts,
            "last_excess": self._last_excess,
            "transit": self.transit.state(),
            "exposure": self.exposure.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self.loaded_since = state["loaded_since"]
        self.delivered_at = state["delivered_at"]
        self._last_seen = state["last_seen"]
        self.exposure_ms = state["exposure_ms"]
        self._last_ts = state["last_ts"]
        self._last_excess = state["last_excess"]
        self.transit.restore(with_deviation(state["transit"]))
        self.exposure.restore(with_deviation(state["exposure"]))


def compile_storage_age(rule: StorageAge, context: PlanContext) -> Compiled:
    """The age of a tank's or compartment's oldest milk: one per asset (a later rule on the
    same asset replaces an earlier one)."""
    where = context.where(rule.asset)
    machine = AgeMachine(rule, context.rule_spec(rule, channel="milk", unit="h"))
    return Compiled(rule.id, machine, assets=(where,), unique_key=("storage_age", *where))


def compile_transport(rule: Transport, context: PlanContext) -> Compiled:
    """A compartment's trip, on its temperature channel and its pickups and deliveries."""
    machine = TransportMachine(
        rule,
        context.rule_spec(rule, channel=rule.channel, unit=context.unit(rule.asset, rule.channel)),
    )
    row = context.row_of[(rule.asset, rule.channel)]
    return Compiled(
        rule.id, machine, reads={"": row}, assets=(context.where(rule.asset),), home_row=row
    )
