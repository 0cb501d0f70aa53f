"""Tank contents: the storage age follows the milk, not the event.

CN: raw milk stored no longer than 48 h "in principle", counted from the oldest milking still in
the tank; EU 853/2004 Annex III Section IX Chapter I, II.B: the bulk tank is cooled after each
milking, and nothing there empties a tank at a pickup that leaves milk behind. A pickup takes its
volume; what remains keeps the age of the oldest milk in it (an agitated tank mixes it); a
pickup that leaves no more than the tank's heel empties it. PMO Item 12p: a plant's storage
tanks (silos) emptied at least every 72 hours.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from milkguard.contract.v1 import (
    Draw,
    Event,
    MilkingEnd,
    MilkingStart,
    Reading,
    Receipt,
    RunEnd,
    RunStart,
    SiloEmptied,
    SiloTransfer,
)
from stream.engine import Engine
from stream.plan import PlanError, parse_plan
from tests.stream.engine.scenario import Scenario, at
from tests.stream.engine.test_logistics import HOUR, delivery, pickup

FARM = """
plan: contents
jurisdiction: CN
allowed_lateness_s: 0
silence_factor: 1000
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    heel_l: 200
    channels:
      milk_temp: {unit: degC, interval_s: 600}
  tank-2:
    site: farm-01
    kind: bulk_tank
    heel_l: 100
    volume_channel: level
    channels:
      milk_temp: {unit: degC, interval_s: 600}
      level: {unit: L, interval_s: 600}
  comp-1:
    site: truck-07
    kind: truck_compartment
    channels:
      temp: {unit: degC, interval_s: 60}
rules:
  - {id: tank-age, kind: storage_age, asset: tank-1, max_age_s: 172800,
     source: "CN: raw milk stored <= 48 h from the oldest milking, in principle"}
  - {id: gauged-age, kind: storage_age, asset: tank-2, max_age_s: 172800,
     source: "CN: raw milk stored <= 48 h from the oldest milking, in principle"}
  - {id: load-age, kind: storage_age, asset: comp-1, max_age_s: 172800,
     source: "CN: raw milk <= 48 h from the oldest milking, in principle"}
  - {id: trip, kind: transport, asset: comp-1, channel: temp, max_transit_s: 21600,
     severity: major, action: reject_load, source: "company: 6 h door to door"}
  - id: cooling
    kind: cooling
    asset: tank-1
    channel: milk_temp
    deadlines: [{after: first_milking_start, reach_max: 10.0, within_s: 14400}]
    blend_max: 10.0
    severity: major
    action: alert
    source: "PMO Item 18r: <= 10 degC within 4 h of the first milking; blend <= 10 degC"
