"""Milk on the move: the age of the oldest milk in a tank or compartment, and each load's trip.

Both are driven by events (milkings, pickups, deliveries) and fire by the clock: a deadline
passed with the milk still there opens a deviation at the deadline; emptying the tank or
compartment ends it. A trip's temperature exposure is judged sample by sample while loaded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.machines import Machine, RuleSpec, Sample, with_deviation
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
        self.deadline = _Deadline(replace(base, rule_id=rule.id, kind="storage_age", unit="h"))

    def filled(self, ts: int, oldest: int | None = None) -> None:
        """Milk came in: a milking (its own time) or a pickup (the source's oldest milk)."""
        since = oldest if oldest is not None else ts
        self.oldest = since if self.oldest is None else min(self.oldest, since)

    def emptied(self, ts: int) -> DeviationChange | None:
        """A pickup (tank) or delivery (compartment) took all the milk."""
        self.oldest = None
        return self.deadline.end_at(ts)

    def fire_due(self, now: int) -> DeviationChange | None:
        """The timer: the oldest milk is older than allowed and still here."""
        if self.oldest is None or self.deadline.open_deviation is not None:
            return None
        due = self.oldest + self.max_age_ms
        if now < due:
            return None
        limit = AppliedLimit(
            min=None,
            max=self.rule.max_age_s / 3600,
            sustained_s=0.0,
            unit="h",
            source=self.rule.source,
        )
        return self.deadline.open_at(due, self.rule.max_age_s / 3600, limit)

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {"oldest": self.oldest, "deadline": self.deadline.state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self.oldest = state["oldest"]
        self.deadline.restore(with_deviation(state["deadline"]))


class TransportMachine:
    """One compartment's load from first pickup to delivery: transit time and exposure."""

    def __init__(self, rule: Transport, base: RuleSpec) -> None:
        self.rule = rule
        self.loaded_since: int | None = None
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
        """While loaded with an exposure limit, every sample counts."""
        return self.loaded_since is not None and self.rule.exposure_above is not None

    def pickup(self, ts: int) -> None:
        """A pickup into the compartment: the first one starts the load's trip."""
        if self.loaded_since is None:
            self.loaded_since = ts
            self.exposure_ms = 0.0
            self._last_ts, self._last_excess = None, 0.0

    def delivery(self, ts: int) -> list[DeviationChange]:
        """The load arrived: its trip ends."""
        self.loaded_since = None
        return [c for c in (self.transit.end_at(ts), self.exposure.end_at(ts)) if c is not None]

    def fire_due(self, now: int) -> DeviationChange | None:
        """The timer: the load is still on the road past its allowed transit time."""
        limit_s = self.rule.max_transit_s
        if (
            limit_s is None
            or self.loaded_since is None
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
        if self.loaded_since is None or reference is None or allowed is None:
            return []
        if sample.ts < self.loaded_since:
            return []
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

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "loaded_since": self.loaded_since,
            "exposure_ms": self.exposure_ms,
            "last_ts": self._last_ts,
            "last_excess": self._last_excess,
            "transit": self.transit.state(),
            "exposure": self.exposure.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self.loaded_since = state["loaded_since"]
        self.exposure_ms = state["exposure_ms"]
        self._last_ts = state["last_ts"]
        self._last_excess = state["last_excess"]
        self.transit.restore(with_deviation(state["transit"]))
        self.exposure.restore(with_deviation(state["exposure"]))
