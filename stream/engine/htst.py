"""The HTST pasteurizer's critical control point, judged over its channels together.

The engine hands this machine every sample of the pasteurizer's channels in event-time order,
merged across channels, so "the flow-diversion state when this temperature was read" is exact.
Three deviations can come of it, each a critical-limit machine fed with an excess computed here:

- ``htst_temperature``: forward flow below the legal temperature of the product in force. At
  the first sample: no averaging, no grace. A switch to divert ends it (the device did its job).
- ``htst_holding_time``: the fastest particle's holding time V / (k Q) below the legal time of
  the product in force, in forward flow (a flow surge); the product in that window is held.
- ``htst_recorder``: the recording thermometer above the indicating one, which is the official.

The legal pair (temperature, holding time) is the rule's pair for the product class in force:
milk, rich (fat >= 10 %, total solids >= 18 %, sweetened or condensed) or eggnog, from the
plan's process class in the profile's table (the PMO's vat, HTST, HHST and UP rows) or its own
pairs. HHST times are fractions of a second (0.01 s at 100 degC): holding times are compared in
whole microseconds, so a tube sized exactly to the legal time is not failed by the last bit of
a float division.

The channels may come from gateways whose clocks disagree, and a deviation one device's sample
began may be ended by another's (the valve's divert): the checks judge on the stream's clock
(device time less the device's offset, as the engine orders the join) and their deviations are
stamped on it, each device's own times kept beside (:mod:`stream.engine.clocks`). Product
changes and the derived series stay on the device time of the sample they concern.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from milkguard.contract.v1 import Event, ProductChange
from stream.engine.clocks import on_stream_clock, on_stream_clock_change
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
from stream.plan import Htst, LegalMinimum, ProductClass, Uht

#: A product at or above these is "rich": the legal temperature of the vat and HTST rows is raised
_RICH_FAT_PCT = 10.0
_RICH_SOLIDS_PCT = 18.0
#: holding times are judged in whole microseconds (far finer than any flow meter resolves)
_US_PER_S = 1_000_000


def product_class(event: ProductChange, eggnog_products: list[str]) -> ProductClass:
    """The pasteurization table's product class of a product change: eggnog when the rule lists
    the product as such, rich for fat >= 10 %, total solids >= 18 %, sweetened or condensed."""
    if event.product in eggnog_products:
        return "eggnog"
    rich = (
        event.fat_pct >= _RICH_FAT_PCT
        or (event.total_solids_pct or 0.0) >= _RICH_SOLIDS_PCT
        or event.sweetened
        or event.condensed
    )
    return "rich" if rich else "milk"


def hold_shortfall_s(hold_s: float, legal_s: float) -> float:
    """How far a holding time falls short of the legal one (0.0 when it does not), compared in
    whole microseconds: 0.1 s computed as 0.09999999999999999 is 0.1 s."""
    if not hold_s < legal_s:
        return 0.0  # also infinite (no flow) and NaN holding times: nothing flows forward
    short_us = round(legal_s * _US_PER_S) - round(hold_s * _US_PER_S)
    return short_us / _US_PER_S if short_us > 0 else 0.0


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
                minimum=rule.pair("milk").temp_c,
            )
        )
        self.holding = CriticalLimitMachine(
            replace(
                base,
                rule_id=f"{rule.id}.holding_time",
                kind="htst_holding_time",
                channel=rule.flow or rule.indicating,
                minimum=rule.pair("milk").hold_s,
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
        # (ts, product class) from product changes; the pairs by class, worked out once
        self.product_since: list[tuple[int, ProductClass]] = []
        self._pairs = {product: rule.pair(product) for product in ("milk", "rich", "eggnog")}
        # the limits a deviation records, made once rather than per sample
        self._temperature_limits = {
            product: AppliedLimit(pair.temp_c, None, 0.0, self._unit, pair.source or "")
            for product, pair in self._pairs.items()
        }
        self._holding_limits = {
            product: AppliedLimit(pair.hold_s, None, 0.0, "s", pair.source or "")
            for product, pair in self._pairs.items()
        }

    @property
    def machines(self) -> tuple[CriticalLimitMachine, ...]:
        """The three checks."""
        return (self.temperature, self.holding, self.recorder)

    def fresh(self, derived: list[Derived]) -> HtstMachine:
        """A machine of the same rule with no verdicts yet, knowing the product changes, whose
        holding times go to ``derived`` (to re-judge a window of history with late readings in
        it, see :mod:`stream.engine.late`)."""
        machine = HtstMachine(self.rule, self._base, self._unit, derived)
        machine.product_since = list(self.product_since)
        return machine

    def product_change(self, event: ProductChange) -> None:
        """A product change event: the legal pair follows the product from its time on."""
        product = product_class(event, self.rule.eggnog_products)
        self.product_since.append((event.ts, product))
        self.product_since.sort()
        del self.product_since[:-64]

    def product_in_force(self, ts: int) -> ProductClass:
        """The product class in force at ``ts`` (milk until a product change says otherwise)."""
        product: ProductClass = "milk"
        for since, in_force in self.product_since:
            if since > ts:
                break
            product = in_force
        return product

    def legal_pair(self, ts: int) -> LegalMinimum:
        """The legal temperature and holding time for the product in force at ``ts``."""
        return self._pairs[self.product_in_force(ts)]

    def observe(self, role: str, sample: Sample) -> list[DeviationChange]:
        """Judge one sample of one of the pasteurizer's channels (device time; judged on the
        stream's clock)."""
        # the valve and the official thermometer are followed even while cleaning suspends the
        # verdicts, so the first judgement after cleaning starts from their true state
        if role == "flow_diversion" and sample.cleaning_since >= 0:
            self.forward = sample.value >= 0.5
        elif role == "indicating" and sample.cleaning_since >= 0:
            self.indicating = sample.value
        now = on_stream_clock(sample)
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            return [
                c
                for m in self.machines
                if (c := on_stream_clock_change(m, m.suspend(now), sample)) is not None
            ]
        if role == "flow_diversion":
            self.forward = sample.value >= 0.5
            if self.forward:
                return []
            # diverted: what was flowing below the legal limits no longer goes forward
            return [
                c
                for m in (self.temperature, self.holding)
                if m.engaged
                and (c := on_stream_clock_change(m, m.observe_excess(now, 0.0), sample)) is not None
            ]
        machine: CriticalLimitMachine | None = None
        change: DeviationChange | None = None
        if role == "indicating":
            self.indicating = sample.value
            limit = self._temperature_limits[self.product_in_force(sample.ts)]
            legal = limit.min
            assert legal is not None  # a minimum, made above
            excess = legal - sample.value if self.forward and sample.value < legal else 0.0
            machine = self.temperature
            change = machine.observe_excess(now, excess, limit)
        elif role == "flow":
            hold = fastest_particle_hold_s(self.rule, sample.value)
            if math.isfinite(hold):
                base = self._base
                self._derived.append(
                    Derived(base.site, base.asset, self.rule.id, "holding_time_s", sample.ts, hold)
                )
            limit = self._holding_limits[self.product_in_force(sample.ts)]
            assert limit.min is not None  # a minimum, made above
            excess = hold_shortfall_s(hold, limit.min) if self.forward else 0.0
            # microseconds: an HHST tube holds 0.01 s, which three decimals would blur
            shown = replace(now, value=round(hold, 6))
            machine = self.holding
            change = machine.observe_excess(shown, excess, limit)
        elif role == "recorder" and self.indicating is not None:
            above = sample.value - self.indicating
            machine = self.recorder
            change = machine.observe_excess(replace(now, value=round(above, 3)), max(above, 0.0))
        stamped = on_stream_clock_change(machine, change, sample) if machine is not None else None
        return [stamped] if stamped is not None else []

    on_sample = observe  # the rule-kind contract's name for it

    def on_event(self, event: Event, site: str, handover: Handover) -> Sequence[DeviationChange]:
        """A product change: the legal pair follows the product from then on."""
        if isinstance(event, ProductChange):
            self.product_change(event)
        return ()

    def state(self) -> dict[str, Any]:
        """What a snapshot must keep."""
        return {
            "machines": [m.state() for m in self.machines],
            "forward": self.forward,
            "indicating": self.indicating,
            "product_since": self.product_since,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state."""
        for machine, saved in zip(self.machines, state["machines"], strict=True):
            machine.restore(with_deviation(saved))
        self.forward = state["forward"]
        self.indicating = state["indicating"]
        if "product_since" in state:
            self.product_since = [
                (int(ts), _PRODUCT_CLASS[product]) for ts, product in state["product_since"]
            ]
        else:  # a snapshot from before the product classes: (ts, rich)
            self.product_since = [
                (int(ts), "rich" if rich else "milk") for ts, rich in state["rich_since"]
            ]


_PRODUCT_CLASS: dict[str, ProductClass] = {"milk": "milk", "rich": "rich", "eggnog": "eggnog"}


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

    def fresh(self, derived: list[Derived]) -> UhtMachine:
        """A machine of the same rule with no verdicts yet (see :meth:`HtstMachine.fresh`)."""
        return UhtMachine(self.rule, self._base, derived)

    def observe(self, role: str, sample: Sample) -> list[DeviationChange]:
        """Judge one sample of the outlet temperature or the flow (device time; judged on the
        stream's clock, as the pasteurizer's checks are)."""
        now = on_stream_clock(sample)
        if sample.cleaning_since >= 0 and self.rule.suspend_during_cleaning:
            change = on_stream_clock_change(self.lethality, self.lethality.suspend(now), sample)
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
        change = self.lethality.observe_excess(replace(now, value=value), excess)
        change = on_stream_clock_change(self.lethality, change, sample)
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
        derived_at=("flow",),
    )


def compile_uht(rule: Uht, context: PlanContext) -> Compiled:
    """A UHT plant: the outlet temperature and the flow read together."""
    base = context.rule_spec(rule, channel=rule.outlet, unit=context.unit(rule.asset, rule.outlet))
    machine = UhtMachine(rule, base, context.derived)
    roles = {"outlet": rule.outlet, "flow": rule.flow}
    return Compiled(
        rule.id,
        machine,
        reads=_reads(rule, context, roles),
        joined=True,
        derived_at=("flow", "outlet"),
    )
