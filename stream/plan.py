"""HACCP plan files: which assets and channels a site has, and the critical limits that apply.

A plan is YAML, validated once at start with pydantic; a bad plan fails with the file, the line,
the field and the problem. Every limit names its source (a regulation or the plant's own HACCP
plan), because an auditor asks "why 6 °C?". The plan's version is the SHA-256 of the file's bytes,
carried by every deviation so a record always says which rules it was judged by.

Example::

    plan: demo-cn
    jurisdiction: CN
    assets:
      truck-07.comp-1:          # how rules name it
        site: truck-07
        id: comp-1              # what the truck's gateway sends
        kind: truck_compartment
        channels:
          temp: {unit: degC, interval_s: 1, ccp: true}
    rules:
      - id: cn-transport-max
        kind: critical_limit
        ccp: CCP-2
        asset: truck-07.comp-1
        channel: temp
        max: 6.0
        sustained_s: 15
        severity: major
        action: reject_load
        source: "GB 31605: cold chain 2-6 °C"
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from milkguard.contract.v1 import ID_PATTERN, Unit
from milkguard.errors import PlanError

PlanId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: Text a deviation carries into its signed record, bounded as the records contract bounds it
#: (``milkguard.contract.records.Text``): a longer one would make every deviation of its rule
#: unpublishable, so it is refused here, at load.
RecordText = Annotated[str, StringConstraints(max_length=1_000)]

AssetKind = Literal[
    "bulk_tank",
    "truck",
    "truck_compartment",
    "receiving_bay",
    "silo",
    "htst",
    "uht",
    "room",
    "can_line",
    "cold_store",
]
Severity = Literal["critical", "major", "minor"]
Action = Literal["divert", "hold_lot", "reject_load", "alert"]
Jurisdiction = Literal["CN", "US", "EU", "company"]


class _Strict(BaseModel):
    """Plans are written by people: unknown keys are typos, not extensions, and a limit of
    ``.nan`` or ``.inf`` would never fire."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Channel(_Strict):
    """One measured quantity of an asset.

    A channel silent for longer than ``silence_after_s`` (default: the plan's ``silence_factor``
    times ``interval_s``) is "monitoring lost": critical on a CCP channel, minor otherwise.
    """

    unit: Unit
    interval_s: float = Field(gt=0, description="Expected sampling interval, seconds.")
    ccp: bool = Field(default=False, description="A critical control point's channel.")
    silence_after_s: float | None = Field(default=None, gt=0)
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="The instrument's accuracy (+-, in the channel's unit), from its "
        "calibration: a reading beyond a receipt limit by no more than this asks for a check "
        "with a calibrated thermometer, not a verdict.",
    )


class Asset(_Strict):
    """A tank, truck compartment, line or room that the plan watches.

    Its key in the plan is how rules name it; ``id`` is the asset id its gateway sends (the key,
    unless given), so one plan can cover two farms that both have a ``tank-1``.
    """

    site: PlanId
    id: PlanId | None = None
    kind: AssetKind
    description: str = ""
    allowed_lateness_s: float | None = Field(
        default=None,
        ge=0,
        description="How late a reading may arrive and still be judged at its timestamp "
        "(default: the plan's). Deviations are reported this much later than they happen.",
    )
    late_judge_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="How far behind its channel's judged time a late reading (one that came "
        "after its allowed lateness) is still judged, flagged found late (default: the plan's; "
        "0: late readings are counted and stored, never judged).",
    )
    channels: dict[PlanId, Channel] = Field(min_length=1)
    heel_l: float = Field(
        default=0.0,
        ge=0,
        le=10_000_000.0,
        description="Tank contents: a pickup, delivery, draw or transfer that leaves this many "
        "litres or fewer in the tank, compartment or silo empties it (its storage age ends, "
        "the next milking is a first one); one that leaves more keeps the age of the oldest "
        "milk in it running. 0: only a take that leaves nothing empties it.",
    )
    volume_channel: PlanId | None = Field(
        default=None,
        description="Tank contents: the channel (unit L) of the tank's own level gauge. A "
        "pickup then leaves the highest level the gauge showed since the last pickup, less the "
        "pickup's volume_l; without it, the volumes the milkings report, and a pickup after a "
        "milking of unknown volume empties the tank.",
    )

    @model_validator(mode="after")
    def _gauge_is_a_volume(self) -> Asset:
        name = self.volume_channel
        if name is None:
            return self
        if name not in self.channels:
            raise ValueError(
                f"volume_channel {name!r} is not one of the asset's channels "
                f"({', '.join(sorted(self.channels))}); name its level gauge's channel"
            )
        if self.channels[name].unit != "L":
            raise ValueError(
                f"volume_channel {name!r} has unit {self.channels[name].unit!r}; a level "
                "gauge reads litres (unit: L)"
            )
        return self


class _ChannelRule(_Strict):
    """What every rule on one channel names."""

    id: PlanId
    ccp: RecordText | None = Field(default=None, description="HACCP critical control point id.")
    asset: PlanId
    channel: PlanId
    severity: Severity
    action: Action
    source: RecordText = Field(
        min_length=3, description="Where the limit comes from: a regulation or the HACCP plan."
    )
    suspend_during_cleaning: bool = Field(
        default=True,
        description="Product limits do not apply while the asset is cleaned in place (CIP).",
    )


