"""Milk on the move: the oldest milk in a tank or compartment (<= 48 h from the oldest milking
still in it, CN), and each load's trip (transit time and temperature exposure)."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import Delivery, Event, MilkingStart, Pickup
from stream.engine import Engine
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: logistics
jurisdiction: CN
allowed_lateness_s: 0
silence_factor: 1000
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 600}
  comp-1:
    site: truck-07
    kind: truck_compartment
    channels:
      temp: {unit: degC, interval_s: 60}
rules:
  - {id: tank-age, kind: storage_age, asset: tank-1, max_age_s: 172800,
     source: "CN: raw milk stored <= 48 h from the oldest milking, in principle"}
  - {id: load-age, kind: storage_age, asset: comp-1, max_age_s: 172800,
     source: "CN: raw milk <= 48 h from the oldest milking, in principle"}
  - {id: trip, kind: transport, asset: comp-1, channel: temp, max_transit_s: 21600,
     exposure_above: 6.0, max_exposure_degree_minutes: 60, severity: major,
     action: reject_load, source: "company: 6 h door to door, <= 60 degC.min above 6 degC"}
"""

HOUR = 3600


@pytest.fixture
def chain() -> Scenario:
    return Scenario(PLAN)


def farm(chain: Scenario, *events: Event) -> None:
    chain.engine.submit_events("farm-01", list(events))


def truck(chain: Scenario, *events: Event) -> None:
    chain.engine.submit_events("truck-07", list(events))


def pickup(hours: float, volume_l: float = 6000, tank: str = "tank-1") -> Pickup:
    return Pickup(
        asset="truck-07",
        ts=at(hours * HOUR),
        load_id="L1",
        compartment="comp-1",
        volume_l=volume_l,
        source_site="farm-01",
        source_asset=tank,
    )


def delivery(hours: float, volume_l: float = 6000) -> Delivery:
    return Delivery(
        asset="truck-07",
        ts=at(hours * HOUR),
        load_id="L1",
        compartment="comp-1",
        volume_l=volume_l,
        destination_site="plant-01",
    )


def test_milk_older_than_48_hours_in_the_tank_is_a_deviation_until_picked_up(
    chain: Scenario,
) -> None:
    farm(chain, MilkingStart(asset="tank-1", ts=at(0)))
    farm(chain, MilkingStart(asset="tank-1", ts=at(12 * HOUR)))  # newer milk: the oldest stays
    chain.idle_until(47 * HOUR)
    assert chain.of("storage_age") == []
    chain.idle_until(49 * HOUR)
    truck(chain, pickup(50))
    chain.idle_until(50 * HOUR)

    opened, closed = [c for c in chain.of("storage_age") if c.deviation.asset == "tank-1"]
    assert opened.deviation.start_ms == at(48 * HOUR)
    assert closed.deviation.end_ms == at(50 * HOUR)
    # the truck took milk already over 48 h old: its compartment is too old from the start
    (load,) = [c for c in chain.of("storage_age") if c.deviation.asset == "comp-1"]
    assert (load.kind, load.deviation.start_ms) == ("opened", at(48 * HOUR))


def test_a_compartment_takes_the_age_of_the_oldest_milk_it_picked_up(chain: Scenario) -> None:
    farm(chain, MilkingStart(asset="tank-1", ts=at(0)))
    truck(chain, pickup(40))
    chain.idle_until(45 * HOUR)
    truck(chain, delivery(45.5))
    chain.idle_until(50 * HOUR)

    ages = [c for c in chain.of("storage_age") if c.deviation.asset == "comp-1"]
    assert ages == []  # delivered at 45.5 h: the 48 h from the farm's milking was not reached


def test_a_load_delivered_after_48_hours_of_its_oldest_milk_is_too_old(chain: Scenario) -> None:
    farm(chain, MilkingStart(asset="tank-1", ts=at(0)))
    truck(chain, pickup(40))  # the tank's clock, not the pickup's, runs on
    chain.idle_until(49 * HOUR)
    truck(chain, delivery(49.5))
    chain.idle_until(50 * HOUR)

    opened, closed = [c for c in chain.of("storage_age") if c.deviation.asset == "comp-1"]
    assert opened.deviation.start_ms == at(48 * HOUR)
    assert closed.deviation.end_ms == at(49.5 * HOUR)


def test_a_load_still_on_the_road_after_6_hours_is_a_transit_deviation(chain: Scenario) -> None:
    truck(chain, pickup(0))
    chain.idle_until(7 * HOUR)
    truck(chain, delivery(7.5))
    chain.idle_until(7.5 * HOUR)

    opened, closed = chain.of("transit_time")
    assert opened.deviation.start_ms == at(6 * HOUR)
    assert closed.deviation.end_ms == at(7.5 * HOUR)


def test_temperature_exposure_builds_up_along_the_trip(chain: Scenario) -> None:
    truck(chain, pickup(0))
    # 8 degC is 2 degC above the reference: 60 degC.min is used up after 30 minutes
    chain.samples("truck-07", "comp-1", "temp", "degC", [(m * 60, 8.0) for m in range(0, 41)])
    truck(chain, delivery(1))
    chain.idle_until(HOUR)

    opened, closed = chain.of("temperature_exposure")
    assert opened.deviation.start_ms == at(31 * 60)  # the first sample past 60 degC.min
    assert closed.deviation.end_ms == at(HOUR)
    assert chain.of("transit_time") == []


def test_ages_and_trips_survive_a_restart(chain: Scenario) -> None:
    farm(chain, MilkingStart(asset="tank-1", ts=at(0)))
    truck(chain, pickup(1))
    chain.idle_until(2 * HOUR)
    chain.engine = Engine.restore(chain.engine.plan, chain.engine.snapshot())
    chain.idle_until(7 * HOUR)

    (opened,) = chain.of("transit_time")
    assert opened.deviation.start_ms == at(7 * HOUR)


def test_a_delivery_and_the_next_pickup_in_one_batch_end_the_delivered_loads_exposure(
    chain: Scenario,
) -> None:
    """Each load's exposure is its own trip's: a gateway that sends the delivery and the next
    pickup together (after a link drop, before the stream saw the delivery) still gets the
    delivered load's exposure ended at its delivery, not carried into the next load."""
    truck(chain, pickup(0))
    chain.samples("truck-07", "comp-1", "temp", "degC", [(m * 60, 8.0) for m in range(0, 41)])
    truck(chain, delivery(1), pickup(1.5))
    chain.idle_until(1.5 * HOUR)

    opened, closed = chain.of("temperature_exposure")
    assert (opened.deviation.start_ms, closed.deviation.end_ms) == (at(31 * 60), at(HOUR))


def test_a_load_delivered_after_6_hours_is_a_transit_deviation_even_unseen_by_the_clock(
    chain: Scenario,
) -> None:
    """The trip's limit is on the load, not on when the stream looked: a gateway that sends the
    pickup and a delivery 7 h later together (the stream's clock never saw the 6 h pass) still
    gets the transit deviation, from the limit to the delivery."""
    truck(chain, pickup(0), delivery(7))
    chain.idle_until(7 * HOUR)

    opened, closed = chain.of("transit_time")
    assert (opened.deviation.start_ms, closed.deviation.end_ms) == (at(6 * HOUR), at(7 * HOUR))
