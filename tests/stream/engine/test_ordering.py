"""Order and time across channels, timers and restarts: what a review found wrong, kept right.

Each test is a stream that once gave a wrong verdict; they read as the rules they protect."""

from __future__ import annotations

from milkguard.contract.v1 import CipEnd, CipStart, MilkingEnd, MilkingStart, Reading
from stream.engine import DeviationChange, Engine
from stream.plan import parse_plan
from tests.stream.engine.scenario import at

HTST = """
plan: htst
jurisdiction: US
allowed_lateness_s: {lateness}
assets:
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {{unit: degC, interval_s: 1, ccp: true}}
      fdd_forward: {{unit: state, interval_s: {fdd_interval}, ccp: true}}
rules:
  - {{id: past, kind: htst, asset: htst-1, indicating: hold_temp, flow_diversion: fdd_forward,
     source: "PMO: 72 degC in forward flow"}}
"""


def kinds_of(out: list[DeviationChange], kind: str) -> list[tuple[str, float, float | None]]:
    return [
        (
            c.kind,
            (c.deviation.start_ms - at(0)) / 1000,
            None if c.deviation.end_ms is None else (c.deviation.end_ms - at(0)) / 1000,
        )
        for c in out
        if c.deviation.kind == kind
    ]


def test_a_valve_whose_batches_lag_is_still_joined_at_each_temperature_by_event_time() -> None:
    # divert until 10 s, forward from 10 s; 70 degC from 8 s to 14 s: critical from 10 s to 15 s,
    # even when the valve's batches reach the stream 3 s after the thermometer's
    engine = Engine(parse_plan(HTST.format(lateness=2, fdd_interval=1).encode(), "h.yaml"))
    out: list[DeviationChange] = []
    for t in range(30):
        temp = 70.0 if 8 <= t <= 14 else 75.0
        engine.submit(
            "plant-01", "gw", [Reading("htst-1", "hold_temp", temp, "degC", at(t))], at(t)
        )
        engine.advance(at(t), out)
        if t >= 3:
            valve = Reading(
                "htst-1", "fdd_forward", 1.0 if t - 3 >= 10 else 0.0, "state", at(t - 3)
            )
            engine.submit("plant-01", "plc", [valve], at(t))
            engine.advance(at(t), out)
    engine.flush(out)

    assert kinds_of(out, "htst_temperature") == [("opened", 10.0, None), ("closed", 10.0, 15.0)]


def test_the_valve_is_followed_through_cleaning_so_heating_up_in_divert_is_no_deviation() -> None:
    engine = Engine(parse_plan(HTST.format(lateness=0, fdd_interval=5).encode(), "h.yaml"))
    out: list[DeviationChange] = []
    engine.submit_events(
        "plant-01", [CipStart(asset="htst-1", ts=at(100)), CipEnd(asset="htst-1", ts=at(202))]
    )
    for t in range(260):
        batch = [
            Reading("htst-1", "hold_temp", 75.0 if t < 100 or t >= 235 else 65.0, "degC", at(t))
        ]
        if t % 5 == 0:  # diverted from the cleaning on, forward again at 240 s
            state = 1.0 if t < 100 or t >= 240 else 0.0
            batch.append(Reading("htst-1", "fdd_forward", state, "state", at(t)))
        engine.submit("plant-01", "gw", batch, at(t))
        engine.advance(at(t), out)
    engine.flush(out)

    assert kinds_of(out, "htst_temperature") == []


COOLING = parse_plan(
    b"""
plan: cooling
jurisdiction: US
allowed_lateness_s: 60
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 10, silence_after_s: 3600}
rules:
  - {id: cool, kind: cooling, asset: tank-1, channel: milk_temp,
     deadlines: [{after: milking_end, reach_max: 7.0, within_s: 7200}], blend_max: 10.0,
     severity: major, action: alert, source: "PMO: 7 degC within 2 h; blend 10 degC"}
""",
    "c.yaml",
)