class CriticalLimit(_ChannelRule):
    """A minimum and/or maximum on one channel, breached at once or when sustained."""

    kind: Literal["critical_limit"]
    min: float | None = None
    max: float | None = None
    sustained_s: float = Field(
        default=0,
        ge=0,
        description="0: a deviation at the first sample beyond the limit (CCP critical limits).",
    )

    def describe(self, unit: str) -> str:
        """The limit as an operator reads it: '2-6 degC for 15 s'."""
        if self.min is not None and self.max is not None:
            band = f"{self.min:g}-{self.max:g} {unit}"
        elif self.max is not None:
            band = f"<= {self.max:g} {unit}"
        else:
            band = f">= {self.min:g} {unit}"
        return f"{band}, breach for {self.sustained_s:g} s" if self.sustained_s else band

    @model_validator(mode="after")
    def _has_a_limit(self) -> CriticalLimit:
        if self.min is None and self.max is None:
            raise ValueError("set min, max or both: a critical limit without either checks nothing")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class StuckSensor(_ChannelRule):
    """A sensor repeating exactly the same value for too long is unmonitored, not compliant."""

    kind: Literal["stuck_sensor"]
    flat_for_s: float = Field(gt=0, description="How long an exact flat line may last.")
    # a stuck probe is stuck whether the tank holds milk or cleaning solution
    suspend_during_cleaning: bool = False

    def describe(self, unit: str) -> str:
        """'no exact flat line for 600 s'."""
        return f"no exact flat line for {self.flat_for_s:g} s"


class RateOfChange(_ChannelRule):
    """A change faster than physics allows (a milk tank does not cool 5 degC in a minute) means a
    faulty sensor or wiring: the readings are implausible."""

    kind: Literal["rate_of_change"]
    max_per_min: float = Field(gt=0, description="Largest plausible change per minute.")

    def describe(self, unit: str) -> str:
        """'changes <= 2 degC/min'."""
        return f"changes <= {self.max_per_min:g} {unit}/min"


class CoolingDeadline(_Strict):
    """Milk must be at or below ``reach_max`` within ``within_s`` of an event."""

    after: Literal["first_milking_start", "milking_start", "milking_end"] = Field(
        description="first_milking_start: the first milking into an empty tank."
    )
    reach_max: float
    within_s: float = Field(gt=0)


class Cooling(_ChannelRule):
    """A farm bulk tank's cooling, on its milk temperature channel.

    Each deadline starts at its event and is met by one sample at or below ``reach_max`` no later
    than the deadline. A missed one is a deviation from the deadline itself (fired by the data
    passing it, or by the stream's timer when no data comes), until a sample reaches the
    temperature. ``blend_max`` applies while each later milking adds warm milk. A pickup that
    names the tank as its source and leaves no more than the tank's ``heel_l`` empties it: the
    next milking is a first one again (one that leaves more leaves milk to blend into).
    """

    kind: Literal["cooling"]
    deadlines: list[CoolingDeadline] = Field(min_length=1)
    blend_max: float | None = None
    suspend_during_cleaning: bool = True

    def describe(self, unit: str) -> str:
        """'<= 10 degC 14400 s after first_milking_start; ...'."""
        parts = [
            f"<= {d.reach_max:g} {unit} {d.within_s:g} s after {d.after}" for d in self.deadlines
        ]
        if self.blend_max is not None:
            parts.append(f"blend <= {self.blend_max:g} {unit}")
        return "; ".join(parts)


class StorageAge(_Strict):
    """The oldest milk in a tank, truck compartment or silo must not be older than
    ``max_age_s``.

    A tank's oldest milk dates from its oldest milking still in it: a pickup takes its
    ``volume_l`` and what remains keeps the age of the oldest milk (an agitated tank mixes it);
    one that leaves no more than the asset's ``heel_l`` empties it. A truck compartment takes the
    oldest milk of the tanks it picks up from (or the pickup time, if the source tank is not in
    the plan); a delivery takes its volume out the same way. A silo takes receipts (milk as old
    as its acceptance) and transfers in (the source silo's oldest milk); runs and transfers
    draw from it, ``silo_emptied`` empties it. ``since: first_fill`` counts from the first milk
    into the empty vessel instead, whatever the age of the milk put in (a rule on emptying the
    vessel, not on the milk: PMO Item 12p's silos).
    """

    kind: Literal["storage_age"]
    id: PlanId
    ccp: RecordText | None = None
    asset: PlanId
    max_age_s: float = Field(gt=0)
    since: Literal["oldest_milk", "first_fill"] = Field(
        default="oldest_milk",
        description="oldest_milk: the age of the oldest milk in it; first_fill: the time since "
        "the first milk went into it while empty.",
    )
    severity: Severity = "major"
    action: Action = "reject_load"
    source: RecordText = Field(min_length=3)
    suspend_during_cleaning: bool = False

    def describe(self, unit: str) -> str:
        """'oldest milk <= 48 h'; 'emptied within 72 h of its first fill'."""
        if self.since == "first_fill":
            return f"emptied within {self.max_age_s / 3600:g} h of its first fill"
        return f"oldest milk <= {self.max_age_s / 3600:g} h"