"""


@pytest.fixture
def farm() -> Scenario:
    return Scenario(FARM)


def at_farm(chain: Scenario, *events: Event) -> None:
    chain.engine.submit_events("farm-01", list(events))


def on_truck(chain: Scenario, *events: Event) -> None:
    chain.engine.submit_events("truck-07", list(events))


def milking(tank: str, start_h: float, volume_l: float | None = 3000.0) -> list[Event]:
    """A one-hour milking into ``tank`` (``volume_l`` None: it reports no volume)."""
    return [
        MilkingStart(asset=tank, ts=at(start_h * HOUR)),
        MilkingEnd(asset=tank, ts=at((start_h + 1) * HOUR), volume_l=volume_l),
    ]


def ages(chain: Scenario, asset: str) -> list[tuple[str, int, int | None]]:
    """(opened/closed, start, end) of the storage-age deviations of one asset."""
    return [
        (c.kind, c.deviation.start_ms, c.deviation.end_ms)
        for c in chain.of("storage_age")
        if c.deviation.asset == asset
    ]


# ------------------------------------------------------------------------------ farm tanks


def test_a_partial_pickup_keeps_the_age_of_the_oldest_milking_running(farm: Scenario) -> None:
    """Two thirds taken at 20 h: the heel still holds the milking of 0 h, mixed with the rest;
    the 48 h run from 0 h, not from the pickup, until a pickup takes the lot at 50 h."""
    at_farm(farm, *milking("tank-1", 0), *milking("tank-1", 12))
    on_truck(farm, pickup(20, 4000), delivery(22, 4000))
    at_farm(farm, *milking("tank-1", 24))
    farm.idle_until(47.9 * HOUR)
    assert ages(farm, "tank-1") == []
    farm.idle_until(49 * HOUR)
    on_truck(farm, pickup(50, 5000))  # 2000 L left at 20 h + 3000 L at 24 h: all of it
    farm.idle_until(51 * HOUR)

    assert ages(farm, "tank-1") == [
        ("opened", at(48 * HOUR), None),
        ("closed", at(48 * HOUR), at(50 * HOUR)),
    ]
    # the truck took the heel's oldest milk at 50 h: its load is too old from 48 h on
    assert ages(farm, "comp-1") == [("opened", at(48 * HOUR), None)]


def test_a_full_pickup_ends_the_age_and_the_next_milking_starts_it_again(
    farm: Scenario,
) -> None:
    at_farm(farm, *milking("tank-1", 0), *milking("tank-1", 12))
    on_truck(farm, pickup(20, 6000), delivery(22, 6000))
    at_farm(farm, *milking("tank-1", 24))
    farm.idle_until(71.9 * HOUR)
    assert ages(farm, "tank-1") == []
    farm.idle_until(72 * HOUR)

    assert ages(farm, "tank-1") == [("opened", at(72 * HOUR), None)]


def test_a_tank_that_always_keeps_a_heel_above_heel_l_raises_at_its_oldest_milking_plus_48_h(
    farm: Scenario,
) -> None:
    """Each pickup leaves 300 L, more than the 200 L heel: the tank is never empty, and the
    milk of its first milking is in it, mixed, for ever."""
    for day in range(3):
        at_farm(farm, *milking("tank-1", day * 24), *milking("tank-1", day * 24 + 12))
        taken = 5700 if day == 0 else 6000  # 6000 in, leaving 300; then 6300 in, leaving 300
        on_truck(farm, pickup(day * 24 + 20, taken), delivery(day * 24 + 22, taken))
    farm.idle_until(47.9 * HOUR)
    assert ages(farm, "tank-1") == []
    farm.idle_until(72 * HOUR)

    assert ages(farm, "tank-1") == [("opened", at(48 * HOUR), None)]


@pytest.mark.parametrize(
    ("reported", "taken"),
    [
        (3000.0, 5850.0),  # 150 L left in the outlet and the bottom: below the 200 L heel
        (3000.0, 9000.0),  # a meter reading more than the tank held: nothing left, not minus
        (None, 10.0),  # milkings that report no volume: every pickup empties it, as before
    ],
    ids=["below-the-heel", "more-than-it-held", "volumes-unknown"],
)
def test_a_pickup_that_leaves_no_more_than_the_heel_empties_the_tank(
    farm: Scenario, reported: float | None, taken: float
) -> None:
    at_farm(farm, *milking("tank-1", 0, reported), *milking("tank-1", 12, reported))
    on_truck(farm, pickup(20, taken), delivery(22, taken))
    at_farm(farm, *milking("tank-1", 24, reported))
    farm.idle_until(71.9 * HOUR)

    assert ages(farm, "tank-1") == []


def test_a_pickup_during_a_milking_whose_volume_is_not_known_yet_empties_the_tank(
    farm: Scenario,
) -> None:
    at_farm(farm, *milking("tank-1", 0), MilkingStart(asset="tank-1", ts=at(12 * HOUR)))
    on_truck(farm, pickup(12.5, 100))
    at_farm(farm, *milking("tank-1", 24))
    farm.idle_until(71.9 * HOUR)

    assert ages(farm, "tank-1") == []


def test_a_milking_into_a_heel_is_no_first_milking_its_blend_is_judged(farm: Scenario) -> None:
    """PMO Item 18r: the blend of a later milking stays <= 10 degC. A pickup that leaves milk
    leaves cold milk for the next milking to blend into: the 4 h first-milking grace does not
    start again."""
    at_farm(farm, *milking("tank-1", 0))
    farm.samples("farm-01", "tank-1", "milk_temp", "degC", [(2 * HOUR, 4.0)])
    on_truck(farm, pickup(10, 2000), delivery(11, 2000))
    at_farm(farm, *milking("tank-1", 12))
    farm.samples(
        "farm-01", "tank-1", "milk_temp", "degC", [(12.5 * HOUR, 12.0), (12.75 * HOUR, 8.0)]
    )

    (opened, closed) = farm.of("blend_temperature")
    assert (opened.deviation.start_ms, closed.deviation.end_ms) == (
        at(12.5 * HOUR),
        at(12.75 * HOUR),
    )
    assert farm.of("cooling_deadline") == []


def test_after_a_full_pickup_the_next_milking_is_a_first_one_again(farm: Scenario) -> None:
    at_farm(farm, *milking("tank-1", 0))
    farm.samples("farm-01", "tank-1", "milk_temp", "degC", [(2 * HOUR, 4.0)])
    on_truck(farm, pickup(10, 3000), delivery(11, 3000))
    at_farm(farm, *milking("tank-1", 12))
    farm.samples(
        "farm-01", "tank-1", "milk_temp", "degC", [(12.5 * HOUR, 12.0), (13.5 * HOUR, 8.0)]
    )

    assert farm.of("blend_temperature") == []
    assert farm.of("cooling_deadline") == []


# ------------------------------------------------------------------------------ level gauge


def level(chain: Scenario, points: list[tuple[float, float]]) -> None:
    chain.samples("farm-01", "tank-2", "level", "L", [(h * HOUR, v) for h, v in points])


def test_a_level_gauge_tells_what_a_pickup_left_where_milkings_report_no_volume(
    farm: Scenario,
) -> None:
    """What was in: the highest level since the last pickup (3000 L, whatever the readings while
    pumping showed); the pickup took 2000 L: 1000 L left, more than the 100 L heel."""
    at_farm(farm, *milking("tank-2", 0, None))
    level(farm, [(0.5, 1500.0), (1, 3000.0), (10, 3000.0), (19.9, 1800.0)])
    on_truck(farm, pickup(20, 2000, tank="tank-2"), delivery(22, 2000))
    level(farm, [(20.1, 1000.0)])
    at_farm(farm, *milking("tank-2", 24, None))
    level(farm, [(25, 4000.0)])
    farm.idle_until(47.9 * HOUR)
    assert ages(farm, "tank-2") == []
    farm.idle_until(48 * HOUR)
    assert ages(farm, "tank-2") == [("opened", at(48 * HOUR), None)]
    # the next pickup takes 3950 L of the 4000 L the gauge showed: 50 L, below the heel
    on_truck(farm, pickup(49, 3950, tank="tank-2"))
    farm.idle_until(50 * HOUR)

    assert ages(farm, "tank-2")[-1] == ("closed", at(48 * HOUR), at(49 * HOUR))


def test_a_level_gauge_reading_from_before_a_pickup_does_not_count_for_the_next(
    farm: Scenario,
) -> None:
    """Readings of the pumping that reach the stream after the pickup event are no heel."""
    at_farm(farm, *milking("tank-2", 0, None))
    level(farm, [(1, 3000.0)])
    on_truck(farm, pickup(20, 3000, tank="tank-2"), delivery(22, 3000))
    level(farm, [(19.99, 3000.0), (20.1, 0.0)])  # judged after the pickup: before it in time
    at_farm(farm, *milking("tank-2", 24, None))
    level(farm, [(25, 2500.0)])
    on_truck(farm, pickup(30, 2500, tank="tank-2"))
    at_farm(farm, *milking("tank-2", 36, None))
    farm.idle_until(83.9 * HOUR)

    assert ages(farm, "tank-2") == []


def test_a_late_level_reading_is_counted_not_re_judged(farm: Scenario) -> None:
    """The books take events and gauge readings as they come: a reading that comes after its
    channel was judged past it cannot move a pickup already booked, and says so."""
    level(farm, [(1, 3000.0), (2, 3000.0)])
    farm.send("farm-01", [Reading("tank-2", "level", 5000.0, "L", at(1.5 * HOUR))])

    assert farm.engine.counters.late_unrejudged == 1


# ------------------------------------------------------------------------------ compartments


def test_a_partial_delivery_leaves_the_rest_aboard_with_its_age_and_its_trip(
    farm: Scenario,
) -> None:
    """A load split between two plants: 4000 of 6000 L delivered at 5 h; the 2000 L still
    aboard is still on the road (6 h transit from the pickup at 0 h) and as old as its oldest
    milk."""
    at_farm(farm, *milking("tank-1", -40))
    on_truck(farm, pickup(0, 3000))
    on_truck(farm, delivery(5, 2000))
    farm.idle_until(6 * HOUR)
    assert [(c.kind, c.deviation.start_ms) for c in farm.of("transit_time")] == [
        ("opened", at(6 * HOUR))
    ]
    farm.idle_until(7.5 * HOUR)
    on_truck(farm, delivery(8.5, 1000))
    farm.idle_until(9 * HOUR)

    assert [c.deviation.end_ms for c in farm.of("transit_time")] == [None, at(8.5 * HOUR)]
    assert ages(farm, "comp-1") == [
        ("opened", at(8 * HOUR), None),
        ("closed", at(8 * HOUR), at(8.5 * HOUR)),
    ]


# ------------------------------------------------------------------------------ snapshots


def _without_books(snapshot: bytes) -> bytes:
    """A snapshot as the engine wrote it before the books: no contents, no planned draws."""
    raw: dict[str, Any] = msgspec.msgpack.decode(snapshot)
    for field in ("ages", "cooling", "transports"):
        for state in raw[field]:
            state.pop("contents", None)
            state.pop("planned", None)
    return msgspec.msgpack.encode(raw)


@pytest.mark.parametrize(
    ("old", "opens_h"),
    [
        (False, 48),  # the books say 1000 L of the 3000 L stayed: the 0 h milking is in it
        (True, 60),  # no books: unknown contents, the pickup empties the tank as it used to
    ],
)
def test_a_snapshot_from_before_the_books_restores_with_unknown_contents(
    farm: Scenario, old: bool, opens_h: float
) -> None:
    at_farm(farm, *milking("tank-1", 0))
    farm.idle_until(2 * HOUR)
    snapshot = farm.engine.snapshot()
    farm.engine = Engine.restore(farm.engine.plan, _without_books(snapshot) if old else snapshot)
    on_truck(farm, pickup(10, 2000), delivery(11, 2000))
    at_farm(farm, *milking("tank-1", 12))
    farm.idle_until(70 * HOUR)

    assert ages(farm, "tank-1")[0] == ("opened", at(opens_h * HOUR), None)


def test_a_snapshot_keeps_the_books(farm: Scenario) -> None:
    at_farm(farm, *milking("tank-1", 0))
    on_truck(farm, pickup(10, 2000), delivery(11, 2000))
    farm.idle_until(12 * HOUR)
    farm.engine = Engine.restore(farm.engine.plan, farm.engine.snapshot())
    on_truck(farm, pickup(20, 900))  # 1000 - 900 = 100 L, below the 200 L heel: empty
    at_farm(farm, *milking("tank-1", 24))
    farm.idle_until(71.9 * HOUR)

    assert ages(farm, "tank-1") == []


# ------------------------------------------------------------------------------ plan errors


def test_a_volume_channel_must_be_a_channel_of_litres() -> None:
    bad = FARM.replace("volume_channel: level", "volume_channel: milk_temp")
    with pytest.raises(PlanError, match=r"volume_channel 'milk_temp' has unit 'degC'"):
        parse_plan(bad.encode(), "plan.yaml")
    missing = FARM.replace("volume_channel: level", "volume_channel: gauge")
    with pytest.raises(PlanError, match=r"volume_channel 'gauge' is not one of the asset's"):
        parse_plan(missing.encode(), "plan.yaml")


# ------------------------------------------------------------------------------ silos

PLANT = """
plan: silos
extends: us-pmo
allowed_lateness_s: 0
silence_factor: 1000
assets:
  silo-1:
    site: plant-01
    kind: silo
    heel_l: 500
    channels:
      temp: {unit: degC, interval_s: 600}
  silo-2:
    site: plant-01
    kind: silo
    channels:
      temp: {unit: degC, interval_s: 600}
