"""Running a scenario: device physics sampled on a simulated clock, batched by gateways with
their delivery faults, merged into the order the stream would receive them.

Deterministic: the simulated clock never reads the wall clock, and every random draw comes from
the scenario's seed, so the same scenario gives the same payloads byte for byte.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from edge.drivers.physics import FarmBulkTank, HtstLine, TruckCompartment
from milkguard.contract.v1 import (
    Batch,
    CipEnd,
    CipStart,
    Delivery,
    Draw,
    Event,
    MilkingEnd,
    MilkingStart,
    Pickup,
    ProductChange,
    Reading,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
    Unit,
    batch_topic,
    encode_batch,
)
from simulators.scenario import (
    CanLineDevice,
    Device,
    FarmTankDevice,
    Fault,
    HtstDevice,
    PlantDevice,
    RoomDevice,
    Scenario,
    TruckDevice,
    UhtDevice,
)

HEEL_L = 50.0  # what stays in a tank after a pickup


class _Handovers(dict[tuple[str, str], list[tuple[float, float]]]):
    """Volumes tanks handed to trucks: (hours, litres) per tank, filled as tanks are simulated."""

    def __missing__(self, key: tuple[str, str]) -> list[tuple[float, float]]:
        value: list[tuple[float, float]] = []
        self[key] = value
        return value

    def at(self, tank: tuple[str, str], at_h: float) -> float:
        """The litres a tank handed over at its first pickup at or after ``at_h``."""
        later = [litres for hours, litres in self[tank] if hours >= at_h - 1e-9]
        return later[0] if later else 0.0


@dataclass(order=True, frozen=True)
class Outgoing:
    """One payload and when the gateway sends it (ms since the epoch)."""

    send_ms: int
    order: int
    payload: bytes = field(compare=False)
    topic: str = field(default="", compare=False)


@dataclass
class _Step:
    """What a device produced at one moment."""

    hours: float
    readings: list[tuple[str, str, float, Unit]]  # (asset, channel, value, unit)
    events: list[Event]


class _SensorFaults:
    """Stuck, drifting, spiking and dropped-out sensors of one device, each (asset, channel)
    with its own state (a truck's compartments all have a ``temp``)."""

    def __init__(self, faults: list[Fault]) -> None:
        self._faults = [f for f in faults if f.kind in {"stuck", "drift", "spikes", "dropout"}]
        self._stuck_at: dict[tuple[str, str], float] = {}
        self._count: dict[tuple[str, str], int] = {}

    def apply(self, asset: str, channel: str, hours: float, value: float) -> float | None:
        """The value the sensor reports, or None when it reports nothing."""
        key = (asset, channel)
        for fault in self._faults:
            if fault.channel != channel or (fault.asset not in (None, asset)):
                continue
            if not fault.active(hours):
                if fault.kind == "stuck":
                    self._stuck_at.pop(key, None)
                continue
            if fault.kind == "dropout":
                return None
            if fault.kind == "stuck":
                value = self._stuck_at.setdefault(key, value)
            elif fault.kind == "drift":
                value += fault.size * (hours - fault.from_h)
            elif fault.kind == "spikes":
                self._count[key] = self._count.get(key, 0) + 1
                if self._count[key] % fault.every == 0:
                    value += fault.size
        return value


class _Gateway:
    """Batches one device's samples as its gateway does, with its delivery faults.

    ``sequence`` is shared by every device on the same gateway id, so their batches never
    share a number. A batch is stamped when it is actually sent (after an outage, late), on
    the gateway's clock (with its skew); nothing held by a fault is ever dropped.
    """

    def __init__(self, device: Device, start_ms: int, sequence: Iterator[int]) -> None:
        self.device = device
        self.start_ms = start_ms
        self.sequence = sequence
        self.faults = device.faults
        skews = [f.size for f in device.faults if f.kind == "clock_skew"]
        self.skew_ms = round(sum(skews) * 1000)
        self._readings: list[Reading] = []
        self._events: list[Event] = []
        self._held: list[tuple[list[Reading], list[Event]]] = []
        self._swap: Outgoing | None = None
        self._count = 0

    def ms(self, hours: float) -> int:
        """The gateway's clock at ``hours`` after the start (with its skew)."""
        return self.start_ms + round(hours * 3_600_000) + self.skew_ms

    def add(self, step: _Step) -> None:
        """One moment's samples and events."""
        stamp = self.ms(step.hours)
        self._readings.extend(Reading(a, c, v, u, stamp) for a, c, v, u in step.readings)
        self._events.extend(step.events)

    def flush(self, hours: float, order: int, final: bool = False) -> list[Outgoing]:
        """Send what was gathered as one batch, faults permitting; ``final`` sends everything
        still held (an outage or a reorder still going on when the scenario ends)."""
        gathered = (self._readings, self._events)
        self._readings, self._events = [], []
        outage = any(f.kind == "outage_burst" and f.active(hours) for f in self.faults)
        if gathered[0] or gathered[1]:
            self._held.append(gathered)
        if outage and not final:
            return []
        out: list[Outgoing] = []
        for readings, events in self._held:  # the backlog first, in order, stamped now
            out.extend(self._send(readings, events, hours, order))
        self._held = []
        reordering = any(f.kind == "reorder" and f.active(hours) for f in self.faults)
        if not reordering or final:
            if self._swap is not None:
                out.insert(0, self._swap)
                self._swap = None
            return out
        arranged: list[Outgoing] = []
        for outgoing in out:
            if self._swap is None:
                self._swap = outgoing
            else:
                arranged.extend([outgoing, self._swap])  # the later one overtakes
                self._swap = None
        return arranged

    def _send(
        self, readings: list[Reading], events: list[Event], hours: float, order: int
    ) -> list[Outgoing]:
        sent_at = self.ms(hours)
        batch = Batch(
            v=1,
            site=self.device.site,
            gateway=self.device.gateway,
            seq=next(self.sequence),
            sent_at=sent_at,
            readings=readings,
            events=events,
        )
        payload = encode_batch(batch)
        self._count += 1
        for fault in self.faults:
            if fault.kind == "malformed" and fault.active(hours) and self._count % fault.every == 0:
                payload = payload[: len(payload) // 2]
        send_ms = sent_at - self.skew_ms  # sent on time, whatever its clock says
        out = [Outgoing(send_ms, order, payload)]
        for fault in self.faults:
            if (
                fault.kind == "duplicates"
                and fault.active(hours)
                and self._count % fault.every == 0
            ):
                out.append(Outgoing(send_ms + 1, order, payload))
        return out


def simulate(scenario: Scenario, seq_base: int | None = None) -> Iterator[bytes]:
    """Every payload of the scenario, in the order the stream receives them."""
    for outgoing in simulate_timed(scenario, seq_base):
        yield outgoing.payload


def simulate_timed(scenario: Scenario, seq_base: int | None = None) -> Iterator[Outgoing]:
    """Every payload with its topic and send time, in the order the stream receives them.

    Sequence numbers start at ``seq_base`` (the scenario's start in ms unless given: publishing
    to a running stream again wants a fresh base, e.g. the wall clock, or it is all duplicates).
    """
    start_ms = int(scenario.start.timestamp() * 1000)
    tank_temps: dict[tuple[str, str], list[tuple[float, float]]] = {}
    handed = _Handovers()
    sequences: dict[tuple[str, str], Iterator[int]] = {}
    streams: list[list[Outgoing]] = []
    devices = sorted(scenario.devices, key=lambda d: 0 if isinstance(d, FarmTankDevice) else 1)
    for number, device in enumerate(devices):
        rng = random.Random(f"{scenario.seed}/{device.gateway}/{number}")
        if isinstance(device, FarmTankDevice):
            steps = _tank(device, scenario, rng, tank_temps, handed)
        elif isinstance(device, TruckDevice):
            steps = _truck(device, scenario, rng, tank_temps, handed)
        elif isinstance(device, HtstDevice):
            steps = _htst(device, scenario, rng)
        elif isinstance(device, UhtDevice):
            steps = _uht(device, scenario, rng)
        elif isinstance(device, RoomDevice):
            steps = _room(device, scenario, rng)
        elif isinstance(device, PlantDevice):
            steps = _plant_day(device, scenario)
        else:
            steps = _cans(device, scenario, rng)
        sequence = sequences.setdefault(
            (device.site, device.gateway), itertools.count(seq_base or start_ms)
        )
        streams.append(
            _batched(
                device,
                steps,
                start_ms=start_ms,
                order=number,
                duration_h=scenario.duration_h,
                sequence=sequence,
            )
        )
    yield from heapq.merge(*streams)


def _batched(
    device: Device,
    steps: Iterator[_Step],
    *,
    start_ms: int,
    order: int,
    duration_h: float,
    sequence: Iterator[int],
) -> list[Outgoing]:
    gateway = _Gateway(device, start_ms, sequence)
    sensors = _SensorFaults(device.faults)
    out: list[Outgoing] = []
    next_flush = device.batch_s / 3600
    for step in steps:
        while step.hours >= next_flush:
            out.extend(gateway.flush(next_flush, order))
            next_flush += device.batch_s / 3600
        kept: list[tuple[str, str, float, Unit]] = []
        for asset, channel, value, unit in step.readings:
            reported = sensors.apply(asset, channel, step.hours, value)
            if reported is not None:
                kept.append((asset, channel, round(reported, 3), unit))
        gateway.add(_Step(step.hours, kept, step.events))
    out.extend(gateway.flush(duration_h, order, final=True))
    out.sort()
    topic = batch_topic(device.site, device.gateway)
    return [Outgoing(o.send_ms, o.order, o.payload, topic) for o in out]


def _tick(hours: float, dt_s: float) -> int:
    return round(hours * 3600 / dt_s)


def _at(hours: float, at_h: float, dt_s: float) -> bool:
    """True on the one tick at which something scheduled for ``at_h`` happens (integer tick
    indices: a float window can hold two ticks and fire twice)."""
    return _tick(hours, dt_s) == math.ceil(at_h * 3600 / dt_s - 1e-9)


def _ticks(sample_s: float, duration_h: float) -> Iterator[float]:
    steps = int(duration_h * 3600 / sample_s)
    for number in range(steps):
        yield number * sample_s / 3600


def _device_fault(device: Device, kind: str, hours: float) -> Fault | None:
    return next((f for f in device.faults if f.kind == kind and f.active(hours)), None)


def _tank(
    device: FarmTankDevice,
    scenario: Scenario,
    rng: random.Random,
    temps: dict[tuple[str, str], list[tuple[float, float]]],
    handed: _Handovers,
) -> Iterator[_Step]:
    tank = FarmBulkTank(
        site=device.site,
        asset=device.asset,
        volume_l=device.volume_l,
        temp_c=device.start_c,
        milking_flow_l_s=device.milking_flow_l_s,
    )
    cooling_kw = tank.cooling_kw
    pickups = sorted(
        (p.at_h, p.volume_l)
        for d in scenario.devices
        if isinstance(d, TruckDevice)
        for p in d.pickups
        if (p.source_site, p.source_asset) == (device.site, device.asset)
    )
    timeline = temps.setdefault((device.site, device.asset), [])
    dt = device.sample_s
    for hours in _ticks(dt, scenario.duration_h):
        events: list[Event] = []
        stamp = _Stamp(scenario, device.faults)
        for start in device.milkings_h:
            end = start + device.milking_duration_h
            if _at(hours, start, dt):
                events.append(MilkingStart(asset=device.asset, ts=stamp(start)))
            if _at(hours, end, dt):
                events.append(MilkingEnd(asset=device.asset, ts=stamp(end)))
        tank.milking = any(s <= hours < s + device.milking_duration_h for s in device.milkings_h)
        if pickups and pickups[0][0] <= hours:
            _, volume = pickups.pop(0)
            # what the truck takes is what the stop says (a partial pickup leaves the rest), else
            # all the tank held above its heel: the books balance
            above = tank.volume_l - HEEL_L
            taken = above if volume is None else min(volume, above)
            handed[(device.site, device.asset)].append((hours, taken))
            tank.volume_l -= taken
        failed = _device_fault(device, "compressor_failure", hours) is not None
        tank.cooling_kw = 0.0 if failed else cooling_kw
        tank.step(dt)
        timeline.append((hours, tank.temp_c))
        noisy = tank.temp_c + rng.gauss(0, 0.02)
        readings: list[tuple[str, str, float, Unit]] = [
            (device.asset, "milk_temp", noisy, "degC"),
            (device.asset, "volume", tank.volume_l, "L"),
        ]
        if device.agitator:  # stirs while milk comes in or the compressor runs
            stirring = tank.milking or tank.compressor_on
            readings.append((device.asset, "agitator", 1.0 if stirring else 0.0, "state"))
        yield _Step(hours, readings, events)


@dataclass
class _Stamp:
    """Event timestamps on the gateway's clock (with its skew)."""

    scenario: Scenario
    faults: list[Fault]

    def __call__(self, hours: float) -> int:
        skew = sum(f.size for f in self.faults if f.kind == "clock_skew")
        return int(self.scenario.start.timestamp() * 1000) + round((hours * 3600 + skew) * 1000)


def _truck(
    device: TruckDevice,
    scenario: Scenario,
    rng: random.Random,
    temps: dict[tuple[str, str], list[tuple[float, float]]],
    handed: _Handovers,
) -> Iterator[_Step]:
    comps = {
        name: TruckCompartment(asset=name, temp_c=device.start_c, ambient_c=device.ambient_c)
        for name in device.compartments
    }
    volumes = dict.fromkeys(device.compartments, 0.0)
    loads: dict[str, str] = {}  # compartment -> the load id of its first pickup
    refrigeration = next(iter(comps.values())).refrigeration_per_s
    stamp = _Stamp(scenario, device.faults)
    dt = device.sample_s
    for hours in _ticks(dt, scenario.duration_h):
        events: list[Event] = []
        for number, stop in enumerate(device.pickups):
            if _at(hours, stop.at_h, dt):
                name = stop.compartment or device.compartments[0]
                comp = comps[name]
                source = (stop.source_site, stop.source_asset)
                milk_c = _temp_at(temps.get(source, []), hours)
                volume = stop.volume_l or handed.at(source, stop.at_h)
                comp.temp_c = (comp.temp_c * volumes[name] + milk_c * volume) / (
                    volumes[name] + volume
                )
                volumes[name] += volume
                load_id = loads.setdefault(name, f"load-{number}")
                events.append(
                    Pickup(
                        asset=device.truck or device.gateway,
                        ts=stamp(stop.at_h),
                        load_id=load_id,
                        compartment=name,
                        volume_l=volume,
                        source_site=stop.source_site,
                        source_asset=stop.source_asset,
                    )
                )
        delivery = device.delivery_h
        if delivery is not None and _at(hours, delivery, dt):
            for name in device.compartments:
                if volumes[name] > 0:
                    events.append(
                        Delivery(
                            asset=device.truck or device.gateway,
                            ts=stamp(delivery),
                            load_id=loads.pop(name, "load-0"),
                            compartment=name,
                            volume_l=volumes[name],
                            destination_site=device.destination_site,
                        )
                    )
                    volumes[name] = 0.0
        readings: list[tuple[str, str, float, Unit]] = []
        hatch = _device_fault(device, "hatch_open", hours)
        broken = _device_fault(device, "refrigeration_failure", hours) is not None
        for name, comp in comps.items():
            comp.hatch_open = hatch is not None and (hatch.channel in (None, name))
            comp.refrigeration_per_s = 0.0 if broken else refrigeration
            comp.step(dt)
            readings.append((name, "temp", comp.temp_c + rng.gauss(0, 0.03), "degC"))
        if device.truck is not None:
            share = min(1.0, hours / delivery) if delivery else 0.0
            lat0, lon0, lat1, lon1 = device.route_deg
            readings.append((device.truck, "lat", lat0 + (lat1 - lat0) * share, "deg"))
            readings.append((device.truck, "lon", lon0 + (lon1 - lon0) * share, "deg"))
        yield _Step(hours, readings, events)


def _temp_at(timeline: list[tuple[float, float]], hours: float) -> float:
    earlier = [temp for at, temp in timeline if at <= hours]
    return earlier[-1] if earlier else 4.0


def _htst(device: HtstDevice, scenario: Scenario, rng: random.Random) -> Iterator[_Step]:
    line = HtstLine(
        asset=device.asset,
        setpoint_c=device.setpoint_c,
        hold_temp_c=device.setpoint_c,
        flow_l_h=device.flow_l_h,
    )
    stamp = _Stamp(scenario, device.faults)
    dt = device.sample_s
    for hours in _ticks(dt, scenario.duration_h):
        events: list[Event] = []
        for product in device.products:
            if _at(hours, product.at_h, dt):
                events.append(
                    ProductChange(
                        asset=device.asset,
                        ts=stamp(product.at_h),
                        product=product.product,
                        fat_pct=product.fat_pct,
                    )
                )
        cleaning = False
        for begin, end in device.cleaning_h:
            if _at(hours, begin, dt):
                events.append(CipStart(asset=device.asset, ts=stamp(begin), program="alkaline"))
            if _at(hours, end, dt):
                events.append(CipEnd(asset=device.asset, ts=stamp(end)))
            cleaning = cleaning or begin <= hours < end
        dip = _device_fault(device, "heater_dip", hours)
        setpoint = device.setpoint_c
        for moved in sorted(device.setpoints, key=lambda spec: spec.at_h):
            if _tick(hours, dt) >= math.ceil(moved.at_h * 3600 / dt - 1e-9):
                setpoint = moved.setpoint_c  # from its tick on, as _at fires events
        line.setpoint_c = 80.0 if cleaning else setpoint - (dip.size if dip else 0.0)
        line.valve_stuck_forward = _device_fault(device, "valve_stuck_forward", hours) is not None
        surge = _device_fault(device, "flow_surge", hours)
        line.flow_l_h = device.flow_l_h + (surge.size if surge else 0.0)
        line.step(dt)
        forward = line.forward and not cleaning
        hold = line.hold_temp_c + rng.gauss(0, 0.03)
        yield _Step(
            hours,
            [
                (device.asset, "hold_temp", hold, "degC"),
                (device.asset, "recorder_temp", hold + line.recorder_offset_c, "degC"),
                (device.asset, "flow", line.flow_l_h + rng.gauss(0, 15), "L/h"),
                (device.asset, "fdd_forward", 1.0 if forward else 0.0, "state"),
            ],
            events,
        )


def _lag(value: float, target: float, dt_s: float, time_constant_s: float) -> float:
    """One step of a first-order approach to ``target``."""
    return value + (target - value) * min(1.0, dt_s / time_constant_s)


def _uht(device: UhtDevice, scenario: Scenario, rng: random.Random) -> Iterator[_Step]:
    outlet = device.setpoint_c
    dt = device.sample_s
    for hours in _ticks(dt, scenario.duration_h):
        dip = _device_fault(device, "heater_dip", hours)
        outlet = _lag(outlet, device.setpoint_c - (dip.size if dip else 0.0), dt, 20.0)
        yield _Step(
            hours,
            [
                (device.asset, "outlet_temp", outlet + rng.gauss(0, 0.05), "degC"),
                (device.asset, "flow", device.flow_l_h + rng.gauss(0, 10), "L/h"),
            ],
            [],
        )


def _room(device: RoomDevice, scenario: Scenario, rng: random.Random) -> Iterator[_Step]:
    temp, rh = device.temp_c, device.rh
    dt = device.sample_s
    lag_s = device.time_constant_h * 3600
    for hours in _ticks(dt, scenario.duration_h):
        warm = _device_fault(device, "refrigeration_failure", hours) is not None
        temp = _lag(temp, device.ambient_c if warm else device.temp_c, dt, lag_s)
        readings: list[tuple[str, str, float, Unit]] = [
            (device.asset, "temp", temp + rng.gauss(0, 0.05), "degC")
        ]
        if rh is not None and device.rh is not None:
            humid = _device_fault(device, "dehumidifier_failure", hours) is not None
            rh = _lag(rh, device.ambient_rh if humid else device.rh, dt, lag_s)
            readings.append((device.asset, "rh", rh + rng.gauss(0, 0.3), "%RH"))
        yield _Step(hours, readings, [])


def _cans(device: CanLineDevice, scenario: Scenario, rng: random.Random) -> Iterator[_Step]:
    dt = device.sample_s
    for hours in _ticks(dt, scenario.duration_h):
        failed = _device_fault(device, "flush_failure", hours) is not None
        oxygen = (6.0 if failed else device.oxygen_pct) + rng.gauss(0, 0.2)
        yield _Step(hours, [(device.asset, "o2", max(0.1, oxygen), "%O2")], [])


def _plant_events(device: PlantDevice, stamp: _Stamp) -> list[tuple[float, Event]]:
    """Every event of a plant day with the hour it happens, in the order of the script."""
    timed: list[tuple[float, Event]] = []
    for receipt in device.receipts:
        timed.append(
            (
                receipt.at_h,
                Receipt(
                    asset=receipt.bay,
                    ts=stamp(receipt.at_h),
                    load_id=receipt.load_id,
                    destination=receipt.silo,
                    volume_l=receipt.volume_l,
                    truck=receipt.truck,
                    compartment=receipt.compartment,
                    temperature_c=receipt.temperature_c,
                ),
            )
        )
    for transfer in device.transfers:
        timed.append(
            (
                transfer.at_h,
                SiloTransfer(
                    asset=transfer.from_silo,
                    ts=stamp(transfer.at_h),
                    destination=transfer.to_silo,
                    volume_l=transfer.volume_l,
                    transfer_id=transfer.transfer_id,
                ),
            )
        )
    for run in device.runs:
        planned = tuple(Draw(d.silo, d.volume_l) for d in run.sources)
        taken = tuple(
            Draw(d.silo, d.taken_l if d.taken_l is not None else d.volume_l) for d in run.sources
        )
        start = RunStart(
            asset=run.line, ts=stamp(run.start_h), run_id=run.run_id, lot=run.lot, sources=planned
        )
        end = RunEnd(
            asset=run.line,
            ts=stamp(run.end_h),
            run_id=run.run_id,
            sources=taken,
            lot=run.lot,
            output_volume_l=run.output_volume_l,
        )
        timed.extend(((run.start_h, start), (run.end_h, end)))
    for emptied in device.emptied:
        timed.append(
            (
                emptied.at_h,
                SiloEmptied(
                    asset=emptied.silo,
                    ts=stamp(emptied.at_h),
                    reason=emptied.reason,
                    volume_l=emptied.volume_l,
                ),
            )
        )
        if emptied.cleaning_h > 0:
            end_h = emptied.at_h + emptied.cleaning_h
            timed.append(
                (emptied.at_h, CipStart(asset=emptied.silo, ts=stamp(emptied.at_h), program="silo"))
            )
            timed.append((end_h, CipEnd(asset=emptied.silo, ts=stamp(end_h))))
    return timed


def _plant_day(device: PlantDevice, scenario: Scenario) -> Iterator[_Step]:
    """A plant's events gateway: each scripted event on the tick it happens, no readings."""
    dt = device.sample_s
    timed = _plant_events(device, _Stamp(scenario, device.faults))
    for hours in _ticks(dt, scenario.duration_h):
        events = [event for at_h, event in timed if _at(hours, at_h, dt)]
        if events:
            events.sort(key=lambda event: event.ts)  # stable: the script's order at one time
            yield _Step(hours, [], events)