class Transport(_ChannelRule):
    """A truck compartment's load, from its first pickup to the delivery that empties it (one
    that leaves milk aboard ends no trip): within
    ``max_transit_s``, and with no more than ``max_exposure_degree_minutes`` above
    ``exposure_above`` on its temperature channel (each sample's excess held to the next)."""

    kind: Literal["transport"]
    max_transit_s: float | None = Field(default=None, gt=0)
    exposure_above: float | None = None
    max_exposure_degree_minutes: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _checks_something(self) -> Transport:
        if self.max_transit_s is None and self.max_exposure_degree_minutes is None:
            raise ValueError("set max_transit_s, max_exposure_degree_minutes, or both")
        if (self.exposure_above is None) != (self.max_exposure_degree_minutes is None):
            raise ValueError("exposure_above and max_exposure_degree_minutes go together")
        return self

    def describe(self, unit: str) -> str:
        """'transit <= 6 h; exposure above 4 degC <= 60 degC.min'."""
        parts = []
        if self.max_transit_s is not None:
            parts.append(f"transit <= {self.max_transit_s / 3600:g} h")
        if self.max_exposure_degree_minutes is not None:
            parts.append(
                f"exposure above {self.exposure_above:g} {unit} <= "
                f"{self.max_exposure_degree_minutes:g} {unit}.min"
            )
        return "; ".join(parts)


class HoldingTube(_Strict):
    """The holding tube between the heater and the flow-diversion device."""

    diameter_m: float = Field(gt=0, description="Inner diameter, metres.")
    length_m: float = Field(gt=0, description="Length, metres.")

    @property
    def volume_l(self) -> float:
        """V = (pi/4) D^2 L, in litres."""
        return math.pi / 4 * self.diameter_m**2 * self.length_m * 1000


#: The largest changeover volume a plan may declare: more than any pasteurizer's pipework and
#: balance tank hold, so a larger figure is a unit slip (m3 or mL written as litres).
MAX_CHANGEOVER_VOLUME_L = 50_000.0

#: Pasteurization process classes, as rows of a jurisdiction's table (``us-pmo``: the PMO's
#: batch (vat), HTST, the five HHST pairs, and ultra-pasteurization).
ProcessClass = Literal["vat", "htst", "hhst-89", "hhst-90", "hhst-94", "hhst-96", "hhst-100", "up"]
#: The product classes a pasteurization table distinguishes: plain milk products; rich ones (fat
#: >= 10 %, total solids >= 18 %, added sweeteners, or concentrated/condensed); eggnog.
ProductClass = Literal["milk", "rich", "eggnog"]
PRODUCT_CLASSES: tuple[ProductClass, ...] = ("milk", "rich", "eggnog")


class LegalMinimum(_Strict):
    """A legal pasteurization temperature and holding time pair (e.g. HTST 72 degC, 15 s), and
    where it comes from (default: the rule's own ``source``)."""

    temp_c: float
    hold_s: float = Field(gt=0)
    source: RecordText | None = Field(default=None, min_length=3)

    def looser_than(self, law: LegalMinimum) -> bool:
        """Below the law's temperature or shorter than its holding time."""
        return self.temp_c < law.temp_c or self.hold_s < law.hold_s


class PasteurizationRow(_Strict):
    """One process class of a jurisdiction's pasteurization table: its pair for each product
    class, each with its source. Where the law has no row of its own for a class, the profile
    repeats the milk pair and its source says so."""

    milk: LegalMinimum
    rich: LegalMinimum
    eggnog: LegalMinimum
    alternatives: dict[ProductClass, list[LegalMinimum]] = Field(
        default_factory=dict,
        description="Other pairs the law allows for a class (PMO eggnog on HTST: 83 degC 15 s "
        "besides 80 degC 25 s); a rule may give one as its own pair.",
    )

    @model_validator(mode="after")
    def _each_pair_names_its_source(self) -> PasteurizationRow:
        pairs = [getattr(self, name) for name in PRODUCT_CLASSES]
        pairs.extend(pair for others in self.alternatives.values() for pair in others)
        if any(pair.source is None for pair in pairs):
            raise ValueError("give each pair its source (the law's item and its figures)")
        return self

    def lawful(self, product: ProductClass, own: LegalMinimum) -> LegalMinimum | None:
        """``own`` as the rule applies it, if it is at least as strict as one of the law's pairs
        for ``product`` (without a source of its own, it takes that pair's); else None."""
        for law in (getattr(self, product), *self.alternatives.get(product, ())):
            if not own.looser_than(law):
                return (
                    own if own.source is not None else own.model_copy(update={"source": law.source})
                )
        return None


