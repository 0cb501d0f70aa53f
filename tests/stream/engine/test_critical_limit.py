"""Critical limits judged on event time, as a HACCP plan states them."""

from __future__ import annotations

import pytest

from milkguard.contract.v1 import Reading
from stream.engine import DeviationChange, RuleEngine
from stream.plan import parse_plan
from tests.conftest import T0

PLAN = b"""
plan: test
jurisdiction: CN
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
      flow: {unit: L/h, interval_s: 1}
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
def engine() -> RuleEngine:
    return RuleEngine(parse_plan(PLAN, "test.yaml"))


def truck(engine: RuleEngine, samples: list[tuple[int, float]]) -> list[DeviationChange]:
    """Feed compartment temperatures at (seconds after T0, value); return what changed."""
    out: list[DeviationChange] = []
    for seconds, value in samples:
        reading = Reading("comp-1", "temp", value, "degC", T0 + seconds * 1000)
        engine.judge("truck-07", "truck-07-gw", [reading], out)
    return out


def test_an_excursion_shorter_than_the_sustained_time_raises_no_deviation(
    engine: RuleEngine,
) -> None:
    changes = truck(engine, [(0, 4.0), (10, 6.5), (20, 7.0), (30, 5.0)])

    assert changes == []


def test_a_sustained_breach_opens_at_its_first_sample_and_closes_when_back_within(
    engine: RuleEngine,
) -> None:
    changes = truck(
        engine, [(0, 4.0), (10, 6.5), (20, 7.5), (30, 8.0), (40, 7.0), (50, 6.0), (60, 5.0)]
    )

    assert [c.kind for c in changes] == ["opened", "closed"]
    opened, closed = changes[0].deviation, changes[1].deviation
    assert opened.start_ms == T0 + 10_000  # the excursion's first sample, not the detection
    assert opened.detected_ms == T0 + 40_000  # 30 s of breach seen at the 40 s sample
    assert opened.status == "open"
    assert opened.end_ms is None
    assert closed.status == "closed"
    # 6.0 is within a max of 6.0: the breach ends at the 50 s sample
    assert closed.end_ms == T0 + 50_000
    assert closed.time_beyond_s == 40.0
    assert closed.peak == 8.0
    # excess held per sample: 0.5*10 + 1.5*10 + 2.0*10 + 1.0*10 = 50 degC*s
    assert closed.degree_minutes == pytest.approx(50 / 60)
    assert closed.id == opened.id


def test_a_low_temperature_breach_reports_the_lowest_value_as_its_peak(
    engine: RuleEngine,
) -> None:
    changes = truck(engine, [(0, 3.0), (10, 1.5), (20, 0.8), (40, 1.2), (50, 2.5)])

    closed = changes[-1].deviation
    assert closed.peak == 0.8
    assert closed.limit.min == 2.0


def test_a_ccp_critical_limit_opens_at_the_first_sample_below_it_without_averaging(
    engine: RuleEngine,
) -> None:
    out: list[DeviationChange] = []
    temps = [72.5, 72.4, 71.9, 72.6]
    readings = [
        Reading("htst-1", "hold_temp", t, "degC", T0 + i * 1000) for i, t in enumerate(temps)
    ]

    engine.judge("plant-01", "htst-gw", readings, out)

    assert [c.kind for c in out] == ["opened", "closed"]
    deviation = out[0].deviation
    assert deviation.start_ms == deviation.detected_ms == T0 + 2000
    assert deviation.severity == "critical"
    assert deviation.action == "divert"
    assert out[1].deviation.end_ms == T0 + 3000


def test_a_deviation_carries_the_plan_version_rule_ccp_jurisdiction_and_limit_source(
    engine: RuleEngine,
) -> None:
    changes = truck(engine, [(0, 9.0), (30, 9.0)])

    d = changes[0].deviation
    assert d.plan == "test"
    assert d.plan_version == engine.plan.version
    assert (d.rule_id, d.ccp, d.jurisdiction) == ("transport-2-6", "CCP-2", "CN")
    assert (d.site, d.asset, d.channels, d.device) == (
        "truck-07",
        "comp-1",
        ["temp"],
        "truck-07-gw",
    )
    assert d.limit.source.startswith("GB 31605")


def test_readings_in_one_batch_are_judged_in_event_time_order(engine: RuleEngine) -> None:
    out: list[DeviationChange] = []
    shuffled = [
        Reading("comp-1", "temp", v, "degC", T0 + s * 1000)
        for s, v in [(40, 5.0), (0, 8.0), (30, 8.5), (10, 8.0)]
    ]

    engine.judge("truck-07", "gw", shuffled, out)

    assert [c.kind for c in out] == ["opened", "closed"]
    assert out[0].deviation.start_ms == T0
    assert out[1].deviation.end_ms == T0 + 40_000


def test_a_reading_older_than_the_last_judged_one_is_counted_late_not_judged(
    engine: RuleEngine,
) -> None:
    changes = truck(engine, [(0, 4.0), (20, 4.0), (10, 9.0)])

    assert changes == []
    assert engine.counters.late == 1
    assert engine.counters.judged == 2


def test_readings_of_channels_not_in_the_plan_are_counted_as_unplanned(
    engine: RuleEngine,
) -> None:
    out: list[DeviationChange] = []
    engine.judge("truck-07", "gw", [Reading("comp-9", "temp", 30.0, "degC", T0)], out)

    assert out == []
    assert engine.counters.unplanned == 1


def test_a_reading_in_another_unit_than_the_plans_is_returned_not_judged(
    engine: RuleEngine,
) -> None:
    out: list[DeviationChange] = []
    fahrenheit = Reading("comp-1", "temp", 45.0, "%", T0)  # wrong unit for a temperature channel

    mismatches = engine.judge("truck-07", "gw", [fahrenheit], out)

    assert out == []
    assert [(m.reading, m.expected) for m in mismatches] == [(fahrenheit, "degC")]


def test_a_deviation_still_open_is_listed_as_open(engine: RuleEngine) -> None:
    truck(engine, [(0, 9.0), (30, 9.5)])

    (still_open,) = engine.open_deviations()
    assert still_open.status == "open"
    assert still_open.peak == 9.5
