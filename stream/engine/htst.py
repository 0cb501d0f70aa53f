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

Product in the equipment (a plan's ``changeover_volume_l``). A product change does not empty
the pipework: from the change on, the old product keeps reaching the indicating thermometer
until it has been pushed out. So the stricter of the old and new products' temperatures, and
the longer of their holding times, each on its own, apply from the change until
:data:`FLUSH_VOLUMES` times the declared volume has passed in forward flow at the measured flow
(the flow readings integrated, each interval at the lower of the two readings bounding it; an
interval longer than the flow channel's silence limit, or with the valve diverted in it, passes
nothing: diverted product goes back to the balance tank and comes round again). Which particle
each limit follows: the old product is gone when its slowest particle has left, and in laminar
flow the layer at the wall barely moves, so the mean flow's volume is doubled (in a Poiseuille
profile the old product is 1/(4 n^2) of what leaves after n volumes: 6 % after two, and in
turbulent flow it is gone within about 1.2); the holding time is still the fastest particle's,
V / (k Q), as the PMO times it. A new product at least as strict as the old one in both applies
at once. Cleaning in place pushes any product out: a changeover in progress ends at the
cleaning's start, and the first product change after a cleaning applies at once (water and
rinse, not a weaker product, were in the equipment). The deviation names the product whose
limit it breached (``product``, ``product_class``). Without a changeover volume the pair
switches at the product change, as before; none of this costs a sample anything then.