class Htst(_Strict):
    """An HTST (or HHST, UP, vat) pasteurizer's critical control point, judged over its
    channels together.

    - Forward flow below the legal minimum temperature is a deviation at the first sample (no
      averaging, no grace). The legal pair follows the product in force (``product_change``
      events): milk, rich (fat >= 10 %, total solids >= 18 %, sweetened or condensed) or
      eggnog (a product id listed in ``eggnog_products``).
    - The pairs: ``process`` names a row of the profile's pasteurization table (``us-pmo``:
      vat, htst, hhst-89 ... hhst-100, up), or ``legal`` gives the plan's own pair for milk, with
      ``rich`` and ``eggnog`` pairs of their own or, by default, the milk pair raised by
      ``rich_product_raise_c``. A pair given beside ``process`` may only be stricter.
    - The fastest particle's holding time, V / (k Q), must stay at or above the pair's time in
      forward flow; k (fastest over mean velocity) follows the Reynolds number: 2.0 laminar,
      1.33 at Re 4000, 1.25 turbulent (Re > 20000), interpolated between.
    - The recording thermometer must not read higher than the indicating one (the official).
    A diverted flow (flow-diversion state 0) is the device doing its job, not a deviation.
    """

    kind: Literal["htst"]
    id: PlanId
    ccp: RecordText | None = None
    asset: PlanId
    indicating: PlanId = Field(description="Channel of the official indicating thermometer.")
    flow_diversion: PlanId = Field(description="Channel of the FDD state: 1 forward, 0 divert.")
    recorder: PlanId | None = Field(default=None, description="Channel of the recorder.")
    flow: PlanId | None = Field(default=None, description="Channel of the flow rate, L/h.")
    holding_tube: HoldingTube | None = None
    process: ProcessClass | None = Field(
        default=None,
        description="A row of the profile's pasteurization table (us-pmo: vat, htst, "
        "hhst-89, hhst-90, hhst-94, hhst-96, hhst-100, up); needs `extends`.",
    )
    legal: LegalMinimum = LegalMinimum(temp_c=72.0, hold_s=15.0)
    rich: LegalMinimum | None = Field(
        default=None, description="The pair for rich products (default: legal + raise)."
    )
    eggnog: LegalMinimum | None = Field(
        default=None, description="The pair for eggnog (default: the rich products' pair)."
    )
    eggnog_products: list[PlanId] = Field(
        default_factory=list,
        description="Product ids (of product_change events) that are eggnog.",
    )
    rich_product_raise_c: float = Field(default=3.0, ge=0)
    density_kg_l: float = Field(default=1.01, gt=0, description="Product density when hot.")
    viscosity_mpa_s: float = Field(default=0.7, gt=0, description="Product viscosity when hot.")
    severity: Severity = "critical"
    action: Action = "divert"
    source: RecordText = Field(min_length=3)
    suspend_during_cleaning: bool = True
    changeover_volume_l: float | None = Field(
        default=None,
        description="Litres of product between the product supply (or the product-change "
        "valve; with the balance tank's working volume when the valve is upstream of it) and "
        "the indicating thermometer at the holding-tube outlet, the holding tube included. "
        "After a product change the stricter of the two products' pairs applies until twice "
        "this volume has passed forward at the measured flow (needs `flow`).",
    )

    @property
    def channels(self) -> list[str]:
        """Every channel the rule reads."""
        named = [self.indicating, self.flow_diversion, self.recorder, self.flow]
        return [channel for channel in named if channel is not None]

    @field_validator("changeover_volume_l")
    @classmethod
    def _a_pipework_volume(cls, volume: float | None, info: ValidationInfo) -> float | None:
        if volume is not None and not 0 < volume <= MAX_CHANGEOVER_VOLUME_L:
            rule = info.data.get("id", "?")
            raise ValueError(
                f"rule {rule!r}: changeover_volume_l must be above 0 and at most "
                f"{MAX_CHANGEOVER_VOLUME_L:,.0f} L (the litres from the product supply to the "
                "indicating thermometer; leave it out to switch limits at the product change)"
            )
        return volume

    @model_validator(mode="after")
    def _flow_needs_a_tube(self) -> Htst:
        if self.flow is not None and self.holding_tube is None:
            raise ValueError("a flow channel needs the holding_tube (diameter_m, length_m)")
        volume = self.changeover_volume_l
        if volume is None:
            return self
        if self.flow is None:
            raise ValueError(
                f"rule {self.id!r}: changeover_volume_l ({volume:g} L) needs the flow channel "
                "(`flow`): the volume passes at the measured flow"
            )
        assert self.holding_tube is not None  # a flow channel has its tube (above)
        tube_l = self.holding_tube.volume_l
        if volume < tube_l:
            raise ValueError(
                f"rule {self.id!r}: changeover_volume_l ({volume:g} L) is less than the holding "
                f"tube alone ({tube_l:.1f} L from its diameter and length); it counts the whole "
                "path from the product supply to the indicating thermometer, the tube included"
            )
        return self

    def pair(self, product: ProductClass) -> LegalMinimum:
        """The legal pair for a product class, with its source always set."""
        milk = self.legal
        if milk.source is None:
            milk = milk.model_copy(update={"source": self.source})
        if product == "milk":
            return milk
        rich = self.rich
        if rich is None:
            # rounded: 71.7 + 3 must be the 74.7 a reader expects, not 74.70000000000002
            raised = round(milk.temp_c + self.rich_product_raise_c, 9)
            rich = LegalMinimum(
                temp_c=raised,
                hold_s=milk.hold_s,
                source=f"{milk.source} (+{self.rich_product_raise_c:g} degC: fat >= 10 %, "
                "total solids >= 18 %, sweetened or condensed)",
            )
        elif rich.source is None:
            rich = rich.model_copy(update={"source": self.source})
        if product == "rich":
            return rich
        if self.eggnog is None:
            return rich  # eggnog is sweetened: the rich products' pair, unless given
        if self.eggnog.source is None:
            return self.eggnog.model_copy(update={"source": self.source})
        return self.eggnog

    def describe(self, unit: str) -> str:
        """'>= 72 degC for 15 s in forward flow (rich 75 degC 15 s; eggnog 75 degC 15 s)'."""
        milk, rich, eggnog = (self.pair(product) for product in PRODUCT_CLASSES)
        return (
            f">= {milk.temp_c:g} {unit} for {milk.hold_s:g} s in forward flow "
            f"(rich {rich.temp_c:g} {unit} {rich.hold_s:g} s; "
            f"eggnog {eggnog.temp_c:g} {unit} {eggnog.hold_s:g} s)"
        )


