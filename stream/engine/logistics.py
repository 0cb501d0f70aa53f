"""Milk on the move: the age of the oldest milk in a tank, compartment or silo, and each
load's trip.

Both are driven by events (milkings, pickups, deliveries, a plant's receipts, transfers, runs)
and fire by the clock: a deadline passed with the milk still there opens a deviation at the
deadline; emptying the tank, compartment or silo ends it. What empties it is its contents'
books (:mod:`stream.engine.contents`): a take that leaves more than its heel keeps the oldest
milk's age running. A trip's temperature exposure is judged sample by sample while loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from milkguard.contract.v1 import Delivery, Event, MilkingEnd, MilkingStart, Pickup
from stream.engine.contents import Contents, contents_of, silo_move
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
    """The age of the oldest milk in one tank, compartment or silo (see
    :mod:`stream.engine.contents` for the books that say when it is empty)."""

    def __init__(self, rule: StorageAge, base: RuleSpec, contents: Contents | None = None) -> None:
        self.rule = rule
        self.max_age_ms = round(rule.max_age_s * 1000)
        self.oldest: int | None = None
        # (when milk came in, how old it was): events may arrive out of order, so an emptying
        # takes only the milk that came in before it; a take that leaves milk takes none of it
        # (mixed: what remains is as old as the oldest milk that was in)
        self._fills: list[tuple[int, int]] = []
        self.contents = contents if contents is not None else Contents()
        self._planned: dict[str, float | None] = {}  # a silo's draws planned by running runs
        self.deadline = _Deadline(replace(base, rule_id=rule.id, kind="storage_age", unit="h"))

    @property
    def milk_oldest(self) -> int | None:
        """The oldest milk in it (what a take hands on), whatever the rule counts from."""
        return min((since for _, since in self._fills), default=None)

    def _clock(self) -> int | None:
        if self.rule.since == "first_fill":
            return min((came for came, _ in self._fills), default=None)
        return self.milk_oldest

    def filled(self, ts: int, oldest: int | None = None) -> None:
        """Milk came in: a milking (its own time), a pickup or transfer (the source's oldest
        milk), a receipt (its acceptance: a receipt does not say how old the load's milk is)."""
        since = oldest if oldest is not None else ts
        self._fills.append((ts, min(since, ts)))
        del self._fills[:-64]
        self.oldest = self._clock()

    def took(self, ts: int, volume_l: float | None) -> list[DeviationChange]:
        """Milk went out at ``ts``: emptied if what remains is at or below the heel, else the
        age of the oldest milk runs on."""
        if self.contents.take(ts, volume_l):
            return self.emptied(ts)
        return []

    def emptied(self, ts: int) -> list[DeviationChange]:
        """All the milk that came in before ``ts`` left (a pickup or delivery that left no more
        than the heel, a silo emptied).

        Milk that was older than allowed when it left is a deviation from its deadline to its
        leaving, whether or not the timer saw the deadline pass first (the stream's clock may
        not have reached it between the two events)."""
        changes: list[DeviationChange] = []
        taken = [fill for fill in self._fills if fill[0] <= ts]
        if taken and self.deadline.open_deviation is None:
            first = 0 if self.rule.since == "first_fill" else 1
            due = min(fill[first] for fill in taken) + self.max_age_ms
            if due <= ts:
                changes.append(
                    self.deadline.open_at(due, self.rule.max_age_s / 3600, self._limit())
                )
        self._fills = [(came, since) for came, since in self._fills if came > ts]
        self.oldest = self._clock()
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
    # and the stream's clock, never by samples (a level gauge's readings only feed the books)

    @property
    def engaged(self) -> bool:
        """Samples never move a verdict."""
        return False

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviation open now."""
        found = self.deadline.open_deviation
        return [] if found is None else [found]

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """A reading of the asset's level gauge, for the books."""
        self.contents.gauge(sample.ts, sample.value)
        return ()

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Milkings fill the tank; a pickup takes from the farm tank (handing its oldest milk
        on) and fills the compartment; a delivery takes from the compartment; the plant's
        events fill, draw from and empty a silo."""
        home = (self.deadline.spec.site, self.deadline.spec.asset)
        if isinstance(event, Pickup):
            if (event.source_site, event.source_asset) == home:
                handover.oldest = self.milk_oldest
                return self.took(event.ts, event.volume_l)
            if (site, event.compartment) == home:
                self.contents.add(event.volume_l)
                self.filled(event.ts, handover.oldest)
        elif isinstance(event, Delivery):
            if (site, event.compartment) == home:
                return self.took(event.ts, event.volume_l)
        elif isinstance(event, MilkingStart):
            self.contents.started_filling()
            self.filled(event.ts)
        elif isinstance(event, MilkingEnd):
            self.contents.add(event.volume_l)
        else:
            return self._silo_event(event, site, handover, home)
        return ()

    def _silo_event(
        self, event: Event, site: str, handover: Handover, home: tuple[str, str]
    ) -> list[DeviationChange]:
        """A plant event's move of milk into, out of a silo, or the silo emptied. A transfer
        reaches the silo it drains first (:func:`stream.engine.judging.event_places`), which
        hands its oldest milk on to the silo it fills."""
        move = silo_move(event, site, home, self._planned)
        if move is None:
            return []
        if move.way == "emptied":
            self.contents.empty()
            return self.emptied(event.ts)
        if move.way == "out":
            handover.oldest = self.milk_oldest
            return self.took(event.ts, move.volume_l)
        self.contents.add(move.volume_l)
        self.filled(event.ts, handover.oldest if move.source is not None else None)
        return []

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """The oldest milk passed its age on the stream's clock."""
        change = self.fire_due(now)
        return () if change is None else (change,)

    def quiet_band(self) -> QuietBand:
        """Reads no channel, or a level gauge whose every reading the books need (the
        compiler marks that channel never quiet)."""
        return ANYWHERE

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "fills": self._fills,
            "deadline": self.deadline.state(),
            "contents": self.contents.state(),
            "planned": self._planned,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state (one from before the books: empty books, no runs)."""
        self._fills = [(int(came), int(since)) for came, since in state["fills"]]
        self.oldest = self._clock()
        self.deadline.restore(with_deviation(state["deadline"]))
        self.contents.restore(state.get("contents"))
        self._planned = dict(state.get("planned", {}))


class TransportMachine:
    """One compartment's load from first pickup to the delivery that empties it: transit time
    and exposure."""

    def __init__(self, rule: Transport, base: RuleSpec, contents: Contents | None = None) -> None:
        self.rule = rule
        # a delivery that leaves milk aboard (a load split between plants) does not end the
        # trip: the milk still aboard is still on the road, in the same compartment's heat
        self.contents = contents if contents is not None else Contents()
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
        """A pickup into the compartment starts the trip; a delivery that leaves no more than
        the compartment's heel ends it (one that leaves milk aboard: the trip goes on)."""
        home = (self.transit.spec.site, self.transit.spec.asset)
        if isinstance(event, Pickup) and (site, event.compartment) == home:
            self.contents.add(event.volume_l)
            return self.pickup(event.ts)
        if isinstance(event, Delivery) and (site, event.compartment) == home:
            if not self.contents.take(event.ts, event.volume_l):
                return ()
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
            "contents": self.contents.state(),
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
        self.contents.restore(state.get("contents"))


def compile_storage_age(rule: StorageAge, context: PlanContext) -> Compiled:
    """The age of a tank's, compartment's or silo's oldest milk: one per asset (a later rule on
    the same asset replaces an earlier one); it reads the asset's level gauge, if named."""
    where = context.where(rule.asset)
    contents, gauge = contents_of(rule.asset, context)
    machine = AgeMachine(rule, context.rule_spec(rule, channel="milk", unit="h"), contents)
    reads = {} if gauge is None else {"volume": gauge}
    return Compiled(
        rule.id,
        machine,
        reads=reads,
        assets=(where,),
        unique_key=("storage_age", *where),
        never_quiet=tuple(reads),
    )


def compile_transport(rule: Transport, context: PlanContext) -> Compiled:
    """A compartment's trip, on its temperature channel and its pickups and deliveries."""
    machine = TransportMachine(
        rule,
        context.rule_spec(rule, channel=rule.channel, unit=context.unit(rule.asset, rule.channel)),
        contents_of(rule.asset, context)[0],
    )
    row = context.row_of[(rule.asset, rule.channel)]
    return Compiled(
        rule.id, machine, reads={"": row}, assets=(context.where(rule.asset),), home_row=row
    )
