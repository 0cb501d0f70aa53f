"""Critical limits: a minimum and/or maximum on one channel, instant or sustained.

Judged on event time, sample by sample, in timestamp order:

- An excursion starts at the first sample beyond the limit.
- With ``sustained_s == 0`` (a CCP critical limit) the deviation opens at that first sample: no
  moving average, no grace.
- With ``sustained_s > 0`` it opens at the first sample at which the excursion has lasted that
  long; its start is still the excursion's first sample, so the record shows the whole breach.
- It closes at the first sample back within the limit; that sample's time is the end.
- Degree-minutes integrate the distance beyond the limit over time, each sample's excess held
  until the next sample (no interpolation: a sensor says nothing about the time between samples).
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec.structs import replace

from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange, deviation_id


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What the engine needs of a critical-limit rule and the plan it belongs to."""

    rule_id: str
    ccp: str | None
    severity: str
    action: str
    site: str
    asset: str
    channel: str
    minimum: float | None
    maximum: float | None
    sustained_ms: int
    unit: str
    source: str
    plan: str
    plan_version: str
    jurisdiction: str

    def excess(self, value: float) -> float:
        """How far ``value`` lies beyond the limit (0.0 when within it)."""
        if self.maximum is not None and value > self.maximum:
            return value - self.maximum
        if self.minimum is not None and value < self.minimum:
            return self.minimum - value
        return 0.0


class CriticalLimitState:
    """The state of one critical-limit rule on one channel."""

    __slots__ = (
        "_breach_start",
        "_degree_ms",
        "_last_excess",
        "_last_ts",
        "_open",
        "_peak",
        "_peak_excess",
        "spec",
    )

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self._breach_start: int | None = None
        self._peak = 0.0
        self._peak_excess = 0.0
        self._degree_ms = 0.0
        self._last_ts = 0
        self._last_excess = 0.0
        self._open: Deviation | None = None

    @property
    def open_deviation(self) -> Deviation | None:
        """The deviation currently open on this rule and channel, if any."""
        return self._open

    def observe(self, ts: int, value: float, device: str) -> DeviationChange | None:
        """Judge one sample; samples must come in timestamp order (the engine guarantees it)."""
        excess = self.spec.excess(value)
        if self._breach_start is not None:
            self._degree_ms += self._last_excess * (ts - self._last_ts)
        change: DeviationChange | None = None
        if excess > 0.0:
            if self._breach_start is None:
                self._breach_start = ts
                self._peak, self._peak_excess, self._degree_ms = value, excess, 0.0
            elif excess > self._peak_excess:
                self._peak, self._peak_excess = value, excess
            if self._open is None:
                if ts - self._breach_start >= self.spec.sustained_ms:
                    self._open = self._new_deviation(self._breach_start, ts, device)
                    # sinks keep the change; the open record keeps changing here, so snapshot it
                    change = DeviationChange(kind="opened", deviation=replace(self._open))
            else:
                self._open.peak = self._peak
        elif self._breach_start is not None:
            if self._open is not None:
                change = self._close(ts)
            self._breach_start = None
        self._last_ts, self._last_excess = ts, excess
        return change

    def _close(self, end_ms: int) -> DeviationChange:
        deviation = self._open
        assert deviation is not None  # only called with an open deviation
        deviation.status = "closed"
        deviation.end_ms = end_ms
        deviation.peak = self._peak
        deviation.time_beyond_s = (end_ms - deviation.start_ms) / 1000
        deviation.degree_minutes = self._degree_ms / 60_000
        self._open = None
        return DeviationChange(kind="closed", deviation=deviation)

    def _new_deviation(self, start_ms: int, detected_ms: int, device: str) -> Deviation:
        spec = self.spec
        return Deviation(
            id=deviation_id(spec.plan_version, spec.rule_id, spec.site, spec.asset, start_ms),
            status="open",
            plan=spec.plan,
            plan_version=spec.plan_version,
            rule_id=spec.rule_id,
            ccp=spec.ccp,
            jurisdiction=spec.jurisdiction,
            severity=spec.severity,
            action=spec.action,
            site=spec.site,
            asset=spec.asset,
            channels=[spec.channel],
            device=device,
            limit=AppliedLimit(
                min=spec.minimum,
                max=spec.maximum,
                sustained_s=spec.sustained_ms / 1000,
                unit=spec.unit,
                source=spec.source,
            ),
            start_ms=start_ms,
            detected_ms=detected_ms,
            end_ms=None,
            peak=self._peak,
            time_beyond_s=(detected_ms - start_ms) / 1000,
            degree_minutes=self._degree_ms / 60_000,
        )