The channels may come from gateways whose clocks disagree, and a deviation one device's sample
began may be ended by another's (the valve's divert): the checks judge on the stream's clock
(device time less the device's offset, as the engine orders the join) and their deviations are
stamped on it, each device's own times kept beside (:mod:`stream.engine.clocks`). Product
changes and the derived series stay on the device time of the sample they concern.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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


#: product changes remembered per pasteurizer (the older ones fold into one)
_PRODUCTS_KEPT = 64
#: changeovers remembered per pasteurizer (late readings are judged against them)
_CHANGEOVERS_KEPT = 64
#: how many times the declared changeover volume must pass before the old product counts as
#: gone (the slowest particle, see the module)
FLUSH_VOLUMES = 2.0
#: the volume still to pass below which a flush is done (a microlitre: float sums of L/h x ms)
_FLUSHED_L = 1e-6
_MS_PER_H = 3_600_000.0
#: a changeover still flushing ends at this time; no product change waits before it
_OPEN = 2**62
_LONG_AGO = -(2**63)  # before any product change (a folded one is stamped -2**62)

#: a product as the pasteurizer knows it: its class and its id ("" before any product change)
Product = tuple[ProductClass, str]


@dataclass(slots=True)
class Changeover:
    """A product change whose old product may still be in the equipment: from ``since`` (the
    product change's time) to ``until`` (when the flush was done; :data:`_OPEN` while it is
    flushing), the old products' highest temperature (``temperature``) and longest holding time
    (``holding``) apply wherever they are stricter than those of the product in force."""

    since: int
    until: int
    temperature: Product
    holding: Product


@dataclass(slots=True)
class _Flush:
    """The open changeover's flush: the litres still to pass, the flow reading counted from,
    and whether the valve stayed forward since it."""

    remaining_l: float
    flow_ts: int
    flow_l_h: float
    forward: bool


class HtstMachine(_JoinedRule):
    """One pasteurizer's legal checks; roles are 'indicating', 'flow_diversion', 'recorder'
    and 'flow'."""

    def __init__(
        self,
        rule: Htst,
        base: RuleSpec,
        temperature_unit: str,
        derived: list[Derived],
        *,
        flow_gap_ms: int = 0,
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
        # (ts, product class, product id) from product changes; the pairs by class, worked
        # out once
        self.product_since: list[tuple[int, ProductClass, str]] = []
        # product in the equipment (see the module): None without a changeover volume, and
        # then none of the state below moves
        volume = rule.changeover_volume_l
        self._flush_l = None if volume is None else volume * FLUSH_VOLUMES
        #: beyond this, a flow interval passes nothing (the flow channel's silence limit)
        self._flow_gap_ms = flow_gap_ms
        self.changeovers: list[Changeover] = []
        self._flush: _Flush | None = None
        self._entered = _LONG_AGO  # the latest product change the samples have reached
        self._next_change = _OPEN  # the next product change they have not reached
        self._changeovers_until = _LONG_AGO  # a sample at or after it is in no changeover
        self._rinsed = False  # cleaned since the last product change the samples reached
        self._flow_ts = -1
        self._flow_l_h = 0.0  # none known: no flow counted from it
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
        machine = HtstMachine(
            self.rule, self._base, self._unit, derived, flow_gap_ms=self._flow_gap_ms
        )
        machine.product_since = list(self.product_since)
        # the changeovers as the stream judged them: a copy judges against the same windows
        # (one still flushing stays open in it), and flushes only the changes not reached yet
        machine.changeovers = [replace(c) for c in self.changeovers]
        machine._entered, machine._rinsed = self._entered, self._rinsed
        machine._reschedule()
        return machine

    def product_change(self, event: ProductChange) -> None:
        """A product change event: the legal pair follows the product from its time on (after a
        changeover, when the plan declares the changeover volume)."""
        entry = (event.ts, product_class(event, self.rule.eggnog_products), event.product)
        if entry in self.product_since:
            return  # delivered again (at least once)
        self.product_since.append(entry)
        self.product_since.sort()
        if len(self.product_since) > _PRODUCTS_KEPT:
            # the oldest fold into the product in force before the ones kept (not back to milk:
            # a burst of changes must not make a late reading of eggnog judged as milk)
            _, folded, name = self.product_since[-_PRODUCTS_KEPT - 1]
            self.product_since[:-_PRODUCTS_KEPT] = [(-(2**62), folded, name)]
        if self._flush_l is not None and event.ts > self._entered:
            self._next_change = min(self._next_change, event.ts)

    def product_in_force(self, ts: int) -> ProductClass:
        """The product class in force at ``ts`` (milk until a product change says otherwise)."""
        return self._product_at(ts)[0]

    def _product_at(self, ts: int) -> Product:
        product: Product = ("milk", "")
        for since, in_force, name in self.product_since:
            if since > ts:
                break
            product = (in_force, name)
        return product

    def protected(self, ts: int) -> tuple[Product, Product]:
        """The products whose temperature and whose holding time apply at ``ts``: the product
        in force, or during a changeover an old product still in the equipment whose limit is
        the stricter (each limit on its own; the product in force at a tie)."""
        product: Product = ("milk", "")
        for since, in_force, name in self.product_since:  # _product_at, on every sample
            if since > ts:
                break
            product = (in_force, name)
        if ts >= self._changeovers_until:
            return product, product
        for changeover in reversed(self.changeovers):
            if changeover.since <= ts < changeover.until:
                pairs = self._pairs
                now = pairs[product[0]]
                hot, slow = changeover.temperature, changeover.holding
                return (
                    hot if pairs[hot[0]].temp_c > now.temp_c else product,
                    slow if pairs[slow[0]].hold_s > now.hold_s else product,
                )
        return product, product

    # ------------------------------------------------------------ product in the equipment

    def _follow_changeover(self, role: str, sample: Sample) -> None:
        """Move the product changes and their flush on by one sample (device time, as the
        product changes are stamped)."""
        ts = sample.ts
        if sample.cleaning_since >= 0:
            self._rinse(sample.cleaning_since)
        if ts >= self._next_change:
            self._enter_changes(ts)
        if role == "flow":
            if self._flush is not None:
                self._count_flow(ts, sample.value)
            self._flow_ts, self._flow_l_h = ts, sample.value
        elif role == "flow_diversion" and sample.value < 0.5 and self._flush is not None:
            self._flush.forward = False

    def _rinse(self, cleaning_since: int) -> None:
        """Cleaning in place: the product is pushed out, a changeover in progress ends."""
        self._rinsed = True
        if self._flush is not None or self._open_changeover() is not None:
            self._end_changeover(cleaning_since)

    def _enter_changes(self, ts: int) -> None:
        """The product changes the samples have reached, in order."""
        for since, product, name in list(self.product_since):
            if since <= self._entered:
                continue
            if since > ts:
                break
            self._begin(since, (product, name))
            self._entered = since
        self._reschedule()

    def _begin(self, since: int, new: Product) -> None:
        """A product change reached: a changeover, unless nothing weaker than the new product
        may be left in the equipment."""
        # the product before, or an earlier changeover's old product where that is stricter
        hot, slow = self.protected(since - 1)
        if self._open_changeover() is not None:
            self._end_changeover(since)  # this one's flush pushes its old product out too
        if self._rinsed:
            self._rinsed = False  # cleaned: the first product's limits apply from its start
            return
        pairs = self._pairs
        if pairs[new[0]].temp_c >= pairs[hot[0]].temp_c and (
            pairs[new[0]].hold_s >= pairs[slow[0]].hold_s
        ):
            return  # the new product is the stricter in both: its pair applies at once
        assert self._flush_l is not None  # only entered with a changeover volume
        self.changeovers.append(Changeover(since, _OPEN, hot, slow))
        del self.changeovers[:-_CHANGEOVERS_KEPT]
        # counted from the last flow reading, or the change if that was before it (a change
        # reached late: what passed between it and the reading is not counted)
        self._flush = _Flush(self._flush_l, max(since, self._flow_ts), self._flow_l_h, self.forward)
        self._changeovers_until = _OPEN

    def _count_flow(self, ts: int, flow_l_h: float) -> None:
        """One flow reading: the litres passed forward since the last one (the lower of the
        two readings over the interval; nothing over a gap or a divert); flushed, the
        changeover ends at this reading."""
        flush = self._flush
        assert flush is not None
        elapsed = ts - flush.flow_ts
        if elapsed <= 0:
            return  # stamped before the reading counted from (another gateway's clock)
        before = flush.flow_l_h
        if (
            flush.forward
            and self.forward
            and elapsed <= self._flow_gap_ms
            and before > 0
            and flow_l_h > 0
        ):
            flush.remaining_l -= min(before, flow_l_h) * elapsed / _MS_PER_H
        flush.flow_ts, flush.flow_l_h, flush.forward = ts, flow_l_h, self.forward
        if flush.remaining_l <= _FLUSHED_L:
            self._end_changeover(ts)

    def _open_changeover(self) -> Changeover | None:
        last = self.changeovers[-1] if self.changeovers else None
        return last if last is not None and last.until == _OPEN else None

    def _end_changeover(self, ts: int) -> None:
        opened = self._open_changeover()
        if opened is not None:
            opened.until = max(ts, opened.since)
        self._flush = None
        self._reschedule()

    def _reschedule(self) -> None:
        """The next product change the samples will reach, and the end of the changeovers."""
        self._next_change = _OPEN
        if self._flush_l is not None:
            for since, _, _ in self.product_since:
                if since > self._entered:
                    self._next_change = since
                    break
        self._changeovers_until = max((c.until for c in self.changeovers), default=_LONG_AGO)

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
        if self._flush_l is not None:
            self._follow_changeover(role, sample)
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
            protected = self.protected(sample.ts)[0]
            limit = self._temperature_limits[protected[0]]
            legal = limit.min
            assert legal is not None  # a minimum, made above
            excess = legal - sample.value if self.forward and sample.value < legal else 0.0
            machine = self.temperature
            change = _naming(machine, machine.observe_excess(now, excess, limit), protected)
        elif role == "flow":
            hold = fastest_particle_hold_s(self.rule, sample.value)
            if math.isfinite(hold):
                base = self._base
                self._derived.append(
                    Derived(base.site, base.asset, self.rule.id, "holding_time_s", sample.ts, hold)
                )
            protected = self.protected(sample.ts)[1]
            limit = self._holding_limits[protected[0]]
            assert limit.min is not None  # a minimum, made above
            excess = hold_shortfall_s(hold, limit.min) if self.forward else 0.0
            # microseconds: an HHST tube holds 0.01 s, which three decimals would blur
            shown = replace(now, value=round(hold, 6))
            machine = self.holding
            change = _naming(machine, machine.observe_excess(shown, excess, limit), protected)
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
        flush = self._flush
        return {
            "machines": [m.state() for m in self.machines],
            "forward": self.forward,
            "indicating": self.indicating,
            "product_since": self.product_since,
            # product in the equipment (added since: absent from older snapshots)
            "changeovers": [
                [c.since, c.until, *c.temperature, *c.holding] for c in self.changeovers
            ],
            "flush": None
            if flush is None
            else [flush.remaining_l, flush.flow_ts, flush.flow_l_h, flush.forward],
            "entered": self._entered,
            "rinsed": self._rinsed,
            "flow": [self._flow_ts, self._flow_l_h],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a snapshot's state (one from before product classes, product ids or
        changeovers too)."""
        for machine, saved in zip(self.machines, state["machines"], strict=True):
            machine.restore(with_deviation(saved))
        self.forward = state["forward"]
        self.indicating = state["indicating"]
        if "product_since" in state:
            # (ts, class, id); before product ids, (ts, class)
            self.product_since = [
                (int(ts), _PRODUCT_CLASS[product], str(name[0]) if name else "")
                for ts, product, *name in state["product_since"]
            ]
        else:  # a snapshot from before the product classes: (ts, rich)
            self.product_since = [
                (int(ts), "rich" if rich else "milk", "") for ts, rich in state["rich_since"]
            ]
        self.changeovers = [
            Changeover(
                int(since),
                int(until),
                (_PRODUCT_CLASS[hot], str(hot_name)),
                (_PRODUCT_CLASS[slow], str(slow_name)),
            )
            for since, until, hot, hot_name, slow, slow_name in state.get("changeovers", ())
        ]
        flush = state.get("flush")
        self._flush = None if flush is None else _Flush(*flush)
        # a snapshot from before changeovers: every product change it knew was applied
        self._entered = state.get(
            "entered", max((ts for ts, _, _ in self.product_since), default=_LONG_AGO)
        )
        self._rinsed = state.get("rinsed", False)
        self._flow_ts, self._flow_l_h = state.get("flow", (-1, 0.0))
        self._reschedule()


_PRODUCT_CLASS: dict[str, ProductClass] = {"milk": "milk", "rich": "rich", "eggnog": "eggnog"}


def _naming(
    machine: CriticalLimitMachine, change: DeviationChange | None, product: Product
) -> DeviationChange | None:
    """A deviation just opened names the product whose limit it breached (when a product
    change named it: a line that never declared one keeps the records it always had)."""
    if change is not None and change.kind == "opened" and product[1]:
        for opened in (change.deviation, machine.open_deviation):
            if opened is not None:
                opened.product, opened.product_class = product[1], product[0]
    return change


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
    machine = HtstMachine(
        rule, base, unit, context.derived, flow_gap_ms=_flow_gap_ms(rule, context)
    )
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
        # at equal times the valve's state, then the flow (which may end a changeover), then
        # the temperatures judged with both
        first_roles=("flow_diversion", "flow"),
        derived_at=("flow",),
    )


def _flow_gap_ms(rule: Htst, context: PlanContext) -> int:
    """The flow channel's silence limit: a longer interval between flow readings is a gap, in
    which no product is counted as passing (nothing is interpolated across it)."""
    if rule.flow is None:
        return 0
    plan = context.loaded.plan
    channel = plan.assets[rule.asset].channels[rule.flow]
    return round((channel.silence_after_s or channel.interval_s * plan.silence_factor) * 1000)


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