rules: []
"""


@pytest.fixture
def plant() -> Scenario:
    return Scenario(PLANT)


def at_plant(chain: Scenario, *events: Event) -> None:
    chain.engine.submit_events("plant-01", list(events))


def receipt(hours: float, silo: str, volume_l: float) -> Receipt:
    return Receipt(
        asset="bay-1", ts=at(hours * HOUR), load_id=f"L{hours:g}", destination=silo,
        volume_l=volume_l,
    )  # fmt: skip


def run(start_h: float, end_h: float, planned: float | None, taken: float | None) -> list[Event]:
    """A run on line-1 drawing from silo-1: its start plans ``planned``, its end took
    ``taken`` (None: the end names the silo with no volume, the plan stands)."""
    return [
        RunStart(
            asset="line-1", ts=at(start_h * HOUR), run_id=f"R{start_h:g}",
            sources=(Draw("silo-1", planned),),
        ),
        RunEnd(
            asset="line-1", ts=at(end_h * HOUR), run_id=f"R{start_h:g}",
            sources=(Draw("silo-1", taken),),
        ),
    ]  # fmt: skip


def test_pmo_a_silo_not_emptied_within_72_hours_of_its_first_fill_is_a_deviation(
    plant: Scenario,
) -> None:
    """PMO Item 12p: receipts at 0 h and 48 h, a run that draws 45,000 of the 50,000 L (5000 L
    left, above the 500 L heel): the silo has not been empty since 0 h; 72 h on it is a
    deviation, ended when the silo is emptied at 80 h."""
    at_plant(plant, receipt(0, "silo-1", 30_000), receipt(48, "silo-1", 20_000))
    at_plant(plant, *run(49, 50, 45_000, 45_000))
    plant.idle_until(71.9 * HOUR)
    assert ages(plant, "silo-1") == []
    plant.idle_until(72 * HOUR)
    at_plant(plant, SiloEmptied(asset="silo-1", ts=at(80 * HOUR), reason="processed"))
    plant.idle_until(81 * HOUR)

    assert ages(plant, "silo-1") == [
        ("opened", at(72 * HOUR), None),
        ("closed", at(72 * HOUR), at(80 * HOUR)),
    ]
    (opened, _) = plant.of("storage_age")
    assert opened.deviation.rule_id == "us-pmo.silo-1.silo-emptied"
    assert "PMO Item 12p" in opened.deviation.limit.source
    assert opened.deviation.action == "hold_lot"


def test_pmo_a_silo_drawn_down_to_its_heel_by_runs_and_a_transfer_is_empty(
    plant: Scenario,
) -> None:
    """A run's end that names no volume books what its start planned; a transfer out takes the
    rest: the silo is empty at 30 h and its 72 h start again at the next receipt."""
    at_plant(plant, receipt(0, "silo-1", 30_000))
    at_plant(plant, *run(10, 12, 20_000, None))
    at_plant(plant, SiloTransfer(asset="silo-1", ts=at(30 * HOUR), destination="silo-2",
                                 volume_l=9_800))  # fmt: skip
    at_plant(plant, receipt(40, "silo-1", 25_000))
    plant.idle_until(111.9 * HOUR)

    assert ages(plant, "silo-1") == []
    # silo-2's clock starts at its first fill (the transfer at 30 h), not at the age of the milk
    # the transfer brought (accepted at 0 h): the rule is on emptying the vessel
    assert ages(plant, "silo-2") == [("opened", at(102 * HOUR), None)]


def test_a_run_that_draws_less_than_the_silo_holds_leaves_it_filled(plant: Scenario) -> None:
    at_plant(plant, receipt(0, "silo-1", 30_000))
    at_plant(plant, *run(10, 12, 30_000, 20_000))  # the end's volume replaces the plan
    plant.idle_until(72 * HOUR)

    assert ages(plant, "silo-1") == [("opened", at(72 * HOUR), None)]


def test_events_of_a_silo_the_plan_does_not_know_change_nothing(plant: Scenario) -> None:
    at_plant(plant, receipt(0, "silo-9", 30_000))
    at_plant(plant, SiloTransfer(asset="silo-9", ts=at(HOUR), destination="silo-8",
                                 volume_l=1_000))  # fmt: skip
    at_plant(plant, SiloEmptied(asset="silo-9", ts=at(2 * HOUR)))
    plant.idle_until(100 * HOUR)

    assert plant.of("storage_age") == []
    assert plant.engine.counters.unplanned_events == 3


def test_a_silo_whose_draws_are_not_known_is_not_taken_for_empty(plant: Scenario) -> None:
    """A run that names neither a planned nor a taken volume: the books do not know what is left;
    a silo is only empty when its books or a silo_emptied say so (the conservative reading)."""
    at_plant(plant, receipt(0, "silo-1", 30_000))
    at_plant(plant, *run(10, 12, None, None))
    at_plant(plant, *run(20, 22, None, None))
    plant.idle_until(72 * HOUR)

    assert ages(plant, "silo-1") == [("opened", at(72 * HOUR), None)]


def test_the_eu_profile_sets_no_silo_age() -> None:
    """EU 853/2004 sets no limit on how long a silo may go without being emptied."""
    loaded = parse_plan(PLANT.replace("extends: us-pmo", "extends: eu-853").encode(), "p.yaml")
    assert [r for r in loaded.plan.rules if r.kind == "storage_age"] == []


def test_a_silo_rule_describes_itself_by_its_first_fill() -> None:
    loaded = parse_plan(PLANT.encode(), "p.yaml")
    (rule,) = [r for r in loaded.plan.rules if r.kind == "storage_age" and r.asset == "silo-1"]

    assert rule.describe("h") == "emptied within 72 h of its first fill"
