"""Scenario files: sites and devices, their schedules and faults, and the deviations expected.

A scenario is YAML, validated with pydantic like a plan. It names the HACCP plan it is judged by
(a file next to it), a seed (the same seed gives the same payloads, byte for byte), and what the
rule engine must find: each expected deviation by kind and asset, with its start and end within
``tolerance_min``. A healthy day expects nothing, and finding anything is a failure.

Times are hours after ``start`` (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from milkguard.errors import ScenarioError
from stream.plan import PlanId

SensorFaultKind = Literal["stuck", "drift", "spikes", "dropout"]
DeliveryFaultKind = Literal["duplicates", "reorder", "outage_burst", "malformed", "clock_skew"]
DeviceFaultKind = Literal[
    "compressor_failure",
    "hatch_open",
    "refrigeration_failure",
    "valve_stuck_forward",
    "flow_surge",
    "heater_dip",
    "dehumidifier_failure",
    "flush_failure",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fault(_Strict):
    """Something going wrong between ``from_h`` and ``to_h``.

    Sensor faults name a ``channel``: ``stuck`` (the last value repeated exactly), ``drift``
    (``size`` per hour added), ``spikes`` (``size`` added to one sample in ``every``),
    ``dropout`` (no samples). Delivery faults: ``duplicates`` (one batch in ``every`` sent
    twice), ``reorder`` (pairs of batches swapped), ``outage_burst`` (batches held by the
    gateway and sent together at ``to_h``), ``malformed`` (one payload in ``every`` cut off),
    ``clock_skew`` (the gateway's clock off by ``size`` seconds). Device faults change the
    physics: ``compressor_failure``, ``hatch_open``, ``refrigeration_failure``,
    ``valve_stuck_forward``, ``flow_surge`` (``size`` L/h more), ``heater_dip`` (setpoint
    ``size`` degC lower).
    """

    kind: SensorFaultKind | DeliveryFaultKind | DeviceFaultKind
    from_h: float = Field(default=0.0, ge=0)
    to_h: float | None = Field(default=None, ge=0)
    channel: PlanId | None = None
    asset: PlanId | None = Field(default=None, description="Sensor faults: only this asset.")
    size: float = 0.0
    every: int = Field(default=10, ge=2)

    def active(self, hours: float) -> bool:
        """True at ``hours`` after the start."""
        return self.from_h <= hours and (self.to_h is None or hours < self.to_h)


class _Device(_Strict):
    site: PlanId
    gateway: PlanId
    sample_s: float = Field(gt=0)
    batch_s: float = Field(gt=0)
    faults: list[Fault] = Field(default_factory=list)


class _OneAsset(_Device):
    """A device that is one asset of the plan."""

    asset: PlanId


class FarmTankDevice(_OneAsset):
    """A farm bulk tank: milkings at the given hours add warm milk; trucks empty it."""

    kind: Literal["farm_tank"]
    sample_s: float = 60.0
    batch_s: float = 300.0
    start_c: float = 3.8
    volume_l: float = 3000.0
    milkings_h: list[float] = Field(default_factory=list)
    milking_duration_h: float = Field(default=1.5, gt=0)
    milking_flow_l_s: float = Field(default=0.2, gt=0)
    agitator: bool = Field(default=False, description="Publish the agitator's state (1/0).")


class PickupSpec(_Strict):
    """A stop at a farm tank: its milk goes into a compartment (the first, unless named)."""

    at_h: float = Field(ge=0)
    source_site: PlanId
    source_asset: PlanId
    compartment: PlanId | None = None
    volume_l: float | None = Field(
        default=None, gt=0, description="Default: all the tank holds above its heel."
    )


class TruckDevice(_Device):
    """A milk truck on a route: pickups into its compartments, transit (its position moving
    along ``route_deg`` from start to end), delivery of every compartment at the plant."""

    kind: Literal["truck"]
    compartments: list[PlanId] = Field(min_length=1)
    truck: PlanId | None = Field(
        default=None, description="Asset id of the truck itself: publishes lat/lon if set."
    )
    route_deg: tuple[float, float, float, float] = (31.20, 121.40, 31.50, 121.90)
    sample_s: float = 30.0
    batch_s: float = 60.0
    start_c: float = 4.0
    ambient_c: float = 25.0
    pickups: list[PickupSpec] = Field(default_factory=list)
    delivery_h: float | None = None
    destination_site: PlanId = "plant-01"


class ProductSpec(_Strict):
    """A product change on a processing line."""

    at_h: float = Field(ge=0)
    product: PlanId
    fat_pct: float = Field(ge=0, le=100)


class SetpointSpec(_Strict):
    """The operator moves the heater's setpoint (e.g. up before cream, down after it)."""

    at_h: float = Field(ge=0)
    setpoint_c: float


class HtstDevice(_OneAsset):
    """An HTST pasteurizer: heater, timing pump, diversion valve, product changes, cleaning;
    ``setpoints`` move the heater's setpoint from ``setpoint_c`` during the run."""

    kind: Literal["htst"]
    sample_s: float = 1.0
    batch_s: float = 5.0
    setpoint_c: float = 72.8
    flow_l_h: float = 10_000.0
    products: list[ProductSpec] = Field(default_factory=list)
    cleaning_h: list[tuple[float, float]] = Field(default_factory=list)
    setpoints: list[SetpointSpec] = Field(default_factory=list)


class UhtDevice(_OneAsset):
    """A UHT line's holding-tube outlet and flow (``heater_dip`` lowers the outlet)."""

    kind: Literal["uht"]
    sample_s: float = 1.0
    batch_s: float = 5.0
    setpoint_c: float = 138.0
    flow_l_h: float = 6_000.0


class RoomDevice(_OneAsset):
    """A room or store held at a temperature (and humidity, if ``rh``): a powder filling room,
    a cold store, a receiving silo. ``refrigeration_failure`` lets the temperature drift to
    ``ambient_c``; ``dehumidifier_failure`` lets the humidity drift to ``ambient_rh``."""

    kind: Literal["room"]
    sample_s: float = 30.0
    batch_s: float = 60.0
    temp_c: float = 22.0
    ambient_c: float = 30.0
    rh: float | None = 45.0
    ambient_rh: float = 85.0
    time_constant_h: float = Field(default=0.5, gt=0)


class CanLineDevice(_OneAsset):
    """A can line's headspace analyser: one residual-oxygen reading per can
    (``flush_failure``: the nitrogen flush stops working)."""

    kind: Literal["can_line"]
    sample_s: float = 2.0
    batch_s: float = 30.0
    oxygen_pct: float = 1.2


class ReceiptSpec(_Strict):
    """A load received at a bay into a silo (a ``receipt`` event), with its temperature as the
    bay's thermometer took it."""

    at_h: float = Field(ge=0)
    bay: PlanId
    silo: PlanId
    load_id: PlanId
    volume_l: float = Field(gt=0, le=10_000_000)
    truck: PlanId | None = None
    compartment: PlanId | None = None
    temperature_c: float | None = Field(default=None, ge=-90, le=400)


class TransferSpec(_Strict):
    """Milk pumped from one silo into another (a ``silo_transfer`` event)."""

    at_h: float = Field(ge=0)
    from_silo: PlanId
    to_silo: PlanId
    volume_l: float = Field(gt=0, le=10_000_000)
    transfer_id: PlanId | None = None


class DrawSpec(_Strict):
    """What a run takes from one silo: ``volume_l`` at its start (planned) and ``taken_l`` at
    its end (what it actually took; default: the planned volume)."""

    silo: PlanId
    volume_l: float | None = Field(default=None, ge=0, le=10_000_000)
    taken_l: float | None = Field(default=None, ge=0, le=10_000_000)


class RunSpec(_Strict):
    """A production run on a line drawing from silos (``run_start`` and ``run_end`` events
    naming them), with the lot it makes and the product it put out."""

    start_h: float = Field(ge=0)
    end_h: float = Field(ge=0)
    line: PlanId
    run_id: PlanId
    lot: PlanId | None = None
    sources: list[DrawSpec] = Field(default_factory=list, max_length=32)
    output_volume_l: float | None = Field(default=None, ge=0, le=10_000_000)


class EmptiedSpec(_Strict):
    """A silo emptied (a ``silo_emptied`` event), then cleaned in place from ``at_h`` for
    ``cleaning_h`` hours (``cip_start`` and ``cip_end`` on the silo; 0: not cleaned)."""

    at_h: float = Field(ge=0)
    silo: PlanId
    reason: str | None = Field(default=None, max_length=256)
    volume_l: float | None = Field(default=None, ge=0, le=10_000_000)
    cleaning_h: float = Field(default=0.0, ge=0)


class PlantDevice(_Device):
    """A plant's events gateway (its MES or SCADA): the plant day as events, no readings. Loads
    received into silos, transfers between silos, runs drawing from silos, silos emptied and
    cleaned."""

    kind: Literal["plant"]
    sample_s: float = 60.0
    batch_s: float = 60.0
    receipts: list[ReceiptSpec] = Field(default_factory=list)
    transfers: list[TransferSpec] = Field(default_factory=list)
    runs: list[RunSpec] = Field(default_factory=list)
    emptied: list[EmptiedSpec] = Field(default_factory=list)

    def problems(self, where: str) -> list[str]:
        """What in the plant day contradicts itself, each naming the entry and the fix."""
        found: list[str] = []
        for number, receipt in enumerate(self.receipts):
            if receipt.bay == receipt.silo:
                found.append(
                    f"{where}.receipts[{number}]: bay and silo are both {receipt.bay!r}: "
                    "the load goes from the bay into another asset, the silo"
                )
        for number, transfer in enumerate(self.transfers):
            if transfer.from_silo == transfer.to_silo:
                found.append(
                    f"{where}.transfers[{number}]: from_silo and to_silo are both "
                    f"{transfer.from_silo!r}: a transfer goes into another silo"
                )
        for number, run in enumerate(self.runs):
            silos = [draw.silo for draw in run.sources]
            twice = sorted({silo for silo in silos if silos.count(silo) > 1})
            if twice:
                found.append(
                    f"{where}.runs[{number}]: sources name {', '.join(twice)} more than once: "
                    "name each silo once"
                )
            if run.line in silos:
                found.append(
                    f"{where}.runs[{number}]: the line {run.line!r} is one of its own sources"
                )
            if run.end_h < run.start_h:
                found.append(f"{where}.runs[{number}]: ends (end_h) before it starts (start_h)")
        return found


Device = Annotated[
    FarmTankDevice
    | TruckDevice
    | HtstDevice
    | UhtDevice
    | RoomDevice
    | CanLineDevice
    | PlantDevice,
    Field(discriminator="kind"),
]


class Expected(_Strict):
    """A deviation the engine must find."""

    kind: str
    asset: PlanId
    start_h: float
    end_h: float | None = Field(default=None, description="None: still open at the end.")
    rule: str | None = Field(default=None, description="Also match the rule id, if given.")


class Scenario(_Strict):
    """A scenario file."""

    scenario: PlanId
    description: str = ""
    plan: str = Field(description="The HACCP plan file, relative to the scenario file.")
    seed: int = 1
    start: datetime = datetime(2026, 11, 22, tzinfo=UTC)
    duration_h: float = Field(gt=0)
    tolerance_min: float = Field(default=5.0, gt=0)
    speed: float = Field(default=60.0, gt=0, description="Time acceleration when published.")
    devices: list[Device] = Field(min_length=1)
    expect: list[Expected] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        problems: list[str] = []
        tanks = {(d.site, d.asset) for d in self.devices if isinstance(d, FarmTankDevice)}
        for number, device in enumerate(self.devices):
            where = f"devices[{number}] ({device.gateway})"
            channels = _CHANNELS[device.kind]
            for fault in device.faults:
                if fault.to_h is not None and fault.to_h < fault.from_h:
                    problems.append(f"{where}: fault {fault.kind} ends (to_h) before it starts")
                if fault.kind in _SENSOR_FAULTS and fault.channel not in channels:
                    problems.append(
                        f"{where}: sensor fault {fault.kind} names channel {fault.channel!r}; "
                        f"this device has {', '.join(sorted(channels))}"
                    )
                if (
                    fault.kind in _DEVICE_FAULTS
                    and fault.kind not in _DEVICE_FAULTS_OF[device.kind]
                ):
                    problems.append(f"{where}: a {device.kind} cannot have a {fault.kind}")
            if isinstance(device, PlantDevice):
                problems.extend(device.problems(f"devices[{number}]"))
            if isinstance(device, TruckDevice):
                for stop in device.pickups:
                    if stop.compartment not in (None, *device.compartments):
                        problems.append(
                            f"{where}: pickup at {stop.at_h} h into {stop.compartment!r}, "
                            f"not one of its compartments {device.compartments}"
                        )
                    if (stop.source_site, stop.source_asset) not in tanks:
                        problems.append(
                            f"{where}: pickup at {stop.at_h} h from {stop.source_site}/"
                            f"{stop.source_asset}, which is no farm_tank of this scenario"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self


_SENSOR_FAULTS = {"stuck", "drift", "spikes", "dropout"}
_DEVICE_FAULTS = {
    "compressor_failure",
    "hatch_open",
    "refrigeration_failure",
    "valve_stuck_forward",
    "flow_surge",
    "heater_dip",
    "dehumidifier_failure",
    "flush_failure",
}
_DEVICE_FAULTS_OF = {
    "farm_tank": {"compressor_failure"},
    "truck": {"hatch_open", "refrigeration_failure"},
    "htst": {"valve_stuck_forward", "flow_surge", "heater_dip"},
    "uht": {"heater_dip"},
    "room": {"refrigeration_failure", "dehumidifier_failure"},
    "can_line": {"flush_failure"},
    "plant": set(),
}
_CHANNELS = {
    "farm_tank": {"milk_temp", "volume", "agitator"},
    "truck": {"temp", "lat", "lon"},
    "htst": {"hold_temp", "recorder_temp", "flow", "fdd_forward"},
    "uht": {"outlet_temp", "flow"},
    "room": {"temp", "rh"},
    "can_line": {"o2"},
    "plant": set(),
}


def load_scenario(path: str | Path) -> tuple[Scenario, Path]:
    """A validated scenario and the path of its plan; errors name the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(str(path), [f"YAML syntax error: {exc}"]) from exc
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            for problem in error["msg"].removeprefix("Value error, ").split("; "):
                problems.append(f"{where}: {problem}" if where else problem)
        raise ScenarioError(str(path), problems) from exc
    plan = path.parent / scenario.plan
    if not plan.exists():
        raise ScenarioError(str(path), [f"plan: no file {plan} (relative to the scenario)"])
    return scenario, plan