class ReceiptCheck(_ChannelRule):
    """Raw milk at receipt: each reading of the channel is one load's temperature as the plant
    took it, judged on its own against ``max``.

    Above ``max`` by no more than the channel's ``tolerance`` (the thermometer's accuracy), the
    reading cannot tell a warm load from an instrument error: a minor advisory asks to verify
    with a calibrated thermometer. Beyond ``max`` + tolerance, the load is a deviation with the
    rule's severity and action (e.g. reject_load).
    """

    kind: Literal["receipt_check"]
    max: float = Field(description="The largest temperature at receipt (PMO: 7 degC).")

    def describe(self, unit: str) -> str:
        """'<= 7 degC at receipt of each load'."""
        return f"<= {self.max:g} {unit} at receipt of each load"


class AcceptanceWindow(_ChannelRule):
    """Raw milk in a silo from its acceptance at the plant until processing begins, on the
    silo's temperature channel (``stream/engine/acceptance.py``).

    The window opens at acceptance (a ``receipt`` into the silo; milk added to unprocessed milk
    keeps the oldest acceptance) and is met when a run drawing from the silo (``run_start``
    ``sources``) starts within ``within_s``. Unprocessed at the window's end with the silo above
    ``max``, or above ``max`` at any time after it while still unprocessed, is a deviation from
    the window's end. ``within_s: 0``: above ``max`` is a deviation at once, from acceptance
    until processing (PMO). A silo that never reports a silo event is judged as a critical limit
    at ``max`` sustained for ``within_s`` instead.
    """

    kind: Literal["acceptance_window"]
    max: float = Field(description="The temperature unprocessed milk must be kept at or below.")
    within_s: float = Field(
        ge=0,
        le=7 * 86_400,
        description="How long after acceptance processing may begin with the milk above max "
        "(EU 853/2004: 4 h); 0: never above max (PMO).",
    )

    def describe(self, unit: str) -> str:
        """'<= 6 degC until processed, unless processing begins within 4 h of acceptance'."""
        if not self.within_s:
            return f"<= {self.max:g} {unit} from acceptance until processed"
        return (
            f"<= {self.max:g} {unit} until processed, unless processing begins within "
            f"{self.within_s / 3600:g} h of acceptance"
        )


class Uht(_Strict):
    """A UHT line's lethality: each parcel of product gets F0 = t_min * L(T) / 60 minutes from the
    outlet temperature T (L(T) = 10^((T - 121.1) / 10), z = 10 degC) and its fastest residence
    time in the holding tube; below ``min_f0`` the parcel is not commercially sterile."""

    kind: Literal["uht"]
    id: PlanId
    ccp: RecordText | None = None
    asset: PlanId
    outlet: PlanId = Field(description="Channel of the holding-tube outlet temperature.")
    flow: PlanId = Field(description="Channel of the flow rate, L/h.")
    holding_tube: HoldingTube
    min_f0: float = Field(default=3.0, gt=0, description="Minutes at 121.1 degC (design 5-6).")
    density_kg_l: float = Field(default=1.0, gt=0)
    viscosity_mpa_s: float = Field(default=0.3, gt=0)
    severity: Severity = "critical"
    action: Action = "divert"
    source: RecordText = Field(min_length=3)
    suspend_during_cleaning: bool = True

    @property
    def channels(self) -> list[str]:
        """Every channel the rule reads."""
        return [self.outlet, self.flow]

    @model_validator(mode="before")
    @classmethod
    def _no_changeover_volume(cls, data: Any) -> Any:
        # said plainly rather than as an unknown key: the field exists on `htst` rules
        if isinstance(data, dict) and "changeover_volume_l" in data:
            raise ValueError(
                f"rule {data.get('id', '?')!r}: a uht rule takes no changeover_volume_l: its "
                "minimum F0 is the same for every product, so a product change moves no limit; "
                "drop the key"
            )
        return data

    def describe(self, unit: str) -> str:
        """'F0 >= 3 min per parcel'."""
        return f"F0 >= {self.min_f0:g} min per parcel"