def still_warm_after_milking(engine: Engine, out: list[DeviationChange]) -> None:
    """A milking ended at 0 s; the tank stays at 9 degC, sampled every 10 min, to 6600 s."""
    engine.submit_events(
        "farm-01",
        [MilkingStart(asset="tank-1", ts=at(-3600)), MilkingEnd(asset="tank-1", ts=at(0))],
    )
    for t in range(0, 7200, 600):
        engine.submit("farm-01", "gw", [Reading("tank-1", "milk_temp", 9.0, "degC", at(t))], at(t))
        engine.advance(at(t), out)


def test_a_deadline_met_by_a_sample_arriving_within_the_lateness_is_met() -> None:
    engine = Engine(COOLING)
    out: list[DeviationChange] = []
    still_warm_after_milking(engine, out)
    engine.advance(at(7200) + 1, out)  # just past the deadline, nothing held
    late = Reading("tank-1", "milk_temp", 6.5, "degC", at(7190))  # 30 s late: within 60 s
    engine.submit("farm-01", "gw", [late], at(7220))
    engine.advance(at(7220), out)
    engine.flush(out)

    assert kinds_of(out, "cooling_deadline") == []


def test_the_blend_limit_judges_every_sample_of_a_later_milking_even_after_its_end_event() -> None:
    results = []
    for screen in (True, False):
        engine = Engine(COOLING, screen=screen)
        out: list[DeviationChange] = []
        engine.submit_events(
            "farm-01",
            [MilkingStart(asset="tank-1", ts=at(0)), MilkingEnd(asset="tank-1", ts=at(3600))],
        )
        for t in range(0, 40_000, 10):
            if t == 36_000:
                engine.submit_events("farm-01", [MilkingStart(asset="tank-1", ts=at(t))])
            if t == 39_000:  # the end event arrives before the milking's last samples are judged
                engine.submit_events("farm-01", [MilkingEnd(asset="tank-1", ts=at(t))])
            value = 12.0 if 38_960 <= t < 39_300 else 4.0
            engine.submit(
                "farm-01", "gw", [Reading("tank-1", "milk_temp", value, "degC", at(t))], at(t)
            )
            engine.advance(at(t), out)
        engine.flush(out)
        results.append(kinds_of(out, "blend_temperature"))

    assert results[0] == results[1] == [("opened", 38_960.0, None), ("closed", 38_960.0, 39_000.0)]


def test_a_snapshot_between_submit_and_advance_carries_on_exactly() -> None:
    plan = parse_plan(
        b"""
plan: silo
jurisdiction: CN
allowed_lateness_s: 5
assets:
  silo-1:
    site: plant-01
    kind: silo
    channels:
      temp: {unit: degC, interval_s: 1, silence_after_s: 30}
rules:
  - {id: max, kind: critical_limit, asset: silo-1, channel: temp, max: 6.0, severity: major,
     action: alert, source: "test limit"}
""",
        "s.yaml",
    )

    def run(restart: bool) -> list[tuple[str, float, float | None]]:
        engine = Engine(plan)
        out: list[DeviationChange] = []
        for t in range(11):
            engine.submit("plant-01", "gw", [Reading("silo-1", "temp", 4.0, "degC", at(t))], at(t))
            engine.advance(at(t), out)
        buffered = [Reading("silo-1", "temp", 4.0, "degC", at(t)) for t in range(11, 21)]
        engine.submit("plant-01", "gw", buffered, at(20))
        if restart:
            engine = Engine.restore(plan, engine.snapshot())
        engine.advance(at(20), out)
        engine.submit("plant-01", "gw", [Reading("silo-1", "temp", 50.0, "degC", at(17.5))], at(21))
        engine.advance(at(21), out)
        engine.flush(out)
        return kinds_of(out, "critical_limit")

    assert (
        run(restart=True) == run(restart=False) == [("opened", 17.5, None), ("closed", 17.5, 18.0)]
    )


