"""Farm bulk tank cooling as the PMO states it: <= 10 degC within 4 h of the start of the first
milking, <= 7 degC within 2 h after the end of milking, and the blend <= 10 degC at every later
milking. Deadlines fire at the deadline, not at the next sample."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import Event, MilkingEnd, MilkingStart, Pickup, Reading
from stream.engine import Engine
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: farm
jurisdiction: US
allowed_lateness_s: 60
assets:
  tank-1:
    site: farm-01
    kind: bulk_tank
    channels:
      milk_temp: {unit: degC, interval_s: 60, ccp: true}
rules:
  - id: pmo-cooling
    kind: cooling
    ccp: CCP-FARM-1
    asset: tank-1
    channel: milk_temp
    deadlines:
      - {after: first_milking_start, reach_max: 10.0, within_s: 14400}
      - {after: milking_end, reach_max: 7.0, within_s: 7200}
    blend_max: 10.0
    severity: major
    action: alert
    source: "PMO: 10 degC within 4 h of the first milking's start, 7 degC within 2 h of its end"
"""

HOUR = 3600


@pytest.fixture
def farm() -> Scenario:
    return Scenario(PLAN)


def events(farm: Scenario, *happened: Event) -> None:
    farm.engine.submit_events("farm-01", list(happened))


def temps(farm: Scenario, start_s: int, end_s: int, value_at: object) -> None:
    for second in range(start_s, end_s, 60):
        value = value_at(second)  # type: ignore[operator]
        farm.send("farm-01", [Reading("tank-1", "milk_temp", value, "degC", at(second))])


def test_a_tank_cooled_in_time_raises_nothing(farm: Scenario) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)))
    events(farm, MilkingEnd(asset="tank-1", ts=at(2 * HOUR)))
    # 30 degC falling steadily: 10 degC by ~2.2 h, 7 degC by ~3.5 h (end + 1.5 h)
    temps(farm, 0, 5 * HOUR, lambda s: max(4.0, 30 - s / HOUR * 9))
    farm.finish()

    assert farm.of("cooling_deadline") == []


def test_missing_the_4_hour_deadline_opens_at_the_deadline_not_at_the_next_sample(
    farm: Scenario,
) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)))
    temps(farm, 0, 5 * HOUR, lambda s: 12.0 if s < 5 * HOUR - 60 else 9.5)
    temps(farm, 5 * HOUR, 5 * HOUR + 120, lambda s: 9.5)
    farm.finish()

    opened, closed = farm.of("cooling_deadline")
    assert opened.deviation.rule_id == "pmo-cooling.first_milking_start"
    assert opened.deviation.start_ms == at(4 * HOUR)  # the deadline itself
    assert opened.deviation.limit.max == 10.0
    assert closed.deviation.end_ms == at(5 * HOUR - 60)  # the first sample at or below 10
    assert closed.deviation.peak == 12.0


def test_the_deadline_fires_at_the_deadline_even_if_no_sample_comes(farm: Scenario) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)))
    temps(farm, 0, 3 * HOUR, lambda s: 12.0)  # then the probe's gateway goes silent

    farm.idle_until(4 * HOUR + 30)  # within the allowed lateness, a sample may still come
    assert farm.of("cooling_deadline") == []
    farm.idle_until(4 * HOUR + 120)

    (opened,) = farm.of("cooling_deadline")
    assert opened.deviation.start_ms == at(4 * HOUR)
    assert [c.kind for c in farm.of("monitoring_lost")] == ["opened"]


def test_the_blend_must_stay_at_or_below_10_degrees_at_a_later_milking(farm: Scenario) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)), MilkingEnd(asset="tank-1", ts=at(HOUR)))
    temps(farm, 0, 12 * HOUR, lambda s: 4.0)
    events(farm, MilkingStart(asset="tank-1", ts=at(12 * HOUR)))
    temps(farm, 12 * HOUR, 12 * HOUR + 600, lambda s: 10.8)  # the warm milk raises the blend
    events(farm, MilkingEnd(asset="tank-1", ts=at(12 * HOUR + 600)))
    temps(farm, 12 * HOUR + 600, 13 * HOUR, lambda s: 6.0)
    farm.finish()

    opened, closed = farm.of("blend_temperature")
    assert opened.deviation.start_ms == at(12 * HOUR)
    assert closed.deviation.end_ms == at(12 * HOUR + 600)


def test_a_pickup_empties_the_tank_so_the_next_milking_is_a_first_one(farm: Scenario) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)), MilkingEnd(asset="tank-1", ts=at(HOUR)))
    temps(farm, 0, 10 * HOUR, lambda s: 4.0)
    farm.engine.submit_events(
        "truck-07",
        [
            Pickup(
                asset="comp-1",
                ts=at(10 * HOUR),
                load_id="L1",
                compartment="comp-1",
                volume_l=5000,
                source_site="farm-01",
                source_asset="tank-1",
            )
        ],
    )
    events(farm, MilkingStart(asset="tank-1", ts=at(12 * HOUR)))
    temps(farm, 10 * HOUR, 13 * HOUR, lambda s: 4.0 if s < 12 * HOUR else 25.0)
    farm.finish()

    assert farm.of("blend_temperature") == []  # a first milking: no blend, its own deadline
    assert farm.engine.counters.late_events == 0


def test_pending_deadlines_survive_a_restart(farm: Scenario) -> None:
    events(farm, MilkingStart(asset="tank-1", ts=at(0)))
    temps(farm, 0, 2 * HOUR, lambda s: 12.0)
    farm.engine = Engine.restore(farm.engine.plan, farm.engine.snapshot())
    temps(farm, 2 * HOUR, 5 * HOUR, lambda s: 12.0)
    farm.finish()

    (opened,) = farm.of("cooling_deadline")
    assert opened.deviation.start_ms == at(4 * HOUR)