Rule = Annotated[
    CriticalLimit
    | StuckSensor
    | RateOfChange
    | Cooling
    | Transport
    | StorageAge
    | Htst
    | Uht
    | ReceiptCheck
    | AcceptanceWindow,
    Field(discriminator="kind"),
]


class Profile(_Strict):
    """A jurisdiction's legal limits as rule templates per asset kind (``stream/profiles``).

    Each template is a rule without ``asset``; it applies to every asset of its kind that has
    the channel it names.
    """

    profile: PlanId
    jurisdiction: Jurisdiction
    title: str = ""
    templates: dict[AssetKind, list[dict[str, Any]]]
    pasteurization: dict[ProcessClass, PasteurizationRow] = Field(
        default_factory=dict,
        description="The jurisdiction's pasteurization table: the rows an `htst` rule's "
        "`process` names.",
    )


_RULE = TypeAdapter(Rule)


class Plan(_Strict):
    """A HACCP plan: the assets it covers and the rules that judge them."""

    plan: PlanId
    title: str = ""
    extends: str | None = Field(
        default=None,
        description="A jurisdiction profile (cn-gb, us-pmo, eu-853, or a file) whose legal "
        "limits apply to this plan's assets; this plan may add stricter ones, never looser.",
    )
    jurisdiction: Jurisdiction
    allowed_lateness_s: float = Field(
        default=2.0,
        ge=0,
        description="Default for assets: how late a reading may arrive and still be judged.",
    )
    late_judge_s: float = Field(
        default=3600.0,
        ge=0,
        le=86_400,
        description="Default for assets: how far behind its channel's judged time a late reading "
        "is still judged (re-judging retained history), flagged found late; older ones are "
        "counted as beyond the bound and stored, not judged.",
    )
    silence_factor: float = Field(
        default=3.0,
        gt=1,
        description="A channel is 'monitoring lost' after this many sampling intervals of silence.",
    )
    clock_tolerance_s: float = Field(
        default=2.0,
        gt=0,
        description="A gateway of CCP channels whose clock is off by more is a time-sync fault.",
    )
    startup_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="How long the gateways have to be heard from after the service starts (or "
        "restarts from saved state) before a channel not heard since counts as silent: its "
        "silence clock starts at the grace's end (a channel silent across restarts: the end "
        "of the first grace it had). A 'monitoring lost' record still starts at "
        "the channel's last sample; one of a channel never heard from at all starts at the "
        "grace's end.",
    )
    assets: dict[PlanId, Asset] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules_name_known_channels(self) -> Plan:
        seen: set[str] = set()
        problems: list[str] = []
        on_the_wire: dict[tuple[str, str], str] = {}
        for key, declared in self.assets.items():
            wire = (declared.site, declared.id or key)
            if wire in on_the_wire:
                problems.append(
                    f"assets {on_the_wire[wire]!r} and {key!r} are both asset {wire[1]!r} of site "
                    f"{wire[0]!r}; give one of them another 'id' or 'site'"
                )
            on_the_wire[wire] = key
        for rule in self.rules:
            if rule.id in seen:
                problems.append(f"rule id {rule.id!r} is used twice; rule ids must be unique")
            seen.add(rule.id)
            asset = self.assets.get(rule.asset)
            if asset is None:
                problems.append(
                    f"rule {rule.id!r} names asset {rule.asset!r}, which is not under 'assets' "
                    f"(known: {', '.join(sorted(self.assets))})"
                )
                continue
            if isinstance(rule, StorageAge):
                continue
            named = rule.channels if isinstance(rule, Htst | Uht) else [rule.channel]
            problems.extend(
                f"rule {rule.id!r} names channel {channel!r} of asset {rule.asset!r}, "
                f"which has only: {', '.join(sorted(asset.channels))}"
                for channel in named
                if channel not in asset.channels
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping.

    PyYAML keeps the last of duplicate keys; in a HACCP plan a second ``min:`` below the first
    would silently lower a pasteurization limit.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        assert isinstance(node, yaml.MappingNode)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {seen[key]}); "
                    "keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True, slots=True)
class LoadedPlan:
    """A validated plan with where it came from and its version hash."""

    plan: Plan
    path: str
    version: str  # first 16 hex digits of the SHA-256 of the file
    part: str = ""  # which sites, for the part of a plan one engine of several judges

    @property
    def state_version(self) -> str:
        """What an engine's saved state must have been taken under to be restored."""
        return f"{self.version}/{self.part}" if self.part else self.version

    @property
    def sites(self) -> list[str]:
        """The sites the plan covers, sorted."""
        return sorted({asset.site for asset in self.plan.assets.values()})

    def for_sites(self, sites: set[str]) -> LoadedPlan:
        """The part of the plan that covers ``sites``: their assets and the rules on them.

        Every rule judges assets of one site, so the parts of a plan split by site judge what
        the whole plan judges, and under the same version (deviation ids stay the same). The
        part is named in :attr:`state_version`, so a snapshot of one part is never restored
        into another.
        """
        assets = {k: a for k, a in self.plan.assets.items() if a.site in sites}
        rules = [rule for rule in self.plan.rules if rule.asset in assets]
        part = self.plan.model_copy(update={"assets": assets, "rules": rules})
        digest = hashlib.sha256(",".join(sorted(sites)).encode()).hexdigest()[:16]
        return LoadedPlan(plan=part, path=self.path, version=self.version, part=digest)


