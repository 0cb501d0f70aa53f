"""The rule engine: routes readings to the rules of their channel, in event-time order.

Pure code: no broker, database, network or clock. Time is the readings' own timestamps.
Runtimes (the embedded service now, Faust workers later) feed it decoded batches and hand what it
returns to their sinks.

Order: each channel's samples are judged in timestamp order. A sample older than or as old as the
last one judged on its channel is counted as late and not judged (it is still stored by the
runtime); re-judging late samples at their timestamps is the job of the lateness buffer that
extends this engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from milkguard.contract.v1 import Reading
from stream.engine.deviation import Deviation, DeviationChange
from stream.engine.limits import CriticalLimitState, LimitSpec
from stream.plan import LoadedPlan


@dataclass(slots=True)
class EngineCounters:
    """What the engine saw, for metrics and the run summary."""

    judged: int = 0
    unplanned: int = 0
    late: int = 0
    opened: int = 0
    closed: int = 0


@dataclass(slots=True)
class _ChannelState:
    unit: str
    rules: list[CriticalLimitState] = field(default_factory=list)
    last_ts: int = -1
    late: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about the input that an operator should hear of, without a flood.

    ``unplanned``: the first reading of a channel the plan does not know.
    ``late``: a reading older than the last judged on its channel; sent for the 1st, 10th,
    100th, ... of a channel, with the count so far.
    """

    kind: str
    site: str
    asset: str
    channel: str
    ts: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class UnitMismatch:
    """A reading whose unit is not the one the plan declares for its channel."""

    reading: Reading
    expected: str


class RuleEngine:
    """Judges readings against a loaded HACCP plan."""

    def __init__(self, loaded: LoadedPlan) -> None:
        self.plan = loaded
        self.counters = EngineCounters()
        self.notices: list[Notice] = []
        self._unplanned_seen: set[tuple[str, str, str]] = set()
        self._channels: dict[tuple[str, str, str], _ChannelState] = {}
        plan = loaded.plan
        for key, asset in plan.assets.items():
            for channel_id, channel in asset.channels.items():
                self._channels[(asset.site, asset.id or key, channel_id)] = _ChannelState(
                    channel.unit
                )
        for rule in plan.rules:
            asset = plan.assets[rule.asset]
            asset_id = asset.id or rule.asset
            spec = LimitSpec(
                rule_id=rule.id,
                ccp=rule.ccp,
                severity=rule.severity,
                action=rule.action,
                site=asset.site,
                asset=asset_id,
                channel=rule.channel,
                minimum=rule.min,
                maximum=rule.max,
                sustained_ms=round(rule.sustained_s * 1000),
                unit=asset.channels[rule.channel].unit,
                source=rule.source,
                plan=plan.plan,
                plan_version=loaded.version,
                jurisdiction=plan.jurisdiction,
            )
            self._channels[(asset.site, asset_id, rule.channel)].rules.append(
                CriticalLimitState(spec)
            )

    def expected_unit(self, site: str, reading: Reading) -> str | None:
        """The unit the plan declares for a reading's channel, or None if the plan lacks it."""
        state = self._channels.get((site, reading.asset, reading.channel))
        return state.unit if state is not None else None

    def judge(
        self, site: str, device: str, readings: list[Reading], out: list[DeviationChange]
    ) -> list[UnitMismatch]:
        """Judge a gateway's readings; append deviation changes to ``out``.

        Returns the readings whose unit differs from the plan's, which are not judged: a
        Fahrenheit value checked against a Celsius limit would be a false verdict either way.
        """
        mismatches: list[UnitMismatch] = []
        counters = self.counters
        channels = self._channels
        ordered = sorted(readings, key=_by_time) if len(readings) > 1 else readings
        for reading in ordered:
            key = (site, reading.asset, reading.channel)
            state = channels.get(key)
            if state is None:
                counters.unplanned += 1
                if key not in self._unplanned_seen and len(self._unplanned_seen) < _MAX_NOTICED:
                    self._unplanned_seen.add(key)
                    self.notices.append(Notice("unplanned", *key, reading.ts))
                continue
            if reading.unit != state.unit:
                mismatches.append(UnitMismatch(reading, state.unit))
                continue
            ts = reading.ts
            if ts <= state.last_ts:
                counters.late += 1
                state.late += 1
                if _is_power_of_ten(state.late):
                    self.notices.append(Notice("late", *key, ts, state.late))
                continue
            state.last_ts = ts
            counters.judged += 1
            for rule in state.rules:
                change = rule.observe(ts, reading.value, device)
                if change is not None:
                    if change.kind == "opened":
                        counters.opened += 1
                    else:
                        counters.closed += 1
                    out.append(change)
        return mismatches

    def take_notices(self) -> list[Notice]:
        """The notices gathered since the last call."""
        notices, self.notices = self.notices, []
        return notices

    def open_deviations(self) -> list[Deviation]:
        """Deviations open now, e.g. to report at shutdown that they are still open."""
        return [
            rule.open_deviation
            for state in self._channels.values()
            for rule in state.rules
            if rule.open_deviation is not None
        ]


def _by_time(reading: Reading) -> int:
    return reading.ts


# unplanned channels are noticed once each, up to this many (a gateway inventing ids is bounded)
_MAX_NOTICED = 10_000


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1
