"""The HTST pasteurizer's critical control point, judged over its channels together.

The engine hands this machine every sample of the pasteurizer's channels in event-time order,
merged across channels, so "the flow-diversion state when this temperature was read" is exact.
Three deviations can come of it, each a critical-limit machine fed with an excess computed here:

- ``htst_temperature``: forward flow below the legal minimum of the product in force. At the
  first sample: no averaging, no grace. A switch to divert ends it (the device did its job).
- ``htst_holding_time``: the fastest particle's holding time V / (k Q) below the legal time in
  forward flow (a flow surge); the product in that window is held.
- ``htst_recorder``: the recording thermometer above the indicating one, which is the official.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from milkguard.contract.v1 import Event, ProductChange
from stream.engine.deviation import AppliedLimit, Deviation, DeviationChange
from stream.engine.kinds import Compiled, PlanContext
from stream.engine.machines import (
    ANYWHERE,
    CriticalLimitMachine,
    Handover,
    QuietBand,
    RuleSpec,
    Sample,
    with_deviation,
)
from stream.engine.machines import Derived as Derived  # noqa: PLC0414 - imported from here
from stream.plan import Htst, Uht

# k, the fastest particle's velocity over the mean, by Reynolds number (PMO holding-tube tables)
_LAMINAR_RE, _TRANSITION_RE, _TURBULENT_RE = 2100.0, 4000.0, 20000.0
_K_LAMINAR, _K_TRANSITION, _K_TURBULENT = 2.0, 1.33, 1.25


def fastest_to_mean(reynolds: float) -> float:
    """k for a Reynolds number: 2.0 laminar, 1.33 at 4000, 1.25 turbulent, linear between."""
    if reynolds <= _LAMINAR_RE:
        return _K_LAMINAR
    if reynolds <= _TRANSITION_RE:
        share = (reynolds - _LAMINAR_RE) / (_TRANSITION_RE - _LAMINAR_RE)
        return _K_LAMINAR + share * (_K_TRANSITION - _K_LAMINAR)
    if reynolds <= _TURBULENT_RE:
        share = (reynolds - _TRANSITION_RE) / (_TURBULENT_RE - _TRANSITION_RE)
        return _K_TRANSITION + share * (_K_TURBULENT - _K_TRANSITION)
    return _K_TURBULENT


def fastest_particle_hold_s(rule: Htst | Uht, flow_l_h: float) -> float:
    """t_min = V / (k Q), seconds, for a flow in L/h (infinite when nothing flows).

    Total: any float in gives a number out, never an error (a flow too small to divide by, as
    5e-324 L/h, is no flow; NaN is no flow either).
    """
    tube = rule.holding_tube
    assert tube is not None  # the plan refuses a flow channel without a tube
    if not flow_l_h > 0:
        return math.inf
    flow_m3_s = flow_l_h / 3.6e6
    reynolds = (
        4
        * rule.density_kg_l
        * 1000
        * flow_m3_s
        / (math.pi * tube.diameter_m * rule.viscosity_mpa_s / 1000)
    )
    mean_velocity_share = fastest_to_mean(reynolds) * flow_l_h / 3600
    if not mean_velocity_share > 0:  # underflowed to zero: no measurable flow
        return math.inf
    return tube.volume_l / mean_velocity_share  # float division overflows to inf, not an error


class _JoinedRule:
    """The rule-kind contract (:class:`stream.engine.kinds.RuleMachine`) of a rule whose
    channels are judged merged in time order, never screened: its checks are critical-limit
    machines on derived values."""

    @property
    def machines(self) -> tuple[CriticalLimitMachine, ...]:
        """Its checks."""
        raise NotImplementedError

    @property
    def engaged(self) -> bool:
        """True while one of its checks is in an excursion."""
        return any(m.engaged for m in self.machines)

    @property
    def open_deviations(self) -> list[Deviation]:
        """The deviations open now."""
        return [m.open_deviation for m in self.machines if m.open_deviation is not None]

    def on_timer(
        self, now: int, device_now: int, device: str, holding: bool
    ) -> Sequence[DeviationChange]:
        """No timers: samples decide."""
        return ()

    def quiet_band(self) -> QuietBand:
        """Never screened: every sample of its channels comes here."""
        return ANYWHERE


class HtstMachine(_JoinedRule):
    """One pasteurizer's legal checks; roles are 'indicating', 'flow_diversion', 'recorder'
    and 'flow'."""

    def __init__(
        self, rule: Htst, base: RuleSpec, temperature_unit: str, derived: list[Derived]
    ) -> None:
        self.rule = rule
        self._base = base
        self._derived = derived  # the engine's, drained by the runtime into the store
        self._unit = temperature_unit
        self.temperature = CriticalLimitMachine(
            replace(
                base,
                rule_id=f"{rule.id}.temperature",
                kind="htst_temperature",
                channel=rule.indicating,
                minimum=rule.legal.temp_c,
            )
        )
        self.holding = CriticalLimitMachine(
            replace(
                base,
                rule_id=f"{rule.id}.holding_time",
                kind="htst_holding_time",
                channel=rule.flow or rule.indicating,
                minimum=rule.legal.hold_s,
                unit="s",
                action="hold_lot",
            )
        )
        self.recorder = CriticalLimitMachine(
            replace(
                base,
                rule_id=f"{rule.id}.recorder",
                kind="htst_recorder",
                channel=rule.recorder or rule.indicating,
                maximum=0.0,
                severity="major",
                action="alert",
            )
        )
        self.forward = True  # until the device says otherwise: never assume a divert
        self.indicating: float | None = None
        self.rich_since: list[tuple[int, bool]] = []  # (ts, rich product) from product changes

    @property
    def machines(self) -> tuple[CriticalLimitMachine, ...]:
        """The three checks."""
        return (self.temperature, self.holding, self.recorder)

    def product_change(self, ts: int, rich: bool) -> None:
        """A product change event: the legal minimum follows the product from ``ts`` on."""
        self.rich_since.append((ts, rich))
        self.rich_since.sort()
        del self.rich_since[:-64]

    def legal_temp(self, ts: int) -> float:
        """The legal minimum temperature for the product in force at ``ts``."""
        rich = False
        for since, is_rich in self.rich_since:
            if since > ts:
                break
            rich = is_rich
        return self.rule.legal.temp_c + (self.rule.rich_product_raise_c if rich else 0.0)

    def observe(self, role: str, sample: Sample) -> list[DeviationChange]:
        """Judge one sample of one of the pasteurizer's channels."""
        # the valve and the official thermometer are followed even while cleaning suspends the
        # verdicts, so the first judgement after cleaning starts from their true state
        if role == "flow_diversion" and sample.cleaning_since >= 0:
            self.forward = sample.value >= 0.5
        elif role == "indicating" and sample.cleaning_since >= 0:
            self.indicating = sample.value
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            return [c for m in self.machines if (c := m.suspend(sample)) is not None]
        if role == "flow_diversion":
            self.forward = sample.value >= 0.5
            if self.forward:
                return []
            # diverted: what was flowing below the legal limits no longer goes forward
            return [
                c
                for m in (self.temperature, self.holding)
                if m.engaged and (c := m.observe_excess(sample, 0.0)) is not None
            ]
        change: DeviationChange | None = None
        if role == "indicating":
            self.indicating = sample.value
            legal = self.legal_temp(sample.ts)
            excess = legal - sample.value if self.forward and sample.value < legal else 0.0
            limit = AppliedLimit(
                min=legal, max=None, sustained_s=0.0, unit=self._unit, source=self.rule.source
            )
            change = self.temperature.observe_excess(sample, excess, limit)
        elif role == "flow":
            hold = fastest_particle_hold_s(self.rule, sample.value)
            if math.isfinite(hold):
                base = self._base
                self._derived.append(
                    Derived(base.site, base.asset, self.rule.id, "holding_time_s", sample.ts, hold)
                )
            legal_hold = self.rule.legal.hold_s
            excess = legal_hold - hold if self.forward and hold < legal_hold else 0.0
            change = self.holding.observe_excess(replace(sample, value=round(hold, 3)), excess)
        elif role == "recorder" and self.indicating is not None:
            above = sample.value - self.indicating
            change = self.recorder.observe_excess(
                replace(sample, value=round(above, 3)), max(above, 0.0)
            )
        return [change] if change is not None else []

    on_sample = observe  # the rule-kind contract's name for it

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """A product change: the legal minimum follows the product from then on."""
        if isinstance(event, ProductChange):
            self.product_change(event.ts, rich_product(event))
        return ()

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "machines": [m.state() for m in self.machines],
            "forward": self.forward,
            "indicating": self.indicating,
            "rich_since": self.rich_since,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        for machine, saved in zip(self.machines, state["machines"], strict=True):
            machine.restore(with_deviation(saved))
        self.forward = state["forward"]
        self.indicating = state["indicating"]
        self.rich_since = [(int(ts), bool(rich)) for ts, rich in state["rich_since"]]