def load_plan(path: str | Path) -> LoadedPlan:
    """Read and validate a plan file; raise :class:`PlanError` naming file, line and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    return parse_plan(raw, str(path))


def parse_plan(raw: bytes, name: str) -> LoadedPlan:
    """Validate plan bytes; ``name`` is used in error messages (and to find a profile file)."""
    data, root = _read_yaml(raw, name)
    profile_raw = b""
    profile_rules: list[Rule] = []
    profile: Profile | None = None
    extends = data.get("extends")
    if extends is not None:
        profile_raw, profile = _load_profile(str(extends), name)
        if data.get("jurisdiction") not in (None, profile.jurisdiction):
            raise PlanError(
                name,
                [
                    f"jurisdiction {data.get('jurisdiction')!r} differs from profile "
                    f"{profile.profile!r} ({profile.jurisdiction}); drop it or make them agree"
                ],
            )
        data = {**data, "jurisdiction": profile.jurisdiction}
        profile_rules = _instantiate(profile, data.get("assets"))
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(name, [_describe(error, root) for error in exc.errors()]) from exc
    rules, problems = _pasteurization_pairs(plan.rules, profile)
    if profile_rules:
        problems.extend(_looser_than_profile(plan.rules, profile_rules))
    if problems:
        raise PlanError(name, problems)
    plan = plan.model_copy(update={"rules": [*profile_rules, *rules]})
    version = hashlib.sha256(raw + profile_raw).hexdigest()[:16]
    return LoadedPlan(plan=plan, path=name, version=version)


def _read_yaml(raw: bytes, name: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
        data = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise PlanError(name, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError(name, [f"{where}YAML syntax error: {problem}"]) from exc
    if not isinstance(data, dict):
        raise PlanError(name, ["the file must be a YAML mapping with 'plan', 'assets' and 'rules'"])
    return data, root


def _load_profile(extends: str, plan_name: str) -> tuple[bytes, Profile]:
    """A built-in profile by name, or a profile file relative to the plan."""
    builtin = Path(str(resources.files("stream") / "profiles" / f"{extends}.yaml"))
    path = builtin if builtin.exists() else Path(plan_name).parent / extends
    try:
        raw = path.read_bytes()
    except OSError as exc:
        known = sorted(p.stem for p in builtin.parent.glob("*.yaml"))
        raise PlanError(
            plan_name,
            [f"extends {extends!r}: no such profile (built in: {', '.join(known)}) or file"],
        ) from exc
    data, root = _read_yaml(raw, str(path))
    try:
        profile = Profile.model_validate(data)
        for kind, templates in profile.templates.items():
            for template in templates:
                _RULE.validate_python({**template, "asset": f"any-{kind}"})
    except ValidationError as exc:
        raise PlanError(str(path), [_describe(error, root) for error in exc.errors()]) from exc
    return raw, profile


def _instantiate(profile: Profile, assets: object) -> list[Rule]:
    """The profile's templates applied to every asset of their kind that has the channel."""
    if not isinstance(assets, dict):
        return []
    # keyed by asset kind; an unknown kind in the plan simply matches no template
    by_kind = cast("dict[str, list[dict[str, Any]]]", profile.templates)
    rules: list[Rule] = []
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            continue
        channels = asset.get("channels") or {}
        for template in by_kind.get(str(asset.get("kind")), []):
            named = [
                template.get(k) for k in ("channel", "indicating", "outlet") if template.get(k)
            ]
            if all(channel in channels for channel in named):
                rule_id = f"{profile.profile}.{key}.{template['id']}"
                rules.append(_RULE.validate_python({**template, "id": rule_id, "asset": key}))
    return rules


