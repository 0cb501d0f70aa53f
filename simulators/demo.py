"""The demo fleet of ``milkguard run``: one farm tank, one milk truck, one HTST line, in real time.

Each device is a small physical model sampled once a second and published by its own gateway
through the wire contract, as real hardware would. The truck's rear hatch is left open after a
sampling stop, so its compartment warms past the 2-6 °C cold chain limit and a newcomer sees a
deviation open within a minute and close again once the hatch is shut and the refrigeration
unit pulls the milk back down. Everything else stays healthy.

The plant has a day of its own: the HTST run draws from two raw-milk silos; the truck delivers
its two loads, which the receiving bay reports received into the silos with their temperatures;
the run ends with the volumes it took and what it put out; the emptied silo is cleaned in place.

The models are first-order heat balances (Newton cooling with a refrigeration term), enough to
give believable curves; the scenario library of the simulators grows them into full devices.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.drivers.physics import FarmBulkTank, HtstLine, TruckCompartment
from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import (
    CipEnd,
    CipStart,
    Delivery,
    Draw,
    Event,
    MilkingStart,
    Pickup,
    ProductChange,
    Reading,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
)

log = logging.getLogger(__name__)


@dataclass
class DemoTimeline:
    """When the scripted things of the demo happen, in seconds after start."""

    pickup_at_s: float = 2.0
    hatch_opens_at_s: float = 8.0
    hatch_closes_at_s: float = 40.0
    #: the truck delivers at the plant, and the bay receives its loads into the silos
    delivery_at_s: float = 70.0
    #: the run drawing from both silos ends; silo-2, drawn empty, is emptied and cleaned
    run_ends_at_s: float = 90.0
    cleaning_s: float = 60.0


#: what the run plans to take from each silo, and takes (litres)
RUN_DRAWS: tuple[tuple[str, float, float], ...] = (
    ("silo-1", 20_000.0, 19_400.0),
    ("silo-2", 8_000.0, 8_000.0),
)
#: the product the run put out: what it took, less the separated cream and losses
RUN_OUTPUT_L = 26_800.0


@dataclass
class _Gateway:
    site: str
    gateway: str
    publisher: GatewayPublisher | None = None
    events: list[Event] = field(default_factory=list)


class DemoFleet:
    """Runs the demo devices in a background thread, publishing one batch per gateway per second."""

    #: what ``milkguard run`` prints once the fleet runs
    banner = (
        "demo fleet running: farm-01 tank-1, truck-07 (rear hatch will be left open), "
        "plant-01 htst-1 drawing from silo-1 and silo-2, loads received at bay-1."
    )

    def __init__(
        self,
        address: mqtt_connect.BrokerAddress,
        *,
        seed: int = 7,
        timeline: DemoTimeline | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self._address = address
        self._random = random.Random(seed)
        self._timeline = timeline or DemoTimeline()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tank = FarmBulkTank(milking=True)
        self.compartments = [TruckCompartment("comp-1"), TruckCompartment("comp-2")]
        self.htst = HtstLine()
        self._farm = _Gateway("farm-01", "farm-01-gw")
        self._truck = _Gateway("truck-07", "truck-07-gw")
        self._plant = _Gateway("plant-01", "plant-01-htst-gw")
        self.batches = 0
        self.readings_published = 0
        self._picked_up = False
        self._delivered = False
        self._run_ended = False
        self._cleaning_until_s: float | None = None

    @property
    def gateways(self) -> Sequence[_Gateway]:
        """The fleet's gateways."""
        return (self._farm, self._truck, self._plant)

    def start(self) -> None:
        """Connect every gateway and start sampling."""
        for gw in self.gateways:
            connection = mqtt_connect.connect(self._address, f"sim-{gw.gateway}")
            gw.publisher = GatewayPublisher(connection, gw.site, gw.gateway)
        self._thread = threading.Thread(target=self._run, name="demo-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, wait for the broker to acknowledge every batch, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for gw in self.gateways:
            if gw.publisher is not None and not gw.publisher.connection.close():
                log.warning("simulator.unacknowledged", extra={"gateway": gw.gateway})

    def _run(self) -> None:
        started = time.monotonic()
        now_ms = time.time_ns() // 1_000_000
        self._opening_events(now_ms)
        tick = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - started
            now_ms = time.time_ns() // 1_000_000
            try:
                self._script(elapsed, now_ms)
                self._sample(now_ms)
            except Exception:
                # a device that fails must say so, and the others keep sampling
                log.exception("simulator.sample_failed", extra={"tick": tick})
            tick += 1
            self._stop.wait(max(0.0, started + tick * self._interval_s - time.monotonic()))

    def _opening_events(self, now_ms: int) -> None:
        self._farm.events.append(MilkingStart(asset=self.tank.asset, ts=now_ms, milking_id="pm"))
        self._plant.events.append(
            ProductChange(asset=self.htst.asset, ts=now_ms, product="whole-milk", fat_pct=3.5)
        )
        self._plant.events.append(
            RunStart(
                asset=self.htst.asset,
                ts=now_ms,
                run_id="run-1",
                lot="lot-1",
                sources=tuple(Draw(silo, planned) for silo, planned, _ in RUN_DRAWS),
            )
        )

    def _script(self, elapsed_s: float, now_ms: int) -> None:
        line = self._timeline
        if elapsed_s >= line.pickup_at_s and not self._picked_up:
            self._picked_up = True
            for number, comp in enumerate(self.compartments, start=1):
                self._truck.events.append(
                    Pickup(
                        asset=comp.asset,
                        ts=now_ms,
                        load_id=f"load-{number}",
                        compartment=comp.asset,
                        volume_l=6_000.0,
                        source_site="farm-01",
                        source_asset="tank-1",
                    )
                )
        rear = self.compartments[1]
        rear.hatch_open = line.hatch_opens_at_s <= elapsed_s < line.hatch_closes_at_s
        if elapsed_s >= line.delivery_at_s and not self._delivered:
            self._delivered = True
            self._deliver(now_ms)
        if elapsed_s >= line.run_ends_at_s and not self._run_ended:
            self._run_ended = True
            self._end_run(now_ms)
            self._cleaning_until_s = elapsed_s + line.cleaning_s
        if self._cleaning_until_s is not None and elapsed_s >= self._cleaning_until_s:
            self._cleaning_until_s = None
            self._plant.events.append(CipEnd(asset="silo-2", ts=now_ms))

    def _deliver(self, now_ms: int) -> None:
        """The truck's loads delivered, and received at the bay into the silos, each with the
        temperature its compartment arrived at."""
        for number, (comp, silo) in enumerate(
            zip(self.compartments, ("silo-1", "silo-2"), strict=True), start=1
        ):
            load = f"load-{number}"
            self._truck.events.append(
                Delivery(
                    asset=comp.asset,
                    ts=now_ms,
                    load_id=load,
                    compartment=comp.asset,
                    volume_l=6_000.0,
                    destination_site="plant-01",
                )
            )
            self._plant.events.append(
                Receipt(
                    asset="bay-1",
                    ts=now_ms,
                    load_id=load,
                    destination=silo,
                    volume_l=6_000.0,
                    truck="truck-07",
                    compartment=comp.asset,
                    temperature_c=round(comp.temp_c, 1),
                )
            )

    def _end_run(self, now_ms: int) -> None:
        """The run ends with what it took from each silo; silo-2, drawn empty, is cleaned."""
        self._plant.events.append(
            RunEnd(
                asset=self.htst.asset,
                ts=now_ms,
                run_id="run-1",
                sources=tuple(Draw(silo, taken) for silo, _, taken in RUN_DRAWS),
                lot="lot-1",
                output_volume_l=RUN_OUTPUT_L,
            )
        )
        self._plant.events.append(SiloEmptied(asset="silo-2", ts=now_ms, reason="processed"))
        self._plant.events.append(CipStart(asset="silo-2", ts=now_ms, program="silo"))

    def _sample(self, now_ms: int) -> None:
        noise = self._random.gauss
        dt = self._interval_s
        self.tank.step(dt)
        farm = [
            Reading(
                self.tank.asset,
                "milk_temp",
                round(self.tank.temp_c + noise(0, 0.03), 2),
                "degC",
                now_ms,
            ),
            Reading(self.tank.asset, "volume", round(self.tank.volume_l, 1), "L", now_ms),
        ]
        truck = []
        for comp in self.compartments:
            comp.step(dt)
            truck.append(
                Reading(comp.asset, "temp", round(comp.temp_c + noise(0, 0.05), 2), "degC", now_ms)
            )
        hold = round(self.htst.hold_temp_c + noise(0, 0.04), 2)
        plant = [
            Reading(self.htst.asset, "hold_temp", hold, "degC", now_ms),
            Reading(
                self.htst.asset,
                "recorder_temp",
                round(hold + self.htst.recorder_offset_c, 2),
                "degC",
                now_ms,
            ),
            Reading(
                self.htst.asset, "flow", round(self.htst.flow_l_h + noise(0, 20), 0), "L/h", now_ms
            ),
            Reading(self.htst.asset, "fdd_forward", 1.0, "state", now_ms),
        ]
        for silo in ("silo-1", "silo-2"):
            # a silo being cleaned reads the hot cleaning solution, not milk
            cleaning = silo == "silo-2" and self._cleaning_until_s is not None
            temp = 70.0 if cleaning else 3.6
            plant.append(Reading(silo, "temp", round(temp + noise(0, 0.03), 2), "degC", now_ms))
        for gw, readings in ((self._farm, farm), (self._truck, truck), (self._plant, plant)):
            assert gw.publisher is not None  # set in start()
            gw.publisher.publish(readings, gw.events)
            gw.events = []
            self.batches += 1
            self.readings_published += len(readings)