class UhtMachine(_JoinedRule):
    """A UHT line's lethality per parcel; roles are 'outlet' and 'flow'."""

    def __init__(self, rule: Uht, base: RuleSpec, derived: list[Derived]) -> None:
        self.rule = rule
        self._base = base
        self._derived = derived
        self.lethality = CriticalLimitMachine(
            replace(
                base,
                rule_id=f"{rule.id}.f0",
                kind="uht_lethality",
                channel=rule.outlet,
                minimum=rule.min_f0,
                unit="min",
            )
        )
        self.flow: float | None = None

    @property
    def machines(self) -> tuple[CriticalLimitMachine, ...]:
        """The one check."""
        return (self.lethality,)

    def observe(self, role: str, sample: Sample) -> list[DeviationChange]:
        """Judge one sample of the outlet temperature or the flow."""
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            change = self.lethality.suspend(sample)
            return [change] if change is not None else []
        if role == "flow":
            self.flow = sample.value
            return []
        if self.flow is None:
            return []  # no flow known yet: no residence time to judge by
        f0 = lethality_f0(self.rule, sample.value, self.flow)
        if math.isfinite(f0):
            base = self._base
            self._derived.append(
                Derived(base.site, base.asset, self.rule.id, "f0_min", sample.ts, f0)
            )
        excess = self.rule.min_f0 - f0 if f0 < self.rule.min_f0 else 0.0
        value = round(f0, 4) if math.isfinite(f0) else sample.value
        change = self.lethality.observe_excess(replace(sample, value=value), excess)
        return [change] if change is not None else []

    on_sample = observe  # the rule-kind contract's name for it

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """Events do not move the F0 check."""
        return ()

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {"machines": [self.lethality.state()], "flow": self.flow}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        self.lethality.restore(with_deviation(state["machines"][0]))
        self.flow = state["flow"]