LOGISTICS = parse_plan(
    b"""
plan: chain
jurisdiction: CN
allowed_lateness_s: 60
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 600, silence_after_s: 86400}
rules:
  - {id: age, kind: storage_age, asset: tank-1, max_age_s: 172800, source: "CN: 48 h"}
  - {id: cool, kind: cooling, asset: tank-1, channel: milk_temp, severity: major,
     action: alert, source: "PMO: 7 degC within 2 h",
     deadlines: [{after: first_milking_start, reach_max: 10.0, within_s: 14400},
                 {after: milking_end, reach_max: 7.0, within_s: 7200}]}
""",
    "l.yaml",
)


def _pickup(hours: float) -> object:
    from milkguard.contract.v1 import Pickup  # noqa: PLC0415 - only here

    return Pickup(
        asset="truck-07",
        ts=at(hours * 3600),
        load_id="L",
        compartment="comp-1",
        volume_l=5000,
        source_site="farm-01",
        source_asset="tank-1",
    )


def test_a_pickup_heard_after_the_next_milking_still_leaves_that_milkings_age_and_deadlines() -> (
    None
):
    engine = Engine(LOGISTICS)
    out: list[DeviationChange] = []
    engine.submit_events("farm-01", [MilkingStart(asset="tank-1", ts=at(0))])
    engine.submit_events("farm-01", [MilkingStart(asset="tank-1", ts=at(12 * 3600))])
    engine.submit_events("truck-07", [_pickup(10)])  # took the 0 h milk; reached us late
    engine.advance(at(61 * 3600), out)

    ages = kinds_of(out, "storage_age")
    assert ages[0] == ("opened", 60 * 3600.0, None)  # 48 h after the 12 h milking
    firsts = [c for c in out if c.deviation.rule_id == "cool.first_milking_start"]
    assert firsts, "the 12 h milking is the first after the pickup: its 4 h deadline applies"


def test_a_deadline_missed_before_the_pickup_is_reported_and_ends_at_the_pickup() -> None:
    engine = Engine(LOGISTICS)
    out: list[DeviationChange] = []
    still_warm_after_milking(engine, out)
    engine.submit_events("truck-07", [_pickup(7225 / 3600)])  # with samples still held
    engine.advance(at(7300), out)

    missed = [c for c in out if c.deviation.rule_id == "cool.milking_end"]
    assert [(c.kind, c.deviation.start_ms, c.deviation.end_ms) for c in missed] == [
        ("opened", at(7200), None),
        ("closed", at(7200), at(7225)),
    ]


def test_samples_from_before_a_delivery_heard_after_it_still_count_to_the_exposure() -> None:
    plan = parse_plan(
        b"""
plan: trip
jurisdiction: company
allowed_lateness_s: 3600
assets:
  comp-1:
    site: truck-07
    kind: truck_compartment
    channels:
      temp: {unit: degC, interval_s: 60, silence_after_s: 86400}
rules:
  - {id: trip, kind: transport, asset: comp-1, channel: temp, exposure_above: 6.0,
     max_exposure_degree_minutes: 60, severity: major, action: reject_load, source: company}
""",
        "t.yaml",
    )
    from milkguard.contract.v1 import Delivery, Pickup  # noqa: PLC0415 - only here

    engine = Engine(plan)
    out: list[DeviationChange] = []
    engine.submit_events(
        "truck-07",
        [
            Pickup(
                asset="truck-07",
                ts=at(0),
                load_id="L",
                compartment="comp-1",
                volume_l=5000,
                source_site="farm-01",
                source_asset="tank-1",
            )
        ],
    )
    engine.submit_events(
        "truck-07",
        [
            Delivery(
                asset="truck-07",
                ts=at(2400),
                load_id="L",
                compartment="comp-1",
                volume_l=5000,
                destination_site="plant-01",
            )
        ],
    )
    trip = [Reading("comp-1", "temp", 8.0, "degC", at(m * 60)) for m in range(41)]
    engine.submit("truck-07", "gw", trip, at(2460))  # the trip's samples, sent after arrival
    engine.advance(at(2460), out)
    engine.flush(out)
    engine.advance(at(2460 + 7200), out)

    assert kinds_of(out, "temperature_exposure") == [
        ("opened", 31 * 60.0, None),
        ("closed", 31 * 60.0, 2400.0),
    ]