def _pasteurization_pairs(
    rules: list[Rule], profile: Profile | None
) -> tuple[list[Rule], list[str]]:
    """Each ``htst`` rule's ``process`` resolved into its pairs from the profile's table.

    A pair the rule gives itself beside ``process`` stays, if it is no looser than the law's.
    """
    resolved: list[Rule] = []
    problems: list[str] = []
    table = profile.pasteurization if profile is not None else {}
    for rule in rules:
        if isinstance(rule, Htst) and rule.process is None and table:
            problems.extend(_own_pairs_within_the_table(rule, table))
        if not isinstance(rule, Htst) or rule.process is None:
            resolved.append(rule)
            continue
        row = table.get(rule.process)
        if row is None:
            if profile is None:
                has = "the plan extends no profile"
            else:
                rows = ", ".join(sorted(table)) or "none"
                has = f"profile {profile.profile!r} has rows: {rows}"
            problems.append(
                f"rule {rule.id!r}: process {rule.process!r} needs a pasteurization table, and "
                f"{has}; extend a profile that has it (us-pmo) or give "
                "legal: {temp_c, hold_s, source}"
            )
            resolved.append(rule)
            continue
        if "rich_product_raise_c" in rule.model_fields_set:
            problems.append(
                f"rule {rule.id!r}: rich_product_raise_c does nothing beside process "
                f"{rule.process!r}, whose table has a rich products' pair; drop it, or give "
                "rich: {temp_c, hold_s} if the plant is stricter"
            )
        given: dict[ProductClass, str] = {"milk": "legal", "rich": "rich", "eggnog": "eggnog"}
        pairs: dict[str, LegalMinimum] = {}
        for product, field in given.items():
            law: LegalMinimum = getattr(row, product)
            own: LegalMinimum | None = getattr(rule, field)
            if field not in rule.model_fields_set or own is None:
                pairs[field] = law
                continue
            lawful = row.lawful(product, own)
            if lawful is None:
                problems.append(
                    f"rule {rule.id!r}: {field} {own.temp_c:g} degC {own.hold_s:g} s is looser "
                    f"than the legal {law.temp_c:g} degC {law.hold_s:g} s of process "
                    f"{rule.process!r} for {product} ({law.source}); a plant may only be stricter"
                )
            else:
                pairs[field] = lawful
        resolved.append(rule.model_copy(update=pairs))
    return resolved, problems


def _own_pairs_within_the_table(
    rule: Htst, table: dict[ProcessClass, PasteurizationRow]
) -> list[str]:
    """An ``htst`` rule without ``process`` under a profile with a pasteurization table: each
    pair it gives (``legal``, and ``rich``, ``eggnog`` if given) must be at least as strict as
    one of the table's pairs for that product, so leaving ``process`` out cannot loosen the
    law (72 degC is the PMO's lowest continuous-flow temperature at 15 s, 63 degC at 30 min)."""
    problems: list[str] = []
    given: dict[ProductClass, str] = {"milk": "legal", "rich": "rich", "eggnog": "eggnog"}
    for product, field in given.items():
        own: LegalMinimum | None = getattr(rule, field)
        if own is None or (field != "legal" and field not in rule.model_fields_set):
            continue
        if any(row.lawful(product, own) is not None for row in table.values()):
            continue
        problems.append(
            f"rule {rule.id!r}: {field} {own.temp_c:g} degC {own.hold_s:g} s is looser than "
            f"every {product} pair of the profile's pasteurization table "
            f"({', '.join(sorted(table))}); name the process (process: htst) or give a pair "
            "at least as strict as one of its rows"
        )
    return problems


def _looser_than_profile(plant: list[Rule], legal: list[Rule]) -> list[str]:
    """Company critical limits must be at least as strict as the profile's on the same channel."""
    problems: list[str] = []
    for own in plant:
        if isinstance(own, AcceptanceWindow):
            problems.extend(_looser_acceptance(own, legal))
        if not isinstance(own, CriticalLimit):
            continue
        for law in legal:
            if not isinstance(law, CriticalLimit) or (law.asset, law.channel) != (
                own.asset,
                own.channel,
            ):
                continue
            if own.max is not None and law.max is not None and own.max > law.max:
                problems.append(
                    f"rule {own.id!r}: max {own.max:g} is looser than the legal {law.max:g} of "
                    f"{law.id!r} ({law.source}); a plant may only add stricter limits"
                )
            if own.min is not None and law.min is not None and own.min < law.min:
                problems.append(
                    f"rule {own.id!r}: min {own.min:g} is looser than the legal {law.min:g} of "
                    f"{law.id!r} ({law.source}); a plant may only add stricter limits"
                )
    return problems


def _looser_acceptance(own: AcceptanceWindow, legal: list[Rule]) -> list[str]:
    """A plant's acceptance window may only be stricter than the profile's on the same silo."""
    problems: list[str] = []
    for law in legal:
        if not isinstance(law, AcceptanceWindow) or (law.asset, law.channel) != (
            own.asset,
            own.channel,
        ):
            continue
        if own.max > law.max or own.within_s > law.within_s:
            problems.append(
                f"rule {own.id!r}: max {own.max:g} within {own.within_s:g} s is looser than the "
                f"legal max {law.max:g} within {law.within_s:g} s of {law.id!r} ({law.source}); "
                "a plant may only add stricter limits"
            )
    return problems


def _describe(error: Any, root: yaml.Node | None) -> str:
    """One pydantic error as 'line N: field.path: message (got: value)'."""
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    field = _dotted(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"line {line}: " if line else ""
    message = error["msg"].removeprefix("Value error, ")
    shown = ""
    if error["type"] not in {"missing", "model_type"} and "input" in error:
        value = error["input"]
        if not isinstance(value, dict | list):
            shown = f" (got: {value!r})"
    return f"{where}{field}: {message}{shown}"


def _is_union_tag(part: object) -> bool:
    # pydantic puts the discriminator value in the location ('critical_limit'); readers do not care
    return part in {
        "critical_limit",
        "stuck_sensor",
        "rate_of_change",
        "cooling",
        "transport",
        "storage_age",
        "htst",
        "uht",
        "receipt_check",
        "acceptance_window",
    }


def _dotted(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest existing parent."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line