def lethality_f0(rule: Uht, outlet_c: float, flow_l_h: float) -> float:
    """F0 (minutes at 121.1 degC, z = 10 degC) of the fastest parcel at this outlet temperature.

    Total: infinite when nothing flows or the temperature is beyond any float's reach (10 ** x
    raises OverflowError past x ~ 308, so the exponent is capped where the result is infinite
    anyway); 0 for a NaN temperature (an unknown temperature is no proof of lethality).
    """
    residence_s = fastest_particle_hold_s(rule, flow_l_h)
    if math.isnan(outlet_c):
        return 0.0
    if math.isinf(residence_s):
        return math.inf
    exponent = (outlet_c - 121.1) / 10
    if exponent > _MAX_EXPONENT:
        return math.inf
    return residence_s * 10**exponent / 60  # float products overflow to inf, not an error


_MAX_EXPONENT = 300.0


# product classes that raise the legal pasteurization minimum (PMO: +3 degC)
_RICH_FAT_PCT = 10.0
_RICH_SOLIDS_PCT = 18.0


def rich_product(event: ProductChange) -> bool:
    """Whether the product from this change on is one the PMO pasteurizes 3 degC hotter."""
    return (
        event.fat_pct >= _RICH_FAT_PCT
        or (event.total_solids_pct or 0.0) >= _RICH_SOLIDS_PCT
        or event.sweetened
        or event.condensed
    )


def _reads(
    rule: Htst | Uht, context: PlanContext, roles: Mapping[str, str | None]
) -> dict[str, int]:
    return {
        role: context.row_of[(rule.asset, channel)]
        for role, channel in roles.items()
        if channel is not None
    }


def compile_htst(rule: Htst, context: PlanContext) -> Compiled:
    """A pasteurizer: its thermometers, valve and flow read together."""
    base = context.rule_spec(
        rule, channel=rule.indicating, unit=context.unit(rule.asset, rule.indicating)
    )
    unit = context.unit(rule.asset, rule.indicating)
    machine = HtstMachine(rule, base, unit, context.derived)
    roles = {
        "indicating": rule.indicating,
        "flow_diversion": rule.flow_diversion,
        "recorder": rule.recorder,
        "flow": rule.flow,
    }
    return Compiled(
        rule.id,
        machine,
        reads=_reads(rule, context, roles),
        assets=(context.where(rule.asset),),
        joined=True,
        first_roles=("flow_diversion",),
    )


def compile_uht(rule: Uht, context: PlanContext) -> Compiled:
    """A UHT plant: the outlet temperature and the flow read together."""
    base = context.rule_spec(rule, channel=rule.outlet, unit=context.unit(rule.asset, rule.outlet))
    machine = UhtMachine(rule, base, context.derived)
    roles = {"outlet": rule.outlet, "flow": rule.flow}
    return Compiled(rule.id, machine, reads=_reads(rule, context, roles), joined=True)
