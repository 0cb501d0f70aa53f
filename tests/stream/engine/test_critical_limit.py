"""Critical limits judged on event time, as a HACCP plan states them."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange
from tests.stream.engine.scenario import Scenario, at

PLAN = """
plan: test
jurisdiction: CN
allowed_lateness_s: 0
assets:
  comp-1:
    site: truck-07
    kind: truck_compartment
    channels:
      temp: {unit: degC, interval_s: 10, ccp: true}
  htst-1:
    site: plant-01
    kind: htst
    channels:
      hold_temp: {unit: degC, interval_s: 1, ccp: true}
rules:
  - id: transport-2-6
    kind: critical_limit
    ccp: CCP-2
    asset: comp-1
    channel: temp
    min: 2.0
    max: 6.0
    sustained_s: 30
    severity: major
    action: reject_load
    source: "GB 31605: cold chain 2-6 degC"
  - id: htst-72
    kind: critical_limit
    ccp: CCP-PAST-1
    asset: htst-1
    channel: hold_temp
    min: 72.0
    severity: critical
    action: divert
    source: "PMO: 72 degC for 15 s"
"""


@pytest.fixture
def scenario() -> Scenario:
    return Scenario(PLAN)


def truck(scenario: Scenario, points: list[tuple[float, float]]) -> list[DeviationChange]:
    scenario.samples("truck-07", "comp-1", "temp", "degC", points)
    scenario.finish()
    return scenario.of("critical_limit")


def test_an_excursion_shorter_than_the_sustained_time_raises_no_deviation(
    scenario: Scenario,
) -> None:
    assert truck(scenario, [(0, 4.0), (10, 6.5), (20, 7.0), (30, 5.0)]) == []


def test_a_sustained_breach_opens_at_its_first_sample_and_closes_when_back_within(
    scenario: Scenario,
) -> None:
    changes = truck(
        scenario, [(0, 4.0), (10, 6.5), (20, 7.5), (30, 8.0), (40, 7.0), (50, 6.0), (60, 5.0)]
    )

    assert [c.kind for c in changes] == ["opened", "closed"]
    opened, closed = changes[0].deviation, changes[1].deviation
    assert opened.start_ms == at(10)  # the excursion's first sample, not the detection
    assert opened.detected_ms == at(40)  # 30 s of breach seen at the 40 s sample
    assert opened.status == "open"
    assert opened.end_ms is None
    assert closed.status == "closed"
    # 6.0 is within a max of 6.0: the breach ends at the 50 s sample
    assert closed.end_ms == at(50)
    assert closed.time_beyond_s == 40.0
    assert closed.peak == 8.0
    # excess held per sample: 0.5*10 + 1.5*10 + 2.0*10 + 1.0*10 = 50 degC*s
    assert closed.degree_minutes == pytest.approx(50 / 60)
    assert closed.id == opened.id
    assert not closed.detected_late


def test_a_low_temperature_breach_reports_the_lowest_value_as_its_peak(
    scenario: Scenario,
) -> None:
    changes = truck(scenario, [(0, 3.0), (10, 1.5), (20, 0.8), (40, 1.2), (50, 2.5)])

    closed = changes[-1].deviation
    assert closed.peak == 0.8
    assert closed.limit.min == 2.0


def test_a_ccp_critical_limit_opens_at_the_first_sample_below_it_without_averaging(
    scenario: Scenario,
) -> None:
    scenario.samples(
        "plant-01", "htst-1", "hold_temp", "degC", [(0, 72.5), (1, 72.4), (2, 71.9), (3, 72.6)]
    )
    scenario.finish()

    changes = scenario.of("critical_limit")
    assert [c.kind for c in changes] == ["opened", "closed"]
    deviation = changes[0].deviation
    assert deviation.start_ms == deviation.detected_ms == at(2)
    assert deviation.severity == "critical"
    assert deviation.action == "divert"
    assert changes[1].deviation.end_ms == at(3)


def test_a_deviation_carries_the_plan_version_rule_ccp_jurisdiction_and_limit_source(
    scenario: Scenario,
) -> None:
    changes = truck(scenario, [(0, 9.0), (30, 9.0)])

    d = changes[0].deviation
    assert d.plan == "test"
    assert d.plan_version == scenario.engine.plan.version
    assert (d.rule_id, d.kind, d.ccp, d.jurisdiction) == (
        "transport-2-6",
        "critical_limit",
        "CCP-2",
        "CN",
    )
    assert (d.site, d.asset, d.channels, d.device) == ("truck-07", "comp-1", ["temp"], "gw")
    assert d.limit.source.startswith("GB 31605")


def test_readings_in_one_batch_are_judged_in_event_time_order(scenario: Scenario) -> None:
    shuffled = [
        Reading("comp-1", "temp", v, "degC", at(s))
        for s, v in [(40, 5.0), (0, 8.0), (30, 8.5), (10, 8.0)]
    ]

    scenario.send("truck-07", shuffled)
    scenario.finish()

    changes = scenario.of("critical_limit")
    assert [c.kind for c in changes] == ["opened", "closed"]
    assert changes[0].deviation.start_ms == at(0)
    assert changes[1].deviation.end_ms == at(40)


def test_a_reading_older_than_what_its_channel_judged_is_counted_late_not_judged(
    scenario: Scenario,
) -> None:
    assert truck(scenario, [(0, 4.0), (20, 4.0), (10, 9.0)]) == []
    assert scenario.engine.counters.late == 1
    assert scenario.engine.counters.judged == 2


def test_readings_of_channels_not_in_the_plan_are_counted_as_unplanned(
    scenario: Scenario,
) -> None:
    scenario.send("truck-07", [Reading("comp-9", "temp", 30.0, "degC", at(0))])

    assert scenario.engine.counters.unplanned == 1
    assert scenario.engine.take_notices()[0].kind == "unplanned"


def test_a_reading_in_another_unit_than_the_plans_is_returned_not_judged(
    scenario: Scenario,
) -> None:
    wrong = Reading("comp-1", "temp", 45.0, "%", at(0))

    mismatches = scenario.send("truck-07", [wrong])

    assert [(m.reading, m.expected) for m in mismatches] == [(wrong, "degC")]
    assert scenario.engine.counters.judged == 0


def test_a_deviation_still_open_is_listed_as_open(scenario: Scenario) -> None:
    truck(scenario, [(0, 9.0), (30, 9.5)])

    (still_open,) = [d for d in scenario.engine.open_deviations() if d.kind == "critical_limit"]
    assert still_open.status == "open"
    assert still_open.peak == 9.5
