"""Rule machines: the scalar, per-channel judgement of one rule, sample by sample.

The engine only hands a machine the samples that could change its state (its screen lets quiet
samples through in bulk), so a machine must be stateless when idle: whatever it needs of the past
while idle (the previous sample, the start of a flat run) comes in with the sample.

Every machine follows the same shape as the critical limit: an excursion starts at the first
sample that shows it; the deviation opens when the rule says it is one; it closes at the first
sample that no longer shows it, and that sample's time is the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import msgspec
from msgspec.structs import replace

from milkguard.contract.v1 import Event
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange, deviation_id

#: "never": a time span no flat line or gap reaches
NEVER = 2**62


class QuietBand(NamedTuple):
    """Where a rule cannot act on a sample of the channel it reads, for the engine's vector
    screen: a value within ``lo``..``hi``, a step no faster than ``max_per_ms``, a flat line
    shorter than ``flat_ms``. A channel's band is the narrowest of its rules' bands."""

    lo: float = -math.inf
    hi: float = math.inf
    max_per_ms: float = math.inf
    flat_ms: int = NEVER

    def narrowed(self, other: QuietBand) -> QuietBand:
        """The band inside both."""
        return QuietBand(
            max(self.lo, other.lo),
            min(self.hi, other.hi),
            min(self.max_per_ms, other.max_per_ms),
            min(self.flat_ms, other.flat_ms),
        )


#: the band of a rule that any sample may move (it is judged by its engagement, or never
#: screened): it narrows nothing
ANYWHERE = QuietBand()

#: the band of a channel whose every sample a rule must see: no value lies inside it
NEVER_QUIET = QuietBand(lo=math.inf, hi=-math.inf)


class Derived(NamedTuple):
    """A value computed from readings, kept as a time series: a holding time, an F0."""

    site: str
    asset: str
    rule_id: str
    quantity: str  # holding_time_s, f0_min
    ts: int
    value: float


class Handover(msgspec.Struct):
    """What one rule's machine passes to another's while they take the same event, in the
    order the engine hands it out (e.g. a pickup: the farm tank's oldest milk goes to the
    compartment's age)."""

    oldest: int | None = None
    #: the oldest acceptance of the unprocessed milk a silo transfer moves (its acceptance
    #: window goes with it, :mod:`stream.engine.acceptance`)
    accepted: int | None = None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """What every machine needs to know of its rule and the plan it belongs to."""

    rule_id: str
    kind: str
    ccp: str | None
    severity: str
    action: str
    site: str
    asset: str
    channel: str
    unit: str
    source: str
    plan: str
    plan_version: str
    jurisdiction: str
    suspend_during_cleaning: bool = False
    minimum: float | None = None
    maximum: float | None = None
    sustained_ms: int = 0
    flat_ms: int = 0
    max_per_ms: float = 0.0


@dataclass(slots=True)
class Sample:
    """One sample as a machine sees it, with what it needs of the channel's past."""

    ts: int
    value: float
    prev_ts: int  # -1: the channel's first sample
    prev_value: float
    run_start: int  # when the current exact flat line began
    device: str
    late: bool
    cleaning_since: int = -1  # start of the cleaning (CIP) window this sample is in, or -1
    prev_cleaning: bool = False  # the previous sample was taken during cleaning
    offset_ms: int = 0  # the device clock's estimated offset (ahead: positive)


class Machine:
    """Base of the rule machines: opening, updating and closing one deviation at a time."""

    __slots__ = ("_open", "spec")

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self._open: Deviation | None = None

    @property
    def open_deviation(self) -> Deviation | None:
        """The deviation open on this rule and channel now, if any."""
        return self._open

    @property
    def engaged(self) -> bool:
        """True while the machine holds state a quiet sample could change."""
        return self._open is not None

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Judge one sample, in timestamp order."""
        raise NotImplementedError

    # the rule-kind contract (:class:`stream.engine.kinds.RuleMachine`) for machines that are a
    # whole rule on their own: one channel, one deviation at a time, no events, no timers

    #: whether a fresh copy of this machine may re-judge history with late readings in it
    rejudges_late: ClassVar[bool] = False

    def fresh(self, derived: list[Derived]) -> Machine | None:
        """A machine of the same rule with no verdicts yet, to re-judge retained history with
        late readings merged in (:mod:`stream.engine.late`); None for a kind that is not
        re-judged. ``derived`` takes what it computes (nothing, for these)."""
        return type(self)(self.spec) if self.rejudges_late else None

    def on_sample(self, role: str, sample: Sample) -> Sequence[DeviationChange]:
        """Judge one sample of the channel (``role`` is the rule's only one, "")."""
        change = self.observe(sample)
        return () if change is None else (change,)

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Events do not concern a single-channel limit."""
        return ()

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """No timers: samples decide."""
        return ()

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviation open now, as a list (the contract's shape)."""
        return [] if self._open is None else [self._open]

    def quiet_band(self) -> QuietBand:
        """Where no sample can move this machine while it is not engaged."""
        return ANYWHERE

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep of this machine."""
        return {"open": self._open}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a state made by :meth:`state`."""
        self._open = state["open"]

    def _opened(
        self,
        start_ms: int,
        sample: Sample,
        peak: float | None,
        limit: AppliedLimit,
        *,
        value: float | None = None,
    ) -> DeviationChange:
        """Open the deviation; ``value``: the channel's value that opened it, when a sample of
        the channel did (not a deadline's timer)."""
        spec = self.spec
        self._open = Deviation(
            id=deviation_id(spec.plan_version, spec.rule_id, spec.site, spec.asset, start_ms),
            status="open",
            kind=spec.kind,
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
            device=sample.device,
            limit=limit,
            start_ms=start_ms,
            detected_ms=sample.ts,
            end_ms=None,
            peak=peak,
            time_beyond_s=(sample.ts - start_ms) / 1000,
            degree_minutes=0.0,
            detected_late=sample.late,
            clock_offset_ms=sample.offset_ms,
            value=value,
        )
        # sinks keep the change; the open record keeps changing here, so snapshot it
        return DeviationChange(kind="opened", deviation=replace(self._open))

    def _closed(self, end_ms: int, late: bool) -> DeviationChange:
        deviation = self._open
        assert deviation is not None  # only called with an open deviation
        if end_ms < deviation.start_ms:
            # data that reached the stream after a timer opened this deviation says it ended
            # before it began: it cannot be unsaid, it ends where it began, flagged late
            end_ms, late = deviation.start_ms, True
        deviation.status = "closed"
        deviation.end_ms = end_ms
        deviation.time_beyond_s = (end_ms - deviation.start_ms) / 1000
        deviation.detected_late = deviation.detected_late or late
        self._open = None
        return DeviationChange(kind="closed", deviation=deviation)

    def _limit(self) -> AppliedLimit:
        spec = self.spec
        return AppliedLimit(
            min=spec.minimum,
            max=spec.maximum,
            sustained_s=spec.sustained_ms / 1000,
            unit=spec.unit,
            source=spec.source,
        )


class CriticalLimitMachine(Machine):
    """A minimum and/or maximum, at once or sustained.

    With ``sustained_ms == 0`` (a CCP critical limit) the deviation opens at the first sample
    beyond the limit: no moving average, no grace. Otherwise it opens at the first sample at
    which the excursion has lasted that long; its start is still the excursion's first sample.
    Degree-minutes hold each sample's excess until the next sample (no interpolation).
    """

    __slots__ = ("_breach_start", "_degree_ms", "_last_excess", "_last_ts", "_peak", "_peak_excess")
    rejudges_late = True

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._breach_start: int | None = None
        self._peak = 0.0
        self._peak_excess = 0.0
        self._degree_ms = 0.0
        self._last_ts = 0
        self._last_excess = 0.0

    @property
    def engaged(self) -> bool:
        """True during an excursion (open or not yet sustained)."""
        return self._breach_start is not None

    def quiet_band(self) -> QuietBand:
        """Within the limits."""
        spec = self.spec
        return QuietBand(
            lo=-math.inf if spec.minimum is None else spec.minimum,
            hi=math.inf if spec.maximum is None else spec.maximum,
        )

    def excess(self, value: float) -> float:
        """How far ``value`` lies beyond the limit (0.0 when within it)."""
        spec = self.spec
        if spec.maximum is not None and value > spec.maximum:
            return value - spec.maximum
        if spec.minimum is not None and value < spec.minimum:
            return spec.minimum - value
        return 0.0

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Judge one sample."""
        if sample.cleaning_since >= 0 and self.spec.suspend_during_cleaning:
            return self._suspend(sample)
        return self.observe_excess(sample, self.excess(sample.value))

    def observe_excess(
        self, sample: Sample, excess: float, limit: AppliedLimit | None = None
    ) -> DeviationChange | None:
        """Judge one sample whose distance beyond the limit the caller worked out (rules whose
        limit moves, like a pasteurizer's minimum with the product in force)."""
        ts, value = sample.ts, sample.value
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
                    applied = limit or self._limit()
                    change = self._opened(
                        self._breach_start, sample, self._peak, applied, value=sample.value
                    )
                    self._open_degree_minutes()
            else:
                self._open.peak = self._peak
                self._open.degree_minutes = self._degree_ms / 60_000
        elif self._breach_start is not None:
            if self._open is not None:
                self._open.peak = self._peak
                self._open.degree_minutes = self._degree_ms / 60_000
                change = self._closed(ts, sample.late)
            self._breach_start = None
        self._last_ts, self._last_excess = ts, excess
        return change

    def suspend(self, sample: Sample) -> DeviationChange | None:
        """Cleaning began (called by rules that judge several channels together)."""
        return self._suspend(sample)

    def _suspend(self, sample: Sample) -> DeviationChange | None:
        """Cleaning began: the product run it judged has ended there."""
        change: DeviationChange | None = None
        if self._breach_start is not None:
            ended = max(sample.cleaning_since, self._last_ts)
            self._degree_ms += self._last_excess * (ended - self._last_ts)
            if self._open is not None:
                self._open.peak = self._peak
                self._open.degree_minutes = self._degree_ms / 60_000
                change = self._closed(ended, sample.late)
            self._breach_start = None
        self._last_ts, self._last_excess = sample.ts, 0.0
        return change

    def _open_degree_minutes(self) -> None:
        assert self._open is not None
        self._open.degree_minutes = self._degree_ms / 60_000

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "open": self._open,
            "breach_start": self._breach_start,
            "peak": self._peak,
            "peak_excess": self._peak_excess,
            "degree_ms": self._degree_ms,
            "last_ts": self._last_ts,
            "last_excess": self._last_excess,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self._open = state["open"]
        self._breach_start = state["breach_start"]
        self._peak = state["peak"]
        self._peak_excess = state["peak_excess"]
        self._degree_ms = state["degree_ms"]
        self._last_ts = state["last_ts"]
        self._last_excess = state["last_excess"]


class StuckSensorMachine(Machine):
    """An exact flat line lasting ``flat_ms`` or longer: the channel is unmonitored.

    The deviation starts where the flat line began and ends at the first different value.
    """

    __slots__ = ()
    rejudges_late = True

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Judge one sample."""
        if self.spec.suspend_during_cleaning and sample.cleaning_since >= 0:
            return self._closed(sample.ts, sample.late) if self._open is not None else None
        flat = sample.prev_ts >= 0 and sample.value == sample.prev_value
        if self._open is None:
            if flat and sample.ts - sample.run_start >= self.spec.flat_ms:
                return self._opened(
                    sample.run_start, sample, sample.value, self._flat_limit(), value=sample.value
                )
            return None
        if flat:
            return None
        return self._closed(sample.ts, sample.late)

    def quiet_band(self) -> QuietBand:
        """A flat line shorter than the limit."""
        return QuietBand(flat_ms=self.spec.flat_ms)

    def _flat_limit(self) -> AppliedLimit:
        spec = self.spec
        return AppliedLimit(
            min=None, max=None, sustained_s=spec.flat_ms / 1000, unit=spec.unit, source=spec.source
        )


class RateOfChangeMachine(Machine):
    """A step between two samples faster than ``max_per_ms``: implausible readings.

    Opens at the first implausible step (peak: the fastest rate seen, per minute) and closes at
    the first plausible step after it.
    """

    __slots__ = ()
    rejudges_late = True

    def observe(self, sample: Sample) -> DeviationChange | None:
        """Judge one sample."""
        if sample.prev_ts < 0:
            return None
        if self.spec.suspend_during_cleaning and (
            sample.cleaning_since >= 0 or sample.prev_cleaning
        ):
            # steps into, during and out of cleaning are the cleaning, not the sensor
            return self._closed(sample.ts, sample.late) if self._open is not None else None
        step, span = abs(sample.value - sample.prev_value), sample.ts - sample.prev_ts
        rate = step / max(span, 1)  # one instant twice (never here, by the engine): as 1 ms
        # the same comparison as the engine's screen, so the two never disagree on a boundary
        implausible = step > self.spec.max_per_ms * span
        if self._open is None:
            if implausible:
                return self._opened(
                    sample.ts, sample, rate * 60_000, self._rate_limit(), value=sample.value
                )
            return None
        if implausible:
            if self._open.peak is None or rate * 60_000 > self._open.peak:
                self._open.peak = rate * 60_000
            return None
        return self._closed(sample.ts, sample.late)

    def quiet_band(self) -> QuietBand:
        """Steps no faster than the limit."""
        return QuietBand(max_per_ms=self.spec.max_per_ms)

    def _rate_limit(self) -> AppliedLimit:
        spec = self.spec
        return AppliedLimit(
            min=None,
            max=spec.max_per_ms * 60_000,
            sustained_s=0.0,
            unit=f"{spec.unit}/min",
            source=spec.source,
        )


class SilenceMachine(Machine):
    """ "Monitoring lost": no sample for longer than the channel's silence limit.

    The record starts at the channel's last sample: for a critical control point, everything
    after the last record is unmonitored product that must be held (PMO: a recorder that stops
    leaves the product since its last record unaccounted for). A sample that itself breached a
    limit is still a record: the monitoring worked, and the product it stands for is held by
    that breach's own deviation, so the gap starts after it, not at the last sample within the
    limits (which would make the gap overlap the breach and hang on the other rules). The
    deviation is detected at the deadline, the last sample plus the limit, and closes at the
    next sample. Opened by the engine's timer when no sample came by then or, if the gap is only
    seen when the next sample arrives, opened and closed together: both from the last sample,
    so both get the same id. A channel never heard from at all is counted from the end of the
    plan's start-up grace, and its record says so. Never suspended: cleaning does not excuse a
    silent recorder.
    """

    __slots__ = ("grace_ms", "silence_ms")

    def __init__(self, spec: RuleSpec, silence_ms: int, grace_ms: int = 0) -> None:
        super().__init__(spec)
        self.silence_ms = silence_ms
        self.grace_ms = grace_ms  # the plan's start-up grace, named in a never-heard record

    def open_at(self, last_ms: int, device: str, *, never_heard: bool = False) -> DeviationChange:
        """No sample came within the limit after ``last_ms``, the channel's last sample (or, for
        a channel ``never_heard`` from, the end of the start-up grace): open the deviation
        there, detected at the deadline."""
        deadline_ms = last_ms + self.silence_ms
        sample = Sample(deadline_ms, 0.0, -1, 0.0, deadline_ms, device, late=False)
        return self._opened(last_ms, sample, None, self._silence_limit(never_heard))

    def observe(self, sample: Sample) -> DeviationChange | None:
        """A sample arrived: close the deviation at it (the engine opens it first if needed)."""
        if self._open is None:
            return None
        return self._closed(sample.ts, sample.late)

    def _silence_limit(self, never_heard: bool) -> AppliedLimit:
        spec = self.spec
        source = spec.source
        if never_heard:
            source += (
                "; never heard from: unmonitored from the service's start plus its "
                f"{self.grace_ms / 1000:g} s start-up grace (startup_grace_s)"
            )
        return AppliedLimit(
            min=None,
            max=None,
            sustained_s=self.silence_ms / 1000,
            unit=spec.unit,
            source=source,
        )


def with_deviation(state: dict[str, Any]) -> dict[str, Any]:
    """A machine state read back from a snapshot, with its open deviation typed again."""
    opened = state.get("open")
    if opened is not None and not isinstance(opened, Deviation):
        return {**state, "open": msgspec.convert(opened, Deviation)}
    return state
